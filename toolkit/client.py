"""Inference over Triton's HTTP (KServe v2 REST) and gRPC protocols, typed from the server's config."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from toolkit.core.errors import CompoundError
from toolkit.spec.dtypes import BY_CONFIG, BY_V2

Protocol = Literal["http", "grpc"]
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}  # what `compound deploy` binds by default
API_KEY_HEADER = "compound-key"  # lower case: gRPC metadata keys must be


@dataclass(frozen=True)
class TensorSignature:
    name: str
    datatype: str  # KServe v2 name, e.g. BYTES
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable

    @property
    def numpy_dtype(self) -> Any:
        return np.dtype(BY_V2[self.datatype].numpy).type

    def describe(self) -> str:
        return f"{self.datatype}{list(self.dims)}"


@dataclass(frozen=True)
class Signature:
    """A deployed model's inputs and outputs as the server reports them."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...] = ()
    composing: tuple[str, ...] = ()  # an ensemble's models in step order
    decoupled: bool = False  # it streams (many responses per request): only a streaming call reads them all

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def api_key_headers(api_key: str, protocol: str = "http") -> dict[str, str]:
    """The header that opens the restricted APIs: Triton expects gRPC metadata under a prefixed name."""
    if not api_key:
        return {}
    return {API_KEY_HEADER if protocol == "http" else f"triton-grpc-protocol-{API_KEY_HEADER}": api_key}


def strip_scheme(url: str) -> str:
    """host:port from 'http://host:port/', 'grpc://host:port' or 'host:port'."""
    return url.split("://", 1)[-1].rstrip("/")


def grpc_client(url: str) -> Any:
    """A tritonclient.grpc client that only closes when told to.

    The stock client closes its channel again in ``__del__``; under gevent (in locust) that runs
    during interpreter shutdown and hangs the process, so callers close explicitly instead.
    """
    import tritonclient.grpc as grpcclient

    class _ExplicitlyClosed(grpcclient.InferenceServerClient):
        def __del__(self) -> None:
            pass

    return _ExplicitlyClosed(url=strip_scheme(url))


def _http_client(url: str, concurrency: int = 1) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        strip_scheme(url), concurrency=concurrency, connection_timeout=10.0, network_timeout=120.0
    )


def http_json(
    url: str, payload: Optional[dict[str, Any]] = None, timeout: float = 5.0, headers: Optional[dict[str, str]] = None
) -> tuple[int, Any]:
    """(status, parsed JSON body) of a GET, or a POST when a payload is given; HTTP errors are statuses."""
    data = json.dumps(payload).encode() if payload is not None else None
    # url is always http://<host:port>/v2/...: built by our callers from the user's server address
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")  # noqa: S310
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's server URL
            body = response.read().decode("utf-8")
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", errors="replace")
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": body}


@dataclass(frozen=True)
class ModelState:
    """One model as the server sees it: the repository's state and whether it serves right now."""

    name: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING ...
    reason: str
    ready: bool  # /v2/models/<name>/ready: false when its backend stub died, even if state says READY

    @property
    def healthy(self) -> bool:
        return self.state == "READY" and self.ready


