"""Locust users that load-test a compound pipeline served by Triton, over HTTP or gRPC.

Run by ``compound loadtest``, or by hand::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --pipeline classify
    locust -f loadtest/locustfile.py --host grpc://127.0.0.1:8001 --pipeline classify -u 16 -r 8 -t 30s --headless

Options (each also an environment variable): ``--pipeline`` (COMPOUND_PIPELINE), ``--protocol``
auto|http|grpc (COMPOUND_PROTOCOL; auto follows the host's scheme), ``--data`` JSONL requests
(COMPOUND_DATA; default: synthesised from the pipeline's config), ``--load-shape``
constant|step|spike|burst|soak (COMPOUND_SHAPE) with ``--steps``, ``--burst-on``, ``--burst-off``;
``--target-rps`` (COMPOUND_TARGET_RPS) paces the users to that offered rate instead of a closed loop.
``--timeline-file`` (COMPOUND_TIMELINE) writes what a soak report needs, for any shape: requests,
failures, p50/p95/max per ``--window`` (COMPOUND_WINDOW, default 1m), the p95 drift from the first
to the last windows, and with ``--server-pid`` (COMPOUND_SERVER_PID, a tritonserver on this machine)
the resident memory of it and of every process under it (Python-backend stubs) at the start, every
window and the end.
The web UI gets a "Pipeline models" tab: Triton's per-model statistics for the running test.

A pipeline the server serves as a decoupled model streams: its users open one gRPC stream (or one
HTTP server-sent event stream, POST .../generate_stream) per request and time every token; the
result file then has the streams' time to first token, inter-token latency and tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional

import gevent
from locust import FastHttpUser, User, events, task
from locust.runners import STATE_RUNNING, STATE_SPAWNING, WorkerRunner

try:  # gRPC must cooperate with gevent, and be told so before any channel exists
    import grpc.experimental.gevent as _grpc_gevent

    _grpc_gevent.init_gevent()
except ImportError:  # pragma: no cover - grpcio always ships it
    pass

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "toolkit" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))  # a source checkout: use the toolkit next to this file

from toolkit.client import Signature, grpc_client  # noqa: E402
from toolkit.core.errors import CompoundError  # noqa: E402
from toolkit.core.units import parse_duration  # noqa: E402
from toolkit.loadtest.inputs import Request, prepare_requests  # noqa: E402
from toolkit.loadtest.streaming import (  # noqa: E402
    StreamRecorder,
    StreamTiming,
    grpc_request,
    grpc_stream,
    read_sse,
    sse_body,
    streams,
)
from toolkit.observe.stats import COLUMNS, Breakdown, breakdown, fetch_stats, rows  # noqa: E402


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
            raise ImportError(f"shapes.py is missing next to {__file__}") from None
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
        "--protocol",
        env_var="COMPOUND_PROTOCOL",
        default="auto",
        choices=["auto", "http", "grpc"],
        help="KServe v2 over HTTP or gRPC; auto follows the host's scheme (grpc://... is gRPC)",
    )
    group.add_argument("--data", env_var="COMPOUND_DATA", default="", help="JSONL file, one request a line, cycled")
    group.add_argument(
        "--load-shape",
        dest="compound_shape",
        env_var="COMPOUND_SHAPE",
        default="constant",
        choices=sorted(_shapes.SHAPES),
        help="load shape",
    )
    group.add_argument(
        "--steps", dest="compound_steps", env_var="COMPOUND_STEPS", type=int, default=4, help="steps of the step shape"
    )
    group.add_argument(
        "--burst-on",
        dest="compound_burst_on",
        env_var="COMPOUND_BURST_ON",
        default="5s",
        help="burst shape: length of a burst",
    )
    group.add_argument(
        "--burst-off",
        dest="compound_burst_off",
        env_var="COMPOUND_BURST_OFF",
        default="5s",
        help="burst shape: quiet time between bursts",
    )
    group.add_argument(
        "--request-timeout",
        dest="compound_timeout",
        env_var="COMPOUND_TIMEOUT",
        type=float,
        default=60.0,
        include_in_web_ui=False,
        help="seconds before a request counts as failed",
    )
    group.add_argument(
        "--result-file",
        dest="compound_result",
        env_var="COMPOUND_RESULT",
        default="",
        include_in_web_ui=False,
        help="write the final totals here as JSON when locust quits",
    )
    group.add_argument(
        "--models-refresh",
        dest="compound_refresh",
        env_var="COMPOUND_REFRESH",
        type=float,
        default=2.0,
        include_in_web_ui=False,
        help="seconds between reads of Triton's statistics",
    )
    group.add_argument(
        "--target-rps",
        dest="compound_target_rps",
        env_var="COMPOUND_TARGET_RPS",
        type=float,
        default=0.0,
        help="offered requests/s shared by all users (0: closed loop, no pause)",
    )
    group.add_argument(
        "--window",
        dest="compound_window",
        env_var="COMPOUND_WINDOW",
        default="1m",
        include_in_web_ui=False,
        help="timeline resolution (soak report)",
    )
    group.add_argument(
        "--timeline-file",
        dest="compound_timeline",
        env_var="COMPOUND_TIMELINE",
        default="",
        include_in_web_ui=False,
        help="write per-window latency, p95 drift and server memory here",
    )
    group.add_argument(
        "--server-pid",
        dest="compound_server_pid",
        env_var="COMPOUND_SERVER_PID",
        type=int,
        default=0,
        include_in_web_ui=False,
        help="tritonserver's pid: sample its and its children's RSS",
    )
    # Set by the master from -u, which locust does not pass on to workers: pacing needs the total.
    group.add_argument(
        "--pacing-users",
        dest="compound_pacing_users",
        type=int,
        default=0,
        include_in_web_ui=False,
        help=argparse.SUPPRESS,
    )


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
        self.streaming = False  # the server answers the pipeline with a stream of responses
        self._stream_requests: Iterator[Any] = iter(())

    def prepare(self, host: str, pipeline: str, protocol: str, data: str, timeout: float) -> None:
        self.host, self.pipeline, self.protocol, self.timeout = host, pipeline, protocol, timeout
        self.signature, self.requests = prepare_requests(host, protocol, pipeline, data or None)
        self.streaming = streams(host, protocol, self.signature)
        if self.streaming:
            if protocol == "grpc":
                self._stream_requests = itertools.cycle([grpc_request(pipeline, r) for r in self.requests])
            else:
                self._bodies = itertools.cycle([sse_body(r) for r in self.requests])
        elif protocol == "grpc":
            self._grpc_inputs = itertools.cycle([r.grpc_inputs() for r in self.requests])
        else:
            self._bodies = itertools.cycle([json.dumps(r.to_v2_json()).encode() for r in self.requests])

    def next_body(self) -> bytes:
        return next(self._bodies)

    def next_grpc_inputs(self) -> list[Any]:
        return next(self._grpc_inputs)

    def next_stream_request(self) -> Any:
        return next(self._stream_requests)


WORKLOAD = _Workload()


def _paced(user: Any) -> float:
    """locust's constant_pacing, at the interval that makes all users together offer --target-rps
    (0: closed loop, the next request at once). Read at every wait: workers learn the total user count
    from the master only when it starts them."""
    options = getattr(user.environment, "parsed_options", None)
    if options is None or not getattr(options, "compound_target_rps", 0):
        return 0.0
    users = getattr(options, "compound_pacing_users", 0) or getattr(options, "num_users", 0) or 1
    interval = _shapes.Knobs(users, 1.0, None, target_rps=options.compound_target_rps).pacing_s()
    now = time.monotonic()
    last = getattr(user, "_compound_last_start", None)
    # the first wait spreads the users over one interval, so they do not all fire together
    wait = random.uniform(0, interval) if last is None else max(0.0, interval - (now - last))
    user._compound_last_start = now + wait
    return wait


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
    """Closed-loop (or --target-rps paced) user calling ``POST /v2/models/<pipeline>/infer`` (KServe v2)."""

    wait_time = _paced

    @task
    def infer(self) -> None:
        path = f"/v2/models/{WORKLOAD.pipeline}/infer"
        with self.client.post(
            path,
            data=WORKLOAD.next_body(),
            headers={"Content-Type": "application/json"},
            name=WORKLOAD.pipeline,
            catch_response=True,
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
    """Closed-loop (or --target-rps paced) user calling ``ModelInfer`` with tritonclient.grpc (gevent-cooperative)."""

    wait_time = _paced

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
            request_type="gRPC",
            name=WORKLOAD.pipeline,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            response=None,
            context={},
            exception=exception,
            start_time=start_time,
            url=self.host,
        )


STREAMS = StreamRecorder()  # this process's streams (a worker's go to the master with each report)


def _report_stream(user: Any, request_type: str, timing: StreamTiming) -> None:
    """File a finished stream: with locust (the whole stream and its first token, for the UI and the
    CSV) and with STREAMS (exact TTFT and inter-token gaps)."""
    STREAMS.add(timing)
    exception = None if timing.error is None else StreamError(timing.error)
    start_time = time.time() - (time.perf_counter() - timing.sent)
    fire = user.environment.events.request.fire
    fire(
        request_type=request_type,
        name=WORKLOAD.pipeline,
        response_time=timing.total_ms,
        response_length=timing.tokens,
        response=None,
        context={},
        exception=exception,
        start_time=start_time,
        url=user.host,
    )
    if timing.ttft_ms is not None:
        fire(
            request_type="TTFT",
            name=WORKLOAD.pipeline,
            response_time=timing.ttft_ms,
            response_length=0,
            response=None,
            context={},
            exception=None,
            start_time=start_time,
            url=user.host,
        )


class StreamError(Exception):
    """A stream that failed, with Triton's message."""


