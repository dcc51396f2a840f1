"""What a load test sends: the pipeline's input signature read from the server, requests synthesised
from it or read from a JSONL file (checked line by line against it), and their wire forms.

Shared by the CLI (to reject bad input before any load is sent) and the locustfile (to build the
requests it cycles through), so it must not import locust.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from toolkit.client import Protocol, Signature, TensorSignature, fetch_signature
from toolkit.core.errors import CompoundError
from toolkit.spec.dtypes import BY_V2

VARIABLE_DIM_SIZE = 8  # what a synthesised -1 dimension gets
SYNTHETIC_REQUESTS = 64
_WORDS = (
    "the market rallied after strong earnings while the team lost a close match and critics praised "
    "a new album about software robots chips elections goals paintings theatre data cloud rain"
).split()


@dataclass(frozen=True)
class Tensor:
    """One input of one request, as sent: full shape (batch included) and the flat data."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: tuple[Any, ...]


@dataclass(frozen=True)
class Request:
    tensors: tuple[Tensor, ...]
    source: str = "synthesised"  # or 'file:line'

    def to_v2_json(self) -> dict[str, Any]:
        """The KServe v2 REST body."""
        return {
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": list(t.data)}
                for t in self.tensors
            ]
        }

    def to_numpy(self) -> list[tuple[str, Any, str]]:
        """(name, array, datatype) per tensor, strings as utf-8 bytes, for tritonclient.grpc."""
        import numpy as np

        result = []
        for t in self.tensors:
            if t.datatype == "BYTES":
                flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in t.data]
                array = np.array(flat, dtype=object).reshape(t.shape)
            else:
                array = np.array(t.data, dtype=BY_V2[t.datatype].numpy).reshape(t.shape)
            result.append((t.name, array, t.datatype))
        return result

    def grpc_inputs(self) -> list[Any]:
        """The request as tritonclient.grpc InferInputs, its data set."""
        import tritonclient.grpc as grpcclient

        inputs = []
        for name, array, datatype in self.to_numpy():
            infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        return inputs


# --- synthesis ------------------------------------------------------------------------------------


def _random_value(datatype: str, rng: random.Random) -> Any:
    if datatype == "BYTES":
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
    if datatype == "BOOL":
        return rng.random() < 0.5
    if datatype.startswith(("INT", "UINT")):
        return rng.randint(0, 9)
    return round(rng.uniform(-1.0, 1.0), 4)


