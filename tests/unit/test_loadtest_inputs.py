"""Load-test inputs: durations, signatures from configs, synthesis, and JSONL checked line by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.client import signature_from_config
from toolkit.core.errors import CompoundError
from toolkit.core.units import parse_duration
from toolkit.loadtest.inputs import (
    VARIABLE_DIM_SIZE,
    load_jsonl,
    synthesise,
)

CONFIG = {
    "name": "mixed",
    "max_batch_size": 8,
    "input": [
        {"name": "text", "data_type": "TYPE_STRING", "dims": ["1"]},  # gRPC renders int64 as strings
        {"name": "ids", "data_type": "TYPE_INT64", "dims": [4]},
        {"name": "vec", "data_type": "TYPE_FP32", "dims": [-1]},
        {"name": "flag", "data_type": "TYPE_BOOL", "dims": [1]},
    ],
    "ensemble_scheduling": {"step": [{"model_name": "a"}, {"model_name": "b"}]},
}
SIG = signature_from_config(CONFIG)
GOOD = {"text": "hello", "ids": [1, 2, 3, 4], "vec": [0.5, 1], "flag": [True]}


@pytest.mark.parametrize(
    "text,seconds",
    [("45", 45), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("2m10s", 130), ("1.5m", 90), ("500ms", 0.5)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "10x", "-5s", "m", "5m3", "1.5x"])
def test_invalid_durations(text: str) -> None:
    with pytest.raises(CompoundError, match="--run-time"):
        parse_duration(text, "--run-time")


def test_signature_from_config() -> None:
    assert [(s.name, s.datatype, s.dims) for s in SIG.inputs] == [
        ("text", "BYTES", (1,)),
        ("ids", "INT64", (4,)),
        ("vec", "FP32", (-1,)),
        ("flag", "BOOL", (1,)),
    ]
    assert SIG.batched and SIG.composing == ("a", "b")


def test_synthesised_requests_have_the_right_types_and_shapes() -> None:
    requests = synthesise(SIG, count=5, seed=3)
    assert len(requests) == 5 and requests == synthesise(SIG, count=5, seed=3)
    text, ids, vec, flag = requests[0].tensors
    assert text.shape == (1, 1) and isinstance(text.data[0], str) and text.data[0]
    assert ids.shape == (1, 4) and all(isinstance(v, int) for v in ids.data)
    assert vec.shape == (1, VARIABLE_DIM_SIZE) and all(isinstance(v, float) for v in vec.data)
    assert flag.shape == (1, 1) and isinstance(flag.data[0], bool)
    arrays = {name: (array, dtype) for name, array, dtype in requests[0].to_numpy()}
    assert arrays["text"][0].dtype == object and isinstance(arrays["text"][0][0, 0], bytes)
    assert arrays["ids"][0].dtype.name == "int64" and arrays["vec"][0].dtype.name == "float32"
    body = requests[0].to_v2_json()
    assert body["inputs"][1] == {"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": list(ids.data)}


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_accepted_forms(tmp_path: Path) -> None:
    v2 = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]},
            {"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "vec", "shape": [1, 3], "data": [1.0, 2.0, 3.0]},
            {"name": "flag", "data": [[False]]},
        ]
    }
    batched = {"text": [["x"]], "ids": [[1, 2, 3, 4]], "vec": [[0.1]], "flag": [[True]]}
    requests = load_jsonl(write(tmp_path, GOOD, "", batched, v2), SIG)
    assert len(requests) == 3
    assert [t.shape for t in requests[0].tensors] == [(1, 1), (1, 4), (1, 2), (1, 1)]
    assert [t.shape for t in requests[1].tensors] == [(1, 1), (1, 4), (1, 1), (1, 1)]
    assert [t.shape for t in requests[2].tensors] == [(1, 1), (1, 4), (1, 3), (1, 1)]
    assert requests[2].source.endswith("data.jsonl:4")


@pytest.mark.parametrize(
    "bad,message",
    [
        ({**GOOD, "txt": "x"}, r":2: tensor 'txt': unknown tensor\(s\) 'txt'"),
        ({k: v for k, v in GOOD.items() if k != "ids"}, r":2: tensor 'ids': missing input\(s\) 'ids'"),
        ({**GOOD, "text": 5}, r":2: tensor 'text': expected BYTES \(strings\), got 5"),
        ({**GOOD, "ids": [1, 2, 3, 4.5]}, r":2: tensor 'ids': expected INT64 \(integers\), got 4.5"),
        ({**GOOD, "ids": [1, 2, 3]}, r":2: tensor 'ids': shape \[3\] does not match the pipeline's dims \[4\]"),
        ({**GOOD, "ids": [[1, 2], [3]]}, r":2: tensor 'ids': ragged"),
        ({**GOOD, "flag": [1]}, r":2: tensor 'flag': expected BOOL"),
        ({"inputs": [{"name": "text", "datatype": "FP32", "data": [1.0]}]}, r":2: tensor 'text': datatype FP32"),
        ("{not json", r":2: not valid JSON"),
        ("[1, 2]", r":2: each line must be a JSON object"),
    ],
)
def test_bad_lines_name_the_line_and_tensor(tmp_path: Path, bad: object, message: str) -> None:
    with pytest.raises(CompoundError, match=message) as caught:
        load_jsonl(write(tmp_path, GOOD, bad), SIG)
    assert "data.jsonl" in str(caught.value)
    assert caught.value.hint is not None and "text BYTES[1]" in caught.value.hint


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(CompoundError, match="data file not found"):
        load_jsonl(tmp_path / "nope.jsonl", SIG)
    with pytest.raises(CompoundError, match="no requests"):
        load_jsonl(write(tmp_path, "", "  "), SIG)