def repository_index(url: str, headers: Optional[dict[str, str]] = None, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Triton's model repository index (a restricted API: pass the deployment's key)."""
    status, index = http_json(f"http://{strip_scheme(url)}/v2/repository/index", {}, timeout=timeout, headers=headers)
    if status in (401, 403):
        raise CompoundError(
            "the server refused the repository API: the deployment's key is missing or wrong",
            hint="use the key in the deployment's state (`compound status` reads it)",
        )
    if status != 200 or not isinstance(index, list):
        raise CompoundError(f"the repository index of {url} answered HTTP {status}: {index}")
    return index


def model_states(url: str, headers: Optional[dict[str, str]] = None, timeout: float = 5.0) -> list[ModelState]:
    """Every model in the repository with its state, and whether it really serves (a model whose
    Python stub was killed stays READY in the index but stops being ready)."""
    states = []
    for entry in sorted(repository_index(url, headers, timeout), key=lambda m: str(m.get("name", ""))):
        name = str(entry.get("name", ""))
        ready = False
        if entry.get("state") == "READY":
            status, _ = http_json(f"http://{strip_scheme(url)}/v2/models/{name}/ready", timeout=timeout)
            ready = status == 200
        states.append(ModelState(name, str(entry.get("state", "?")), str(entry.get("reason", "")), ready))
    return states


def fetch_signature(model: str, url: str, protocol: Protocol = "http", timeout: float = 5.0) -> Signature:
    """The model's (or pipeline's) signature from its config on the server; clear errors for a dead
    server, a name it does not serve, or a model that is not ready."""
    target = strip_scheme(url)
    if protocol == "grpc":
        config, ready, available = _grpc_probe(target, model, timeout)
    elif protocol == "http":
        config, ready, available = _http_probe(target, model, timeout)
    else:
        raise CompoundError(f"unknown protocol {protocol!r}", hint="use http or grpc")
    if config is None:
        raise CompoundError(
            f"unknown pipeline '{model}': the server at {target} does not serve it",
            hint=f"models on the server: {', '.join(available) or 'none'}",
        )
    if not ready:
        raise CompoundError(
            f"'{model}' is loaded on {target} but not ready", hint="see `compound status` and `compound logs`"
        )
    return signature_from_config(config)


def _unreachable(target: str, protocol: str, reason: str) -> CompoundError:
    return CompoundError(
        f"cannot reach the Triton server at {target} over {protocol}: {reason}",
        hint="is it running? `compound status` tells; check --url and --protocol",
    )


def _http_probe(target: str, model: str, timeout: float) -> tuple[Optional[dict[str, Any]], bool, list[str]]:
    base = f"http://{target}"
    try:
        status, _ = http_json(f"{base}/v2/health/live", timeout=timeout)
        if status != 200:
            raise CompoundError(f"the server at {target} is not live (HTTP {status})")
        status, config = http_json(f"{base}/v2/models/{model}/config", timeout=timeout)
        if status != 200:
            # the statistics API lists every loaded model and stays open (the repository index needs the key)
            _, stats = http_json(f"{base}/v2/models/stats", timeout=timeout)
            names = {m.get("name", "") for m in (stats or {}).get("model_stats", []) if isinstance(m, dict)}
            return None, False, sorted(names - {""})
        status, _ = http_json(f"{base}/v2/models/{model}/ready", timeout=timeout)
        return config, status == 200, []
    except CompoundError:
        raise
    except (OSError, ValueError) as exc:
        raise _unreachable(target, "http", str(getattr(exc, "reason", exc))) from None


def _grpc_probe(target: str, model: str, timeout: float) -> tuple[Optional[dict[str, Any]], bool, list[str]]:
    from tritonclient.utils import InferenceServerException

    client = grpc_client(target)
    try:
        try:
            client.is_server_live(client_timeout=timeout)
        except InferenceServerException as exc:
            raise _unreachable(target, "grpc", str(exc.message()).splitlines()[0]) from None
        try:
            config = client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
        except InferenceServerException:
            stats = client.get_inference_statistics(as_json=True, client_timeout=timeout)
            return None, False, sorted({m.get("name", "") for m in stats.get("model_stats", [])} - {""})
        return config, client.is_model_ready(model, client_timeout=timeout), []
    finally:
        client.close()


def signature_from_config(config: dict[str, Any]) -> Signature:
    """A model config as JSON (HTTP gives ints, gRPC int64-as-strings) as a Signature."""
    name = str(config.get("name", ""))

    def tensors(entries: list[dict[str, Any]]) -> tuple[TensorSignature, ...]:
        found = []
        for raw in entries or []:
            data_type = raw.get("data_type", "TYPE_FP32")
            if data_type not in BY_CONFIG:
                raise CompoundError(f"'{name}': tensor '{raw.get('name')}' has unsupported type {data_type}")
            found.append(
                TensorSignature(str(raw["name"]), BY_CONFIG[data_type].v2, tuple(int(d) for d in raw.get("dims", [])))
            )
        return tuple(found)

    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    composing: list[str] = []
    for step in steps:
        if step.get("model_name") and step["model_name"] not in composing:
            composing.append(str(step["model_name"]))
    return Signature(
        name,
        int(config.get("max_batch_size", 0) or 0),
        tensors(config.get("input", [])),
        tensors(config.get("output", [])),
        tuple(composing),
        bool((config.get("model_transaction_policy") or {}).get("decoupled")),
    )


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
    if array.ndim != rank or any(d != -1 and d != s for d, s in zip(tensor.dims, array.shape[-len(tensor.dims) :])):
        expected = (["batch"] if batched else []) + [str(d) for d in tensor.dims]
        raise CompoundError(
            f"{origin}: tensor '{tensor.name}' has shape {list(array.shape)}, expected [{', '.join(expected)}]"
        )
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
            raise CompoundError(
                f"--input {name}: '{signature.name}' has no input '{name}'", hint=f"inputs: {', '.join(by_name)}"
            )
        raw[name] = text if tensor.datatype == "BYTES" else _parse_number_text(text, name)
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        raise CompoundError(f"'{signature.name}' has no input(s) {unknown}", hint=f"inputs: {', '.join(by_name)}")
    missing = [n for n in by_name if n not in raw]
    if missing:
        raise CompoundError(
            f"missing input(s) {missing} for '{signature.name}'",
            hint="give each with --input NAME=VALUE or --data FILE.json",
        )
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


def infer(
    model: str,
    url: str,
    inputs: dict[str, np.ndarray],
    protocol: Protocol = "http",
    outputs: Optional[list[str]] = None,
    timeout_s: float = 60.0,
    headers: Optional[dict[str, str]] = None,
) -> dict[str, np.ndarray]:
    """One inference; server-side errors become CompoundError with Triton's message. `headers` go
    with the request (HTTP headers or gRPC metadata: a W3C `traceparent` names its trace)."""
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    if protocol == "http":
        import tritonclient.http as module

        client = _http_client(url)
    elif protocol == "grpc":
        import tritonclient.grpc as module

        client = grpc_client(url)
    else:
        raise CompoundError(f"unknown protocol {protocol!r}", hint="use http or grpc")
    try:
        request = []
        for name, array in inputs.items():
            tensor = module.InferInput(
                name, list(array.shape), np_to_triton_dtype(array.dtype) if array.dtype != np.object_ else "BYTES"
            )
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
        kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
        result = client.infer(model, request, outputs=requested, headers=headers, **kwargs)
        response = result.get_response()
        names = (
            [o["name"] for o in response["outputs"]]
            if isinstance(response, dict)
            else [o.name for o in response.outputs]
        )
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


# --- model control (restricted: these take the deployment's key) ---------------------------------


def model_config(url: str, model: str, timeout: float = 10.0) -> dict[str, Any]:
    """A loaded model's config as JSON (HTTP), the form a load with a config override takes."""
    status, config = http_json(f"http://{strip_scheme(url)}/v2/models/{model}/config", timeout=timeout)
    if status != 200 or not isinstance(config, dict):
        raise CompoundError(f"no config for model '{model}' on {url} (HTTP {status})")
    return config


