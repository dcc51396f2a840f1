"""--otlp-endpoint in either form people write it (the collector's base URL, or its /v1/traces URL
as Triton's trace config and most collectors' docs give it) reaches Triton, the runtime inside the
server and the adaptive runtime as the same collector: Triton gets base/v1/traces, the runtimes the
base (they append the path themselves)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from toolkit.cli.main import cli
from toolkit.core.errors import CompoundError
from toolkit.observe.tracing import SpanCollector
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.kubernetes import KubernetesOptions, pod_runtime_config
from toolkit.targets.settings import DeployRequest, Tracing, check_otlp_endpoint

ROOT = Path(__file__).resolve().parents[2]
FORMS = ["{base}", "{base}/", "{base}/v1/traces", "{base}/v1/traces/", " {base}/v1/traces "]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("base", ["http://127.0.0.1:4318", "https://gateway.example/otel"])
def test_both_forms_name_the_same_collector(base: str, form: str) -> None:
    given = form.format(base=base)
    assert check_otlp_endpoint(given) == base
    tracing = Tracing(given, 1, "textdemo")
    assert tracing.endpoint == base and tracing.traces_url == f"{base}/v1/traces"
    assert f"opentelemetry,url={base}/v1/traces" in tracing.server_args()
    assert tracing.environment()["COMPOUND_OTLP_ENDPOINT"] == base
    request = DeployRequest(repository=Path("repo"), name="textdemo", otlp_endpoint=given)
    assert request.otlp_endpoint == base  # what the adaptive runtime is handed (toolkit/deployment/deployment.py)
    assert request.server_options()["tracing"] == tracing
    pod = pod_runtime_config("textdemo", KubernetesOptions(name="textdemo", otlp_endpoint=given))
    assert pod["otlp_endpoint"] == base


@pytest.mark.parametrize("bad", ["127.0.0.1:4318", "grpc://collector:4317", "http://", "http:///v1/traces", ""])
def test_what_is_no_url_is_still_refused(bad: str) -> None:
    with pytest.raises(CompoundError, match="--otlp-endpoint") as refused:
        Tracing(bad)
    assert "/v1/traces" in (refused.value.hint or "")


@pytest.mark.parametrize("suffix", ["", "/v1/traces"])
def test_the_runtime_exports_to_the_collector_from_either_form(suffix: str) -> None:
    """templates/tracing.py appends /v1/traces to COMPOUND_OTLP_ENDPOINT; the receiver serves only
    that path (404 elsewhere), so a doubled path would lose every span."""
    module_spec = importlib.util.spec_from_file_location("compound_tracing_forms", ROOT / "templates" / "tracing.py")
    assert module_spec is not None and module_spec.loader is not None
    runtime = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(runtime)
    with SpanCollector() as collector:
        environment = Tracing(collector.endpoint + suffix, 1, "unit").environment()
        runtime.configure(environment["COMPOUND_OTLP_ENDPOINT"], "unit")
        with runtime.root_span("runtime scale", model="tok"):
            pass
        runtime.flush()
        spans = collector.spans()
    assert [s.name for s in spans] == ["runtime scale"] and spans[0].service == "unit"


def test_deploy_takes_the_traces_url(tmp_path: Path) -> None:
    """The flag as most collectors' docs write it: the manifests name the collector once, not the
    path twice (Kubernetes --dry-run renders Triton's arguments and both runtimes' settings)."""
    repo = render_repository(plan_spec(ROOT / "examples" / "textdemo" / "pipeline.yaml"), tmp_path / "repo")
    out = tmp_path / "k8s"
    args = ["deploy", str(repo), "--target", "kubernetes", "--dry-run", "--manifests-dir", str(out)]
    result = CliRunner().invoke(
        cli, [*args, "--image", "registry.example/td:1", "--otlp-endpoint", "http://otel:4318/v1/traces"]
    )
    assert result.exit_code == 0, result.output
    texts = [p.read_text() for p in sorted(out.glob("*.yaml"))]
    assert not any("/v1/traces/v1/traces" in text for text in texts)
    deployments = [d for text in texts for d in yaml.safe_load_all(text) if d and d.get("kind") == "Deployment"]
    (deployment,) = [d for d in deployments if not d["metadata"]["name"].endswith("-envoy")]  # not the Envoy balancer
    server, runtime = deployment["spec"]["template"]["spec"]["containers"][:2]
    assert "opentelemetry,url=http://otel:4318/v1/traces" in server["args"]
    assert {e["name"]: e.get("value") for e in server["env"]}["COMPOUND_OTLP_ENDPOINT"] == "http://otel:4318"
    assert json.loads(runtime["args"][-1])["otlp_endpoint"] == "http://otel:4318"  # the adaptive runtime's