class TritonGrpcStreamUser(User):
    """Closed-loop (or paced) user of a streaming pipeline: one ``ModelStreamInfer`` stream per request."""

    wait_time = _paced

    def on_start(self) -> None:
        self.client = grpc_client(self.host or WORKLOAD.host)
        _OPEN_CLIENTS.add(self.client)

    def on_stop(self) -> None:
        _close(self.client)

    @task
    def stream(self) -> None:
        _report_stream(self, "gRPC stream", grpc_stream(self.client, WORKLOAD.next_stream_request(), WORKLOAD.timeout))


class TritonSseUser(User):
    """Closed-loop (or paced) user of a streaming pipeline over HTTP: ``POST /v2/models/<pipeline>/generate_stream``,
    one server-sent event per response (its own requests session: locust's would file the POST itself)."""

    wait_time = _paced

    def on_start(self) -> None:
        import requests

        self.session = requests.Session()
        self.url = f"{(self.host or WORKLOAD.host).rstrip('/')}/v2/models/{WORKLOAD.pipeline}/generate_stream"

    def on_stop(self) -> None:
        self.session.close()

    @task
    def stream(self) -> None:
        timing = StreamTiming(time.perf_counter())
        try:
            with self.session.post(
                self.url,
                data=WORKLOAD.next_body(),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                stream=True,
                timeout=WORKLOAD.timeout,
            ) as response:
                if response.status_code != 200:
                    timing.error = _error_text(response.content, response.status_code)
                    timing.ended = time.perf_counter()
                else:
                    read_sse(response.iter_lines(), timing)
        except Exception as exc:  # noqa: BLE001 - a broken connection is a failed stream, never a crash
            timing.error, timing.ended = str(exc), time.perf_counter()
        _report_stream(self, "SSE", timing)


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
        head.update(
            model=f"{b.pipeline} (end-to-end)", requests=b.requests, latency_ms=b.end_to_end_ms, share_pct=100.0
        )
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
    return text[len("CatchResponseError(") : -1] if text.startswith("CatchResponseError(") else text


