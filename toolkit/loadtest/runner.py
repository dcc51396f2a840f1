"""Load-test a served pipeline with real locust: check the input first, run locust's processes, then
report latency, throughput and Triton's per-model breakdown, and gate on an SLO.

Locust runs as subprocesses on ``loadtest/locustfile.py`` (packaged as ``toolkit.locust``) because
importing it monkey-patches this process; configuration travels in ``COMPOUND_*`` environment
variables, which the locustfile reads as its own options.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.client import Protocol, Signature, strip_scheme
from toolkit.core.errors import CompoundError
from toolkit.core.system import free_port, tied_to_parent
from toolkit.loadtest.inputs import prepare_requests
from toolkit.loadtest.streaming import StreamStats, check_ttft_slo, format_stream, stream_gate, streams
from toolkit.observe import cachestats
from toolkit.observe.stats import Breakdown, breakdown, fetch_stats, format_table, to_html

PROTOCOLS: tuple[Protocol, ...] = ("http", "grpc")
SHAPES = ("constant", "step", "spike", "burst", "soak")
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 15.0
# Users finish the request in flight when a run (or a shape's step down) stops them, instead of being
# killed: a killed gRPC call is a cancellation, and Triton 2.51 can crash on a cancellation racing a
# response (triton-inference-server/server#7368, fixed in 24.12), as seen here under locust.
STOP_TIMEOUT_S = 10


class SloViolation(CompoundError):
    """The run finished but broke a gate (p95 SLO, failure ratio): CI should fail."""

    exit_code = 3


@dataclass
class LoadTestOptions:
    pipeline: str
    url: str  # host:port of the protocol's endpoint
    protocol: Protocol = "http"  # checked again by check(): callers outside Python's types pass strings
    users: int = 16
    spawn_rate: float = 8.0
    run_time_s: Optional[int] = 30
    shape: str = "constant"
    data: Optional[Path] = None
    ui: bool = False
    web_port: int = 8089
    workers: int = 0
    csv_prefix: Optional[Path] = None
    html: Optional[Path] = None
    json_path: Optional[Path] = None
    p95_slo_ms: Optional[float] = None
    max_failure_ratio: Optional[float] = None
    ttft_p95_slo_ms: Optional[float] = None  # streaming pipelines: gate on the time to first token
    extra_env: dict[str, str] = field(default_factory=dict)  # more COMPOUND_* knobs (burst lengths, steps)
    metrics_url: Optional[str] = None  # Triton's Prometheus endpoint, for the tiered cache's columns
    cache_steps: dict[str, str] = field(default_factory=dict)  # fused step -> its pipeline (compound.json)
    traces: Optional[Any] = None  # a toolkit.observe.tracing.SpanCollector receiving the server's spans: critical paths

    def check(self) -> None:
        """Option errors a user can make, before anything starts."""
        if self.protocol not in PROTOCOLS:
            raise CompoundError(f"unknown protocol '{self.protocol}'", hint="use http or grpc")
        if self.shape not in SHAPES:
            raise CompoundError(f"unknown load shape '{self.shape}'", hint=f"use one of {', '.join(SHAPES)}")
        if self.users < 1:
            raise CompoundError(f"--users must be at least 1, got {self.users}")
        if not self.spawn_rate > 0:
            raise CompoundError(f"--spawn-rate must be above 0, got {self.spawn_rate}")
        if self.workers < 0:
            raise CompoundError(f"--workers must be 0 or more, got {self.workers}")
        if self.max_failure_ratio is not None and not 0 <= self.max_failure_ratio <= 1:
            raise CompoundError(f"--max-failure-ratio must be within 0..1, got {self.max_failure_ratio}")
        if self.p95_slo_ms is not None and not self.p95_slo_ms > 0:
            raise CompoundError(f"--p95-slo-ms must be above 0, got {self.p95_slo_ms}")
        if not self.ui and not self.run_time_s:
            raise CompoundError("a headless run needs --run-time")
        if ":" not in strip_scheme(self.url):
            raise CompoundError(f"--url must be HOST:PORT, got '{self.url}'")


def locustfile_path() -> Path:
    """The packaged locustfile (toolkit.locust), or the checkout's loadtest/ folder."""
    try:
        from importlib.resources import files

        candidate = Path(str(files("toolkit.locust") / "locustfile.py"))
        if candidate.is_file():
            return candidate
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    candidate = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"  # toolkit/loadtest/ -> checkout
    if not candidate.is_file():
        raise CompoundError("the locustfile is missing from this installation", hint="reinstall compound")
    return candidate