def instance_count(config: dict[str, Any]) -> tuple[int, bool]:
    """(instances, whether on a GPU) of a model config as JSON, its instance groups summed (compound
    writes one group; on a GPU the count is per device, so it is a lower bound)."""
    groups = config.get("instance_group") or [{}]
    return sum(int(g.get("count", 1) or 1) for g in groups), any(g.get("kind") == "KIND_GPU" for g in groups)


def load_models(
    grpc_url: str, models: dict[str, Optional[dict[str, Any]]], api_key: str, timeout: float = 300.0
) -> dict[str, Optional[str]]:
    """Load (or reload, or rescale with a config override) several models at once, over gRPC: Triton
    loads models requested concurrently in parallel, where its HTTP endpoint and the Python backend's
    own load_model() go one by one. model -> None when it loaded, else the server's error."""
    import concurrent.futures

    from tritonclient.utils import InferenceServerException

    def load(name: str, config: Optional[dict[str, Any]]) -> Optional[str]:
        client = grpc_client(grpc_url)
        try:
            client.load_model(
                name,
                headers=api_key_headers(api_key, "grpc"),
                config=json.dumps(config) if config is not None else None,
                client_timeout=timeout,
            )
            return None
        except InferenceServerException as exc:
            return str(exc.message() or exc)
        finally:
            client.close()

    if not models:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(models)) as pool:
        futures = {name: pool.submit(load, name, config) for name, config in models.items()}
        return {name: future.result() for name, future in futures.items()}


def unload_model(grpc_url: str, model: str, api_key: str, timeout: float = 60.0) -> Optional[str]:
    """Unload a model (in-flight requests finish first); None when done, else the server's error."""
    from tritonclient.utils import InferenceServerException

    client = grpc_client(grpc_url)
    try:
        client.unload_model(model, headers=api_key_headers(api_key, "grpc"), client_timeout=timeout)
        return None
    except InferenceServerException as exc:
        return str(exc.message() or exc)
    finally:
        client.close()
