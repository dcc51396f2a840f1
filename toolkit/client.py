"""Inference over Triton's HTTP (KServe v2 REST) and gRPC protocols, typed from the server's config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from toolkit.errors import CompoundError

Protocol = Literal["http", "grpc"]

# Triton config type -> (v2 datatype, numpy dtype)
_CONFIG_TYPES: dict[str, tuple[str, Any]] = {
    "TYPE_BOOL": ("BOOL", np.bool_),
    "TYPE_UINT8": ("UINT8", np.uint8),
    "TYPE_UINT16": ("UINT16", np.uint16),
    "TYPE_UINT32": ("UINT32", np.uint32),
    "TYPE_UINT64": ("UINT64", np.uint64),
    "TYPE_INT8": ("INT8", np.int8),
    "TYPE_INT16": ("INT16", np.int16),
    "TYPE_INT32": ("INT32", np.int32),
    "TYPE_INT64": ("INT64", np.int64),
    "TYPE_FP16": ("FP16", np.float16),
    "TYPE_FP32": ("FP32", np.float32),
    "TYPE_FP64": ("FP64", np.float64),
    "TYPE_STRING": ("BYTES", np.object_),
}


@dataclass(frozen=True)
class TensorSignature:
    name: str
    datatype: str  # KServe v2 name, e.g. BYTES
    dims: list[int]  # without the batch dimension

    @property
    def numpy_dtype(self) -> Any:
        return next(np_type for v2, np_type in _CONFIG_TYPES.values() if v2 == self.datatype)


@dataclass(frozen=True)
class Signature:
    """A deployed model's inputs and outputs as the server reports them."""

    name: str
    max_batch_size: int
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]


def _http_client(url: str, concurrency: int = 1) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url, concurrency=concurrency, connection_timeout=10.0, network_timeout=120.0)


def _grpc_client(url: str) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def fetch_signature(model: str, url: str, protocol: Protocol = "http") -> Signature:
    """Read the model's config from the server and name the problem if it is not there."""
    from tritonclient.utils import InferenceServerException

    client = _http_client(url) if protocol == "http" else _grpc_client(url)
    try:
        try:
            live = client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types
            raise CompoundError(f"cannot reach Triton at {url} over {protocol}: {_reason(exc)}", hint="is it running? try `compound status`") from None
        if not live:
            raise CompoundError(f"Triton at {url} is not live", hint="try `compound status` and `compound logs`")
        try:
            config = client.get_model_config(model) if protocol == "http" else client.get_model_config(model, as_json=True)["config"]
        except InferenceServerException:
            index = client.get_model_repository_index()
            entries = index if protocol == "http" else index.models
            names = sorted((m["name"] if isinstance(m, dict) else m.name) for m in entries)
            raise CompoundError(f"no model or pipeline '{model}' on {url}", hint=f"models: {', '.join(names) or 'none'}") from None
    finally:
        client.close()
    return signature_from_config(config)


def _reason(exc: Exception) -> str:
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return str(message).splitlines()[0] if message else type(exc).__name__


def signature_from_config(config: dict[str, Any]) -> Signature:
    def tensors(entries: list[dict[str, Any]]) -> list[TensorSignature]:
        return [TensorSignature(t["name"], _CONFIG_TYPES[t["data_type"]][0], [int(d) for d in t["dims"]]) for t in entries]

    return Signature(config["name"], int(config.get("max_batch_size", 0)), tensors(config.get("input", [])), tensors(config.get("output", [])))


