"""Locust users that load-test a compound pipeline served by Triton, over HTTP or gRPC.

Run by ``compound loadtest``, or by hand::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --pipeline classify
    locust -f loadtest/locustfile.py --host grpc://127.0.0.1:8001 --pipeline classify -u 16 -r 8 -t 30s --headless

Options (each also an environment variable): ``--pipeline`` (COMPOUND_PIPELINE), ``--protocol``
auto|http|grpc (COMPOUND_PROTOCOL; auto follows the host's scheme), ``--data`` JSONL requests
(COMPOUND_DATA; default: synthesised from the pipeline's config), ``--load-shape``
constant|step|spike|burst (COMPOUND_SHAPE) with ``--steps``, ``--burst-on``, ``--burst-off``.
The web UI gets a "Pipeline models" tab: Triton's per-model statistics for the running test.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional

import gevent
from locust import FastHttpUser, User, constant, events, task
from locust.runners import STATE_RUNNING, STATE_SPAWNING, WorkerRunner

try:  # gRPC must cooperate with gevent, and be told so before any channel exists
    import grpc.experimental.gevent as _grpc_gevent

    _grpc_gevent.init_gevent()
except ImportError:  # pragma: no cover - grpcio always ships it
    pass

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "toolkit" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))  # a source checkout: use the toolkit next to this file

from toolkit.errors import CompoundError  # noqa: E402
from toolkit.loadtest.inputs import Request, prepare_requests  # noqa: E402
from toolkit.units import parse_duration  # noqa: E402
from toolkit.client import Signature, grpc_client  # noqa: E402
from toolkit.stats import COLUMNS, Breakdown, breakdown, fetch_stats, rows  # noqa: E402


def _load_shapes() -> ModuleType:
    """The sibling shapes module, whether installed as toolkit.locust or run from a checkout."""
    try:
        from toolkit.locust import shapes

        return shapes
    except ImportError:
        name = "compound_locust_shapes"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("shapes.py"))
        if spec is None or spec.loader is None:
            raise ImportError(f"shapes.py is missing next to {__file__}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


_shapes = _load_shapes()
log = logging.getLogger("compound")
TAB_KEY = "compound-models"


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser  # locust's own parser: argument groups do not know include_in_web_ui
    group.add_argument("--pipeline", env_var="COMPOUND_PIPELINE", default="", help="pipeline (Triton model) to call")
    group.add_argument(
        "--protocol", env_var="COMPOUND_PROTOCOL", default="auto", choices=["auto", "http", "grpc"],
        help="KServe v2 over HTTP or gRPC; auto follows the host's scheme (grpc://... is gRPC)",
    )
    group.add_argument("--data", env_var="COMPOUND_DATA", default="", help="JSONL file, one request a line, cycled")
    group.add_argument(
        "--load-shape", dest="compound_shape", env_var="COMPOUND_SHAPE", default="constant",
        choices=sorted(_shapes.SHAPES), help="load shape",
    )
    group.add_argument("--steps", dest="compound_steps", env_var="COMPOUND_STEPS", type=int, default=4,
                       help="steps of the step shape")
    group.add_argument("--burst-on", dest="compound_burst_on", env_var="COMPOUND_BURST_ON", default="5s",
                       help="burst shape: length of a burst")
    group.add_argument("--burst-off", dest="compound_burst_off", env_var="COMPOUND_BURST_OFF", default="5s",
                       help="burst shape: quiet time between bursts")
    group.add_argument("--request-timeout", dest="compound_timeout", env_var="COMPOUND_TIMEOUT", type=float,
                       default=60.0, include_in_web_ui=False, help="seconds before a request counts as failed")
    group.add_argument("--result-file", dest="compound_result", env_var="COMPOUND_RESULT", default="",
                       include_in_web_ui=False, help="write the final totals here as JSON when locust quits")
    group.add_argument("--models-refresh", dest="compound_refresh", env_var="COMPOUND_REFRESH", type=float,
                       default=2.0, include_in_web_ui=False, help="seconds between reads of Triton's statistics")


class _Workload:
    """This process's requests, prepared once from the options (every process: local, master, worker)."""

    def __init__(self) -> None:
        self.pipeline = ""
        self.protocol = "http"
        self.host = ""
        self.timeout = 60.0
        self.signature: Optional[Signature] = None
        self.requests: list[Request] = []
        self._bodies: Iterator[bytes] = iter(())
        self._grpc_inputs: Iterator[list[Any]] = iter(())

    def prepare(self, host: str, pipeline: str, protocol: str, data: str, timeout: float) -> None:
        self.host, self.pipeline, self.protocol, self.timeout = host, pipeline, protocol, timeout
        self.signature, self.requests = prepare_requests(host, protocol, pipeline, data or None)
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            prepared = []
            for request in self.requests:
                inputs = []
                for name, array, datatype in request.to_numpy():
                    infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
                    infer_input.set_data_from_numpy(array)
                    inputs.append(infer_input)
                prepared.append(inputs)
            self._grpc_inputs = itertools.cycle(prepared)
        else:
            self._bodies = itertools.cycle([json.dumps(r.to_v2_json()).encode() for r in self.requests])

    def next_body(self) -> bytes:
        return next(self._bodies)

    def next_grpc_inputs(self) -> list[Any]:
        return next(self._grpc_inputs)