def synthesise(signature: Signature, count: int = SYNTHETIC_REQUESTS, seed: int = 0) -> list[Request]:
    """Distinct batch-1 requests of the right dtypes and dims (a -1 dim gets VARIABLE_DIM_SIZE)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        tensors = []
        for spec in signature.inputs:
            dims = tuple(VARIABLE_DIM_SIZE if d == -1 else d for d in spec.dims)
            shape = ((1,) if signature.batched else ()) + dims
            size = 1
            for d in shape:
                size *= d
            tensors.append(
                Tensor(spec.name, spec.datatype, shape, tuple(_random_value(spec.datatype, rng) for _ in range(size)))
            )
        requests.append(Request(tuple(tensors)))
    return requests


# --- JSONL ----------------------------------------------------------------------------------------


@dataclass
class _LineError(Exception):
    message: str
    tensor: Optional[str] = None


def _nested_shape(value: Any) -> tuple[tuple[int, ...], list[Any]]:
    """Shape and flat items of a nested list; ragged lists are an error."""
    if not isinstance(value, list):
        return (), [value]
    if not value:
        return (0,), []
    parts = [_nested_shape(v) for v in value]
    inner = parts[0][0]
    if any(p[0] != inner for p in parts):
        raise _LineError("ragged nested list (rows of different lengths)")
    return (len(value),) + inner, [item for p in parts for item in p[1]]


def _check_items(spec: TensorSignature, items: list[Any]) -> None:
    for item in items:
        if spec.datatype == "BYTES":
            ok = isinstance(item, str)
            wanted = "strings"
        elif spec.datatype == "BOOL":
            ok = isinstance(item, bool)
            wanted = "true/false"
        elif spec.datatype.startswith(("INT", "UINT")):
            ok = isinstance(item, int) and not isinstance(item, bool)
            ok = ok and (item >= 0 or not spec.datatype.startswith("UINT"))
            wanted = "integers" if not spec.datatype.startswith("UINT") else "non-negative integers"
        else:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
            wanted = "numbers"
        if not ok:
            raise _LineError(f"expected {spec.datatype} ({wanted}), got {json.dumps(item)}", spec.name)


def _fit_shape(spec: TensorSignature, shape: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    """The full request shape for data of ``shape``: dims alone (batch 1 added), or batch 1 + dims."""

    def matches(candidate: tuple[int, ...]) -> bool:
        return len(candidate) == len(spec.dims) and all(d == -1 or d == c for d, c in zip(spec.dims, candidate))

    if shape == () and spec.dims == (1,):
        shape = (1,)
    if matches(shape):
        return ((1,) if batched else ()) + shape
    if batched and len(shape) == len(spec.dims) + 1 and shape[0] == 1 and matches(shape[1:]):
        return shape
    expected = f"{list(spec.dims)}" + (
        f" (or [1, {', '.join(map(str, spec.dims))}] with the batch dimension)" if batched else ""
    )
    raise _LineError(f"shape {list(shape)} does not match the pipeline's dims {expected}", spec.name)


def _parse_line(obj: Any, signature: Signature) -> tuple[Tensor, ...]:
    specs = {s.name: s for s in signature.inputs}
    if not isinstance(obj, dict):
        raise _LineError(
            'each line must be a JSON object: {"tensor": value, ...} or a KServe v2 body {"inputs": [...]}'
        )
    if "inputs" in obj and isinstance(obj["inputs"], list) and "inputs" not in specs:
        values: dict[str, Any] = {}
        for i, entry in enumerate(obj["inputs"]):
            if not isinstance(entry, dict) or "name" not in entry or "data" not in entry:
                raise _LineError(f"inputs[{i}] needs 'name' and 'data'")
            name = str(entry["name"])
            spec = specs.get(name)
            if spec is not None and "datatype" in entry and entry["datatype"] != spec.datatype:
                raise _LineError(f"datatype {entry['datatype']} does not match the pipeline's {spec.datatype}", name)
            data = entry["data"]
            if "shape" in entry:
                shape = tuple(int(d) for d in entry["shape"])
                _, flat = _nested_shape(data)
                size = 1
                for d in shape:
                    size *= d
                if len(flat) != size:
                    raise _LineError(f"{len(flat)} data items do not fill shape {list(shape)}", name)
                data = _reshape(flat, shape)
            values[name] = data
    else:
        values = obj
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise _LineError(
            f"unknown tensor(s) {', '.join(repr(u) for u in unknown)}; the pipeline's inputs are "
            + ", ".join(f"{s.name} {s.describe()}" for s in signature.inputs),
            unknown[0],
        )
    missing = [s.name for s in signature.inputs if s.name not in values]
    if missing:
        raise _LineError("missing input(s) " + ", ".join(repr(m) for m in missing), missing[0])
    tensors = []
    for spec in signature.inputs:
        try:
            shape, items = _nested_shape(values[spec.name])
        except _LineError as exc:
            raise _LineError(exc.message, spec.name) from None
        full = _fit_shape(spec, shape, signature.batched)
        _check_items(spec, items)
        tensors.append(Tensor(spec.name, spec.datatype, full, tuple(items)))
    return tuple(tensors)


def _reshape(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def load_jsonl(path: str | Path, signature: Signature) -> list[Request]:
    """Every non-blank line as a request, checked against the signature; the first bad line is an
    error naming the file, line and tensor."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CompoundError(f"data file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompoundError(f"cannot read data file {source}: {exc}") from None
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        takes = f"pipeline '{signature.name}' takes " + ", ".join(f"{s.name} {s.describe()}" for s in signature.inputs)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompoundError(f"{where}: not valid JSON ({exc.msg})", hint=takes) from None
        try:
            requests.append(Request(_parse_line(obj, signature), source=where))
        except _LineError as exc:
            tensor = f" tensor '{exc.tensor}':" if exc.tensor else ""
            raise CompoundError(f"{where}:{tensor} {exc.message}", hint=takes) from None
    if not requests:
        raise CompoundError(f"data file {source} has no requests (every line is blank)")
    return requests


def prepare_requests(
    url: str, protocol: Protocol, pipeline: str, data: Optional[str | Path]
) -> tuple[Signature, list[Request]]:
    """The signature from the server and the requests to cycle: from the data file, or synthesised."""
    signature = fetch_signature(pipeline, url, protocol)
    requests = load_jsonl(data, signature) if data else synthesise(signature)
    return signature, requests
