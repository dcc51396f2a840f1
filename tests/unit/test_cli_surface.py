"""The CLI as the README promises it: every command it names answers --help, and the input parser
of `compound infer` turns what users type into the right arrays, or says what is wrong."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli.main import cli
from toolkit.client import Signature, TensorSignature, parse_cli_inputs
from toolkit.core.errors import CompoundError

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    names = set(re.findall(r"`compound ([a-z]+)", README.read_text()))
    names |= set(re.findall(r"\.venv/bin/compound ([a-z]+)", README.read_text()))
    return sorted(names)


def test_the_readme_names_commands() -> None:
    assert {"validate", "generate", "deploy", "status", "logs", "stop", "infer", "loadtest", "bench"} <= set(
        readme_commands()
    )


@pytest.mark.parametrize("command", readme_commands())
def test_every_command_the_readme_names_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, f"compound {command} --help: {result.output}"
    assert "Usage:" in result.output and "Traceback" not in result.output


def test_version_does_not_import_the_bench_or_locust() -> None:
    """`compound --version` stays light: the commands that pull heavy stacks load only when used."""
    code = "import sys; from toolkit.cli.main import cli\ntry:\n    cli(['--version'])\nexcept SystemExit:\n    pass\n"
    code += (
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('toolkit.bench', 'locust', 'matplotlib')))))"
    )
    done = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


SIGNATURE = Signature(
    "p",
    8,
    (TensorSignature("text", "BYTES", (1,)), TensorSignature("vec", "FP32", (3,)), TensorSignature("n", "INT64", (1,))),
)


def test_pairs_become_batched_arrays_of_the_declared_types() -> None:
    arrays = parse_cli_inputs(["text=héllo", "vec=[1, 2.5, 3]", "n=7"], None, SIGNATURE)
    assert arrays["text"].dtype == object and arrays["text"].tolist() == [["héllo".encode()]]
    assert arrays["vec"].dtype == np.float32 and arrays["vec"].shape == (1, 3)
    assert arrays["n"].dtype == np.int64 and arrays["n"].tolist() == [[7]]
    assert parse_cli_inputs(["text=a", "vec=1,2,3", "n=1"], None, SIGNATURE)["vec"].tolist() == [[1.0, 2.0, 3.0]]


def test_a_data_file_may_carry_a_batch(tmp_path: Path) -> None:
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"text": [["a"], ["b"]], "vec": [[1, 2, 3], [4, 5, 6]], "n": [[1], [2]]}))
    arrays = parse_cli_inputs([], data, SIGNATURE)
    assert {name: a.shape[0] for name, a in arrays.items()} == {"text": 2, "vec": 2, "n": 2}


@pytest.mark.parametrize(
    "pairs,message",
    [
        (["text=a", "vec=[1,2,3]"], r"missing input\(s\) \['n'\]"),
        (["text=a", "vec=[1,2,3]", "n=1", "extra=1"], "has no input 'extra'"),
        (["text"], "expected NAME=VALUE"),
        (["text=a", "vec=[1,2]", "n=1"], r"tensor 'vec' has shape \[1, 2\], expected \[batch, 3\]"),
        (["text=a", "vec=[1,2,3]", "n=x"], "not a number or JSON list"),
    ],
)
def test_bad_inputs_name_the_tensor(pairs: list[str], message: str) -> None:
    with pytest.raises(CompoundError, match=message):
        parse_cli_inputs(pairs, None, SIGNATURE)


def test_bad_data_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CompoundError, match="broken.json: cannot read JSON inputs"):
        parse_cli_inputs([], broken, SIGNATURE)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(CompoundError, match="expected a JSON object"):
        parse_cli_inputs([], listed, SIGNATURE)
    ragged = tmp_path / "ragged.json"
    ragged.write_text(json.dumps({"text": [["a"], ["b"]], "vec": [[1, 2, 3]], "n": [[1], [2]]}))
    with pytest.raises(CompoundError, match="different batch sizes"):
        parse_cli_inputs([], ragged, SIGNATURE)