WORKLOAD = _Workload()


def _protocol(host: str, option: str) -> str:
    if option in ("http", "grpc"):
        return option
    return "grpc" if host.startswith("grpc://") else "http"


def _error_text(body: Optional[bytes], status: int) -> str:
    """Triton's error message from a failed response, else the status."""
    try:
        message = json.loads(body or b"{}").get("error")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


class TritonHttpUser(FastHttpUser):
    """Closed-loop user calling ``POST /v2/models/<pipeline>/infer`` (KServe v2 REST)."""

    wait_time = constant(0)

    @task
    def infer(self) -> None:
        path = f"/v2/models/{WORKLOAD.pipeline}/infer"
        with self.client.post(
            path, data=WORKLOAD.next_body(), headers={"Content-Type": "application/json"},
            name=WORKLOAD.pipeline, catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_error_text(response.content, response.status_code))
            elif b'"outputs"' not in (response.content or b""):
                response.failure("response has no outputs")


_OPEN_CLIENTS: set[Any] = set()


def _close(client: Any) -> None:
    if client in _OPEN_CLIENTS:
        _OPEN_CLIENTS.discard(client)
        client.close()


@events.quitting.add_listener
def _close_clients(**_: Any) -> None:
    """Users killed mid-request skip on_stop; their channels must still close before exit."""
    for client in list(_OPEN_CLIENTS):
        _close(client)


class GrpcError(Exception):
    """An inference that failed over gRPC, with Triton's message."""


class TritonGrpcUser(User):
    """Closed-loop user calling ``ModelInfer`` through tritonclient.grpc (gevent-cooperative)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.client = grpc_client(self.host or WORKLOAD.host)
        _OPEN_CLIENTS.add(self.client)

    def on_stop(self) -> None:
        _close(self.client)

    @task
    def infer(self) -> None:
        from tritonclient.utils import InferenceServerException

        inputs = WORKLOAD.next_grpc_inputs()
        start_time = time.time()
        start = time.perf_counter()
        exception: Optional[Exception] = None
        length = 0
        try:
            result = self.client.infer(WORKLOAD.pipeline, inputs, client_timeout=WORKLOAD.timeout)
            length = result.get_response().ByteSize()
        except InferenceServerException as exc:
            exception = GrpcError(f"{exc.status() or 'gRPC'}: {exc.message()}")
        except Exception as exc:  # noqa: BLE001 - any failure is a failed request, never a crash
            exception = exc
        self.environment.events.request.fire(
            request_type="gRPC", name=WORKLOAD.pipeline, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, response=None, context={}, exception=exception, start_time=start_time,
            url=self.host,
        )


class CompoundShape(_shapes.SelectedShape):
    """The load shape named by --load-shape; -u, -r and -t set its size, rate and length."""


class _ModelsMonitor:
    """Reads Triton's statistics while a test runs, for the web UI's "Pipeline models" tab."""

    def __init__(self, environment: Any, interval: float) -> None:
        self.environment = environment
        self.interval = max(interval, 0.5)
        self.baseline: dict[str, Any] = {}
        self.latest: Optional[Breakdown] = None
        self.error = ""

    def _fetch(self) -> dict[str, Any]:
        return fetch_stats(WORKLOAD.host, WORKLOAD.protocol, timeout=5.0)

    def reset(self) -> None:
        try:
            self.baseline = self._fetch()
            self.latest = None
        except CompoundError as exc:
            self.error = str(exc)

    def poll(self) -> None:
        try:
            now = self._fetch()
        except CompoundError as exc:
            self.error = str(exc)
            return
        composing = list(WORKLOAD.signature.composing) if WORKLOAD.signature else None
        self.latest = breakdown(WORKLOAD.pipeline, self.baseline, now, composing)
        self.error = ""

    def run(self) -> None:
        while True:
            state = getattr(self.environment.runner, "state", None)
            if state in (STATE_RUNNING, STATE_SPAWNING):
                self.poll()
            gevent.sleep(self.interval)

    def table(self) -> list[dict[str, Any]]:
        if self.latest is None:
            return []
        b = self.latest
        head = {key: "" for key, _ in COLUMNS}
        head.update(model=f"{b.pipeline} (end-to-end)", requests=b.requests, latency_ms=b.end_to_end_ms, share_pct=100.0)
        return [head, *rows(b)]

    def as_json(self) -> dict[str, Any]:
        return {"breakdown": self.latest.to_dict() if self.latest else None, "rows": self.table(), "error": self.error}


def _install_dashboard(environment: Any, monitor: _ModelsMonitor) -> None:
    from flask import jsonify, request

    web_ui = environment.web_ui
    web_ui.template_args["extended_tabs"] = [{"title": "Pipeline models", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB_KEY, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}
    ]

    @web_ui.app.after_request
    def _with_models(response: Any) -> Any:
        if request.path.endswith("/stats/requests") and response.is_json:
            payload = response.get_json()
            payload["extended_stats"] = [{"key": TAB_KEY, "data": monitor.table()}]
            response.set_data(json.dumps(payload))
        return response

    @web_ui.app.route("/compound/models")
    def _models() -> Any:
        return jsonify(monitor.as_json())


def _unwrap_error(error: Any) -> str:
    """The failure's message: CatchResponseError("HTTP 500: ...") reads as HTTP 500: ..."""
    if type(error).__name__ == "CatchResponseError" and getattr(error, "args", None):
        return str(error.args[0])
    text = str(error) if isinstance(error, str) else repr(error)
    return text[len("CatchResponseError("):-1] if text.startswith("CatchResponseError(") else text