def _write_result(environment: Any, path: str) -> None:
    """Final totals, after every user stopped: what the CSV, written every second, may miss."""
    stats = environment.runner.stats
    total = stats.total
    if WORKLOAD.streaming:  # the whole streams, not their first tokens
        total = stats.get(WORKLOAD.pipeline, "gRPC stream" if WORKLOAD.protocol == "grpc" else "SSE")
    result: dict[str, Any] = {
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
    if WORKLOAD.streaming:
        result["stream"] = STREAMS.figures().to_dict()
    Path(path).write_text(json.dumps(result, indent=2), encoding="utf-8")


def process_tree_rss(pid: int) -> list[dict[str, Any]]:
    """Resident memory of a process and of every process under it (Linux /proc); [] when it is gone."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])  # comm may hold spaces
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        tree.append(current)
        frontier.extend(child for child, parent in parents.items() if parent == current)
    rows = []
    for member in tree:
        try:
            with open(f"/proc/{member}/status", encoding="utf-8") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            with open(f"/proc/{member}/cmdline", "rb") as cmdline:
                argv = [a.decode(errors="replace") for a in cmdline.read().split(b"\0") if a]
        except OSError:
            continue  # it exited between the scan and the read
        rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])
        name = " ".join([os.path.basename(argv[0]), *argv[1:2]]) if argv else fields.get("Name", "").strip()
        rows.append({"pid": member, "name": name[:120], "rss_mb": round(rss_kb / 1024, 1)})
    return rows


class _SoakRecorder:
    """What a soak report needs: every process that sends requests files them into a Timeline (workers
    ship theirs to the master with each stats report); the reporting process samples the server's memory
    at the start, every window and the end, and writes it all to --timeline-file when locust quits."""

    def __init__(self, environment: Any, options: Any) -> None:
        self.environment = environment
        self.options = options
        self.window_s = float(options.compound_window)
        self.timeline = _shapes.Timeline(self.window_s)
        self.started: Optional[float] = None
        self.samples: list[dict[str, Any]] = []
        self.reporting = not isinstance(environment.runner, WorkerRunner)

    def on_test_start(self, **_: Any) -> None:
        self.started = time.time()
        # a worker has the master's options only from its first spawn message, just before this event
        self.window_s = parse_duration(self.options.compound_window, "--window")
        self.timeline = _shapes.Timeline(self.window_s, self.end_s())
        self.samples = []
        if self.reporting and self.options.compound_server_pid:
            self.sample("start")
            gevent.spawn(self._sample_every_window)

    def on_request(
        self, response_time: Optional[float] = None, exception: Any = None, start_time: Any = None, **_: Any
    ) -> None:
        if self.started is not None:
            offset = (start_time if isinstance(start_time, (int, float)) else time.time()) - self.started
            self.timeline.add(offset, float(response_time or 0.0), exception is not None)

    def end_s(self) -> Optional[float]:
        """When the test stops: -t, else the soak's own length; None runs until stopped."""
        run_time = getattr(self.options, "run_time", None)
        if run_time:
            return float(run_time)
        return float(_shapes.SOAK_DEFAULT_S) if self.options.compound_shape == "soak" else None

    def on_report_to_master(self, client_id: str, data: dict[str, Any]) -> None:
        data["compound_timeline"] = self.timeline.take()

    def on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        self.timeline.merge(data.get("compound_timeline") or {})

    def sample(self, at: str) -> None:
        rows = process_tree_rss(self.options.compound_server_pid)
        offset = round(time.time() - self.started, 1) if self.started is not None else 0.0
        self.samples.append(
            {"at": at, "t_s": offset, "total_mb": round(sum(r["rss_mb"] for r in rows), 1), "processes": rows}
        )

    def _sample_every_window(self) -> None:
        started = self.started
        while self.started == started:
            gevent.sleep(self.window_s)
            if self.started == started and getattr(self.environment.runner, "state", None) in (
                STATE_RUNNING,
                STATE_SPAWNING,
            ):
                self.sample("window")

    def write(self, path: str) -> None:
        o = self.options
        server: dict[str, Any] = {}
        if o.compound_server_pid:
            self.sample("end")
            start, end = self.samples[0], self.samples[-1]
            server = {
                "pid": o.compound_server_pid,
                "start_total_mb": start["total_mb"],
                "end_total_mb": end["total_mb"],
                "growth_mb": round(end["total_mb"] - start["total_mb"], 1),
                "start": start["processes"],
                "end": end["processes"],
                "samples": [{k: s[k] for k in ("at", "t_s", "total_mb")} for s in self.samples],
            }
            if not end["processes"]:
                server["error"] = f"no process {o.compound_server_pid} at the end (did the server die?)"
        report = {
            "shape": o.compound_shape,
            "users": o.num_users,
            "spawn_rate": o.spawn_rate,
            "run_time_s": o.run_time,
            "target_rps": o.compound_target_rps,
            "window_s": self.window_s,
            "windows": self.timeline.rows(),
            "p95_drift": self.timeline.drift(),
            "server_rss": server or None,
        }
        Path(path).write_text(json.dumps(report, indent=2), encoding="utf-8")


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library: the caller configures WORKLOAD itself
        return
    host = environment.host or ""
    protocol = _protocol(host, options.protocol)
    if len(environment.user_classes) == 1:  # a user class named on the command line sets the protocol
        protocol = "grpc" if issubclass(environment.user_classes[0], (TritonGrpcUser, TritonGrpcStreamUser)) else "http"
    if protocol == "http" and host and "://" not in host:
        environment.host = host = f"http://{host}"
    if not options.pipeline or not host:
        log.error(
            "compound: --pipeline and --host are required (e.g. --host http://127.0.0.1:8000 --pipeline classify)"
        )
        sys.exit(2)
    try:
        for name in ("compound_burst_on", "compound_burst_off", "compound_window"):
            setattr(options, name, parse_duration(getattr(options, name), f"--{name[9:].replace('_', '-')}"))
        if options.compound_target_rps < 0:
            raise CompoundError(f"--target-rps must be 0 or more, got {options.compound_target_rps:g}")
        if not options.compound_window > 0:
            raise CompoundError("--window must be above 0")
        if options.compound_server_pid and not os.path.isdir(f"/proc/{options.compound_server_pid}"):
            raise CompoundError(f"--server-pid {options.compound_server_pid}: no such process on this machine")
        WORKLOAD.prepare(host, options.pipeline, protocol, options.data, options.compound_timeout)
    except CompoundError as exc:
        log.error("compound: %s", exc)
        sys.exit(2)
    if len(environment.user_classes) > 1:  # none named: pick by protocol, and whether the pipeline streams
        wanted = {
            ("grpc", False): TritonGrpcUser,
            ("http", False): TritonHttpUser,
            ("grpc", True): TritonGrpcStreamUser,
            ("http", True): TritonSseUser,
        }[(protocol, WORKLOAD.streaming)]
        environment.user_classes[:] = [c for c in environment.user_classes if c is wanted]
    if WORKLOAD.streaming:
        environment.events.test_start.add_listener(lambda **_: STREAMS.clear())
        environment.events.report_to_master.add_listener(
            lambda client_id, data: data.__setitem__("compound_streams", STREAMS.take())
        )
        environment.events.worker_report.add_listener(
            lambda client_id, data: STREAMS.merge(data.get("compound_streams") or {})
        )
    if not isinstance(environment.runner, WorkerRunner):
        options.compound_pacing_users = options.num_users or 0  # workers get the total through this option
    if options.compound_timeline or isinstance(environment.runner, WorkerRunner):
        recorder = _SoakRecorder(environment, options)
        environment.events.test_start.add_listener(recorder.on_test_start)
        environment.events.request.add_listener(recorder.on_request)
        environment.events.report_to_master.add_listener(recorder.on_report_to_master)
        environment.events.worker_report.add_listener(recorder.on_worker_report)
        if options.compound_timeline and recorder.reporting:
            environment.events.quit.add_listener(lambda **_: recorder.write(options.compound_timeline))
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