def to_array(value: Any, tensor: TensorSignature, batched: bool, origin: str = "input") -> np.ndarray:
    """A JSON-ish value as the tensor's numpy array, adding the batch axis when it is missing."""
    dtype = tensor.numpy_dtype
    try:
        if dtype is np.object_:
            array = np.array(_encode_strings(value), dtype=np.object_)
        else:
            array = np.array(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise CompoundError(f"{origin}: tensor '{tensor.name}' expects {tensor.datatype}: {exc}") from None
    rank = len(tensor.dims) + (1 if batched else 0)
    while array.ndim < rank:
        array = array[np.newaxis]
    if array.ndim != rank or any(d != -1 and d != s for d, s in zip(tensor.dims, array.shape[-len(tensor.dims):])):
        expected = (["batch"] if batched else []) + [str(d) for d in tensor.dims]
        raise CompoundError(f"{origin}: tensor '{tensor.name}' has shape {list(array.shape)}, expected [{', '.join(expected)}]")
    return array


def _encode_strings(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_encode_strings(v) for v in value]
    if isinstance(value, (bytes, np.ndarray)):
        return value
    return str(value).encode("utf-8")


def parse_cli_inputs(pairs: list[str], data_file: Optional[Path], signature: Signature) -> dict[str, np.ndarray]:
    """`--input name=value` pairs (JSON values allowed) and/or a JSON file of {name: value}."""
    raw: dict[str, Any] = {}
    if data_file is not None:
        try:
            loaded = json.loads(Path(data_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CompoundError(f"{data_file}: cannot read JSON inputs: {exc}") from None
        if not isinstance(loaded, dict):
            raise CompoundError(f"{data_file}: expected a JSON object of {{input name: value}}")
        raw.update(loaded)
    by_name = {t.name: t for t in signature.inputs}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise CompoundError(f"--input {pair!r}: expected NAME=VALUE")
        tensor = by_name.get(name)
        if tensor is None:
            raise CompoundError(f"--input {name}: '{signature.name}' has no input '{name}'", hint=f"inputs: {', '.join(by_name)}")
        raw[name] = text if tensor.datatype == "BYTES" else _parse_number_text(text, name)
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        raise CompoundError(f"'{signature.name}' has no input(s) {unknown}", hint=f"inputs: {', '.join(by_name)}")
    missing = [n for n in by_name if n not in raw]
    if missing:
        raise CompoundError(f"missing input(s) {missing} for '{signature.name}'", hint="give each with --input NAME=VALUE or --data FILE.json")
    batched = signature.max_batch_size > 0
    arrays = {name: to_array(raw[name], by_name[name], batched, origin=str(data_file or "--input")) for name in by_name}
    if batched:
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) > 1:
            raise CompoundError(f"inputs have different batch sizes: { {n: a.shape[0] for n, a in arrays.items()} }")
    return arrays


def _parse_number_text(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        try:
            return [json.loads(p) for p in text.split(",")]
        except ValueError:
            raise CompoundError(f"--input {name}={text!r}: not a number or JSON list") from None


def infer(model: str, url: str, inputs: dict[str, np.ndarray], protocol: Protocol = "http", outputs: Optional[list[str]] = None, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """One inference; server-side errors become CompoundError with Triton's message."""
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    if protocol == "http":
        import tritonclient.http as module

        client = _http_client(url)
    elif protocol == "grpc":
        import tritonclient.grpc as module  # type: ignore[no-redef]

        client = _grpc_client(url)
    else:
        raise CompoundError(f"unknown protocol {protocol!r}", hint="use http or grpc")
    try:
        request = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype) if array.dtype != np.object_ else "BYTES")
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
        kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
        result = client.infer(model, request, outputs=requested, **kwargs)
        response = result.get_response()
        names = [o["name"] for o in response["outputs"]] if isinstance(response, dict) else [o.name for o in response.outputs]
        return {name: result.as_numpy(name) for name in names}
    except InferenceServerException as exc:
        raise CompoundError(f"inference on '{model}' failed: {exc.message()}") from None
    except ConnectionError as exc:
        raise CompoundError(f"cannot reach Triton at {url}: {exc}") from None
    finally:
        client.close()


def to_jsonable(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Outputs as JSON: bytes decoded as UTF-8, numbers as lists."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return [convert(v) for v in value] if value.ndim else convert(value.item())
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, np.generic):
            return value.item()
        return value

    return {name: convert(array) for name, array in sorted(outputs.items())}