def _write_result(environment: Any, path: str) -> None:
    """Final totals, after every user stopped: what the CSV, written every second, may miss."""
    stats = environment.runner.stats
    total = stats.total
    result = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": round(total.total_rps, 2),
        "avg_ms": round(total.avg_response_time, 2),
        "p50_ms": total.get_response_time_percentile(0.5) if total.num_requests else 0,
        "p95_ms": total.get_response_time_percentile(0.95) if total.num_requests else 0,
        "p99_ms": total.get_response_time_percentile(0.99) if total.num_requests else 0,
        "max_ms": round(total.max_response_time or 0, 2),
        "failure_reasons": [
            {"name": e.name, "error": _unwrap_error(e.error), "occurrences": e.occurrences}
            for e in sorted(stats.errors.values(), key=lambda e: -e.occurrences)
        ],
    }
    Path(path).write_text(json.dumps(result, indent=2), encoding="utf-8")


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library: the caller configures WORKLOAD itself
        return
    host = environment.host or ""
    protocol = _protocol(host, options.protocol)
    if len(environment.user_classes) > 1:  # no user class named on the command line: pick by protocol
        wanted = TritonGrpcUser if protocol == "grpc" else TritonHttpUser
        environment.user_classes[:] = [c for c in environment.user_classes if c is wanted]
    elif environment.user_classes:
        protocol = "grpc" if issubclass(environment.user_classes[0], TritonGrpcUser) else "http"
    if protocol == "http" and host and "://" not in host:
        environment.host = host = f"http://{host}"
    if not options.pipeline or not host:
        log.error("compound: --pipeline and --host are required (e.g. --host http://127.0.0.1:8000 --pipeline classify)")
        sys.exit(2)
    try:
        for name in ("compound_burst_on", "compound_burst_off"):
            setattr(options, name, parse_duration(getattr(options, name), f"--{name[9:].replace('_', '-')}"))
        WORKLOAD.prepare(host, options.pipeline, protocol, options.data, options.compound_timeout)
    except CompoundError as exc:
        log.error("compound: %s", exc)
        sys.exit(2)
    log.info("compound: %d request(s) for pipeline '%s' over %s", len(WORKLOAD.requests), options.pipeline, protocol)
    if options.compound_result and not isinstance(environment.runner, WorkerRunner):
        environment.events.quit.add_listener(lambda **_: _write_result(environment, options.compound_result))
    if environment.web_ui is not None and not isinstance(environment.runner, WorkerRunner):
        monitor = _ModelsMonitor(environment, options.compound_refresh)
        monitor.reset()
        _install_dashboard(environment, monitor)
        environment.events.test_start.add_listener(lambda **_: monitor.reset())
        environment.events.reset_stats.add_listener(lambda **_: monitor.reset())
        environment.events.test_stop.add_listener(lambda **_: monitor.poll())
        gevent.spawn(monitor.run)