# --- the processes --------------------------------------------------------------------------------


def locust_command(host: str, *flags: str) -> list[str]:
    """argv of one locust process on the project's locustfile against `host` (scheme://host:port);
    `flags`: its role's (run_flags for one that runs the users, --worker ... for a worker)."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile_path()),
        "--host",
        host,
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        *flags,
    ]


def run_flags(
    users: int, spawn_rate: float, csv_prefix: Path, run_time_s: Optional[float] = None, html: Optional[Path] = None
) -> list[str]:
    """Flags of the locust that runs the users and writes the statistics (standalone or master):
    failed requests are counted, not an exit code; no run time: until stopped."""
    return [
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "--csv",
        str(csv_prefix),
        *(["--html", str(html)] if html is not None else []),
        "--exit-code-on-error",
        "0",
        *(["-t", f"{run_time_s:.0f}s"] if run_time_s else []),
    ]


class LocustRunner:
    """Owns locust's processes (one standalone, or a master and N workers): started, checked,
    logged to files in ``run_dir``, and always stopped."""

    def __init__(self, options: LoadTestOptions, run_dir: Path) -> None:
        self.options = options
        self.run_dir = run_dir
        self.csv_prefix = run_dir / "locust"
        self.html_path = run_dir / "report.html"
        self.result_path = run_dir / "result.json"
        self.master_port = free_port() if options.workers else 0
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._logs: list[Any] = []

    @property
    def host(self) -> str:
        scheme = "grpc" if self.options.protocol == "grpc" else "http"
        return f"{scheme}://{strip_scheme(self.options.url)}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.options.web_port}"

    @property
    def log_path(self) -> Path:
        return self.processes[0][2] if self.processes else self.run_dir / "locust.log"

    def environment(self) -> dict[str, str]:
        o = self.options
        env = dict(os.environ)
        env.update(
            COMPOUND_PIPELINE=o.pipeline,
            COMPOUND_PROTOCOL=o.protocol,
            COMPOUND_DATA=str(Path(o.data).resolve()) if o.data else "",
            COMPOUND_SHAPE=o.shape,
            COMPOUND_RESULT=str(self.result_path),
            PYTHONUNBUFFERED="1",
        )
        env.update(o.extra_env)
        return env

    def command(self, role: str) -> list[str]:
        """argv for 'standalone', 'master' or 'worker'."""
        o = self.options
        if role == "worker":
            master = ["--master-host", "127.0.0.1", "--master-port", str(self.master_port)]
            return locust_command(self.host, "--worker", *master)
        flags = run_flags(o.users, o.spawn_rate, self.csv_prefix, o.run_time_s, self.html_path)
        argv = locust_command(self.host, *flags)
        if o.ui:
            argv += ["--web-host", "127.0.0.1", "--web-port", str(o.web_port)]
        else:
            argv += ["--headless", "--only-summary"]
        if role == "master":
            argv += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(self.master_port)]
            if not o.ui:
                argv += ["--expect-workers", str(o.workers), "--expect-workers-max-wait", str(int(STARTUP_TIMEOUT_S))]
        return argv

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.run_dir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        # tied to this process; SIGINT, which makes locust write its reports, at its default action
        process = subprocess.Popen(  # noqa: S603 - argv list built above
            tied_to_parent(argv),
            cwd=self.run_dir,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes.append((name, process, log_path))

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.options.workers:
            self._spawn("locust-master", self.command("master"))
            for index in range(1, self.options.workers + 1):
                self._spawn(f"locust-worker-{index}", self.command("worker"))
        else:
            self._spawn("locust", self.command("standalone"))
        if self.options.ui:
            self._wait_for_web_ui()
        else:
            time.sleep(0.5)
            self.check_alive()

    def _wait_for_web_ui(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.web_url + "/", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise self._failure(f"locust's web UI did not answer on {self.web_url} within {STARTUP_TIMEOUT_S:.0f}s")

    def check_alive(self) -> None:
        """Raise if a process died while it should run (a worker at any time, locust before the end)."""
        for name, process, _ in self.processes:
            if process.poll() is not None and (name.startswith("locust-worker") or process.returncode != 0):
                raise self._failure(f"{name} exited with code {process.returncode}")

    def wait(self, timeout: Optional[float]) -> int:
        """Wait for the (master) process to finish; its exit code."""
        main = self.processes[0][1]
        deadline = None if timeout is None else time.monotonic() + timeout
        while main.poll() is None:
            for name, process, _ in self.processes[1:]:
                if process.poll() is not None and process.returncode != 0:
                    raise self._failure(f"{name} exited with code {process.returncode}")
            if deadline is not None and time.monotonic() > deadline:
                raise self._failure(f"locust did not finish within {timeout:.0f}s")
            time.sleep(0.2)
        if main.returncode != 0:
            raise self._failure(f"locust exited with code {main.returncode}")
        return main.returncode

    def _failure(self, message: str) -> CompoundError:
        tail = ""
        for name, _, path in self.processes:
            text = path.read_text(errors="replace") if path.exists() else ""
            if text.strip():
                tail += f"\n--- {name} log (tail): {path} ---\n" + "\n".join(text.splitlines()[-15:])
        return CompoundError(message + tail, hint=f"full logs in {self.run_dir}")

    def stop(self) -> None:
        """Interrupt (so locust writes its reports), then terminate, then kill; masters first."""
        for _, process, _ in self.processes:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocustRunner:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- results --------------------------------------------------------------------------------------


@dataclass
class LatencyStats:
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    failure_reasons: list[dict[str, Any]] = field(default_factory=list)
    stream: Optional[StreamStats] = None  # a streaming pipeline's figures (the rest is per whole stream)

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _number(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


_WRAPPED = re.compile(r"""^\w+\((['"])(.*)\1\)$""", re.S)


def _unwrap(error: str) -> str:
    """Locust records ``CatchResponseError("HTTP 500: ...")``; the message alone reads better."""
    match = _WRAPPED.match(error.strip())
    return match.group(2) if match else error


def read_locust_csv(prefix: Path) -> LatencyStats:
    """The Aggregated row of locust's ``*_stats.csv`` and the reasons in ``*_failures.csv``."""
    stats_file = Path(f"{prefix}_stats.csv")
    if not stats_file.exists():
        raise CompoundError(f"locust wrote no statistics ({stats_file} is missing)")
    result = LatencyStats()
    with stats_file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated":
                result = LatencyStats(
                    requests=int(_number(row["Request Count"])),
                    failures=int(_number(row["Failure Count"])),
                    rps=round(_number(row["Requests/s"]), 2),
                    avg_ms=round(_number(row["Average Response Time"]), 2),
                    p50_ms=_number(row["50%"]),
                    p95_ms=_number(row["95%"]),
                    p99_ms=_number(row["99%"]),
                    max_ms=round(_number(row["Max Response Time"]), 2),
                )
    failures_file = Path(f"{prefix}_failures.csv")
    if failures_file.exists():
        with failures_file.open(newline="") as handle:
            result.failure_reasons = [
                {
                    "name": r.get("Name", ""),
                    "error": _unwrap(r.get("Error", "")),
                    "occurrences": int(_number(r.get("Occurrences", "0"))),
                }
                for r in csv.DictReader(handle)
            ]
    return result


def read_result(path: Path, csv_prefix: Path) -> LatencyStats:
    """The locustfile's final totals; locust's CSV (up to a second stale) when they are missing."""
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            stream = data.pop("stream", None)
            return LatencyStats(**data, stream=StreamStats(**stream) if stream is not None else None)
        except (ValueError, TypeError):
            pass
    return read_locust_csv(csv_prefix)


def gate(stats: LatencyStats, p95_slo_ms: Optional[float], max_failure_ratio: Optional[float]) -> list[str]:
    """Every broken gate, in words; empty when the run passes."""
    violations = []
    if (p95_slo_ms is not None or max_failure_ratio is not None) and stats.requests == 0:
        violations.append("no request completed")
    if p95_slo_ms is not None and stats.requests and stats.p95_ms > p95_slo_ms:
        violations.append(f"p95 latency {stats.p95_ms:g} ms is above the SLO of {p95_slo_ms:g} ms")
    if max_failure_ratio is not None and stats.failure_ratio > max_failure_ratio:
        violations.append(
            f"failure ratio {stats.failure_ratio:.4f} ({stats.failures}/{stats.requests})"
            f" is above {max_failure_ratio:g}"
        )
    return violations


@dataclass
class Summary:
    pipeline: str
    protocol: str
    url: str
    shape: str
    users: int
    workers: int
    run_time_s: Optional[int]
    latency: LatencyStats
    models: Optional[Breakdown]
    violations: list[str]
    run_dir: str
    critical_paths: dict[str, Any] = field(default_factory=dict)  # pipeline -> tracing.PathSummary (as a dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"]["failure_ratio"] = round(self.latency.failure_ratio, 6)
        data["passed"] = not self.violations
        return data


def format_summary(summary: Summary) -> str:
    s = summary.latency
    header = ["Requests", "Failures", "RPS", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    values = [
        str(s.requests),
        f"{s.failures} ({s.failure_ratio:.2%})",
        f"{s.rps:.1f}",
        f"{s.p50_ms:g}",
        f"{s.p95_ms:g}",
        f"{s.p99_ms:g}",
        f"{s.max_ms:g}",
    ]
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    lines = [
        f"Load test of '{summary.pipeline}' over {summary.protocol} at {summary.url}: {summary.users} users, "
        f"{summary.shape} shape"
        + (f", {summary.run_time_s} s" if summary.run_time_s else "")
        + (f", {summary.workers} workers" if summary.workers else ""),
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join(v.ljust(w) for v, w in zip(values, widths)),
    ]
    if s.stream is not None:
        lines += [format_stream(s.stream)]
    for reason in s.failure_reasons[:10]:
        lines.append(f"  failure x{reason['occurrences']}: {reason['error']}")
    if summary.models is not None:
        lines += ["", format_table(summary.models)]
    if summary.critical_paths:
        from toolkit.observe.tracing import PathStep, PathSummary, format_critical_paths

        summaries = {
            name: PathSummary(**{**data, "steps": [PathStep(**step) for step in data["steps"]]})
            for name, data in summary.critical_paths.items()
        }
        lines += ["", format_critical_paths(summaries)]
    for violation in summary.violations:
        lines.append(f"FAILED: {violation}")
    return "\n".join(lines)


def critical_paths(collector: Any) -> dict[str, Any]:
    """Per pipeline, the critical path of the traced requests of the run (after the exporters' last
    batches arrived: Triton sends every second, the runtime every half second)."""
    from toolkit.observe.tracing import summarize_critical_paths

    time.sleep(1.2)  # at least one export period after the last request
    collector.settle()
    return {name: asdict(summary) for name, summary in summarize_critical_paths(collector.traces().values()).items()}


def _append_html(report: Path, section: str) -> None:
    text = report.read_text(encoding="utf-8")
    at = text.rfind("</body>")  # the last one: locust's inlined scripts contain the string too
    text = text[:at] + section + text[at:] if at >= 0 else text + section
    report.write_text(text, encoding="utf-8")


def _write_outputs(options: LoadTestOptions, runner: LocustRunner, summary: Summary) -> None:
    if options.csv_prefix:
        target = Path(options.csv_prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        for produced in runner.run_dir.glob(f"{runner.csv_prefix.name}_*.csv"):
            shutil.copyfile(produced, f"{target}{produced.name[len(runner.csv_prefix.name) :]}")
    if options.html:
        if runner.html_path.exists():
            if summary.models is not None:
                _append_html(runner.html_path, to_html(summary.models))
            Path(options.html).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(runner.html_path, options.html)
    if options.json_path:
        Path(options.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json_path).write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")


# --- the whole run --------------------------------------------------------------------------------


def preflight(options: LoadTestOptions) -> Signature:
    """Everything that can be wrong before load is sent: options, server, pipeline, data file."""
    options.check()
    signature, _ = prepare_requests(options.url, options.protocol, options.pipeline, options.data)
    if options.ttft_p95_slo_ms is not None:
        check_ttft_slo(options.ttft_p95_slo_ms, streams(options.url, options.protocol, signature), options.pipeline)
    return signature


def run_loadtest(
    options: LoadTestOptions,
    echo: Callable[[str], None] = print,
    run_dir: Optional[Path] = None,
) -> Summary:
    """Check, run locust, report; raise SloViolation (after writing every output) when a gate breaks."""
    signature = preflight(options)
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="compound-loadtest-"))
    before = fetch_stats(options.url, options.protocol)
    cache_before = cachestats.scrape(options.metrics_url)  # None: no cache columns
    runner = LocustRunner(options, run_dir)
    if options.traces is not None:
        options.traces.clear()
    with runner:
        if options.ui:
            echo(
                f"Locust dashboard: {runner.web_url} (target {runner.host}, pipeline '{options.pipeline}'); "
                "Ctrl-C to stop"
            )
            try:
                runner.wait(timeout=None)
            except KeyboardInterrupt:
                echo("Stopping locust...")
        else:
            grace = (
                STARTUP_TIMEOUT_S + SHUTDOWN_GRACE_S + STOP_TIMEOUT_S + (STARTUP_TIMEOUT_S if options.workers else 0)
            )
            runner.wait(timeout=(options.run_time_s or 0) + grace)
    latency = read_result(runner.result_path, runner.csv_prefix)
    try:
        after = fetch_stats(options.url, options.protocol)
        table = breakdown(options.pipeline, before, after, list(signature.composing))
        cache_after = cachestats.scrape(options.metrics_url) if cache_before is not None else None
        if cache_before is not None and cache_after is not None:
            cache = cachestats.figures(cache_before, cache_after, after, options.cache_steps)
            table = replace(table, cache=cache)
        models: Optional[Breakdown] = table
    except CompoundError as exc:  # the server died during the run: still report what locust saw
        echo(f"warning: no per-model breakdown: {exc}")
        models = None
    paths = critical_paths(options.traces) if options.traces is not None else {}
    summary = Summary(
        pipeline=options.pipeline,
        protocol=options.protocol,
        url=strip_scheme(options.url),
        shape=options.shape,
        users=options.users,
        workers=options.workers,
        run_time_s=options.run_time_s,
        latency=latency,
        models=models,
        violations=gate(latency, options.p95_slo_ms, options.max_failure_ratio)
        + stream_gate(latency.stream, options.ttft_p95_slo_ms),
        run_dir=str(run_dir),
        critical_paths=paths,
    )
    _write_outputs(options, runner, summary)
    echo(format_summary(summary))
    if summary.violations:
        raise SloViolation("load test gate failed: " + "; ".join(summary.violations))
    return summary
