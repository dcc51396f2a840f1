"""Kubernetes manifests, checked offline against the real schemas: Kubernetes' own (kubernetes-validate,
pinned version) and the CRDs of KEDA, Prometheus Operator and KServe (../shared/crds)."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from toolkit.core.errors import CompoundError
from toolkit.observe.dashboard import panel_queries
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.docker import context_tag, image_flavor, ngc_tag, render_build_context
from toolkit.targets.kubernetes import (
    DASHBOARD_FILE,
    KubernetesDeployment,
    KubernetesOptions,
    k8s_name,
    render_manifests,
    write_manifests,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SPEC = ROOT / "examples" / "textdemo" / "pipeline.yaml"
CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"
K8S_VERSION = "1.30.0"  # a release most managed clusters still run; bump with the support window
BASE = "compound-base:bookworm"


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("k8s-repos")
    return {device: render_repository(plan_spec(EXAMPLE_SPEC, device), root / device) for device in ("cpu", "gpu")}  # type: ignore[arg-type]


def documents(files: dict[str, str]) -> list[dict[str, Any]]:
    return [
        doc
        for name, text in sorted(files.items())
        if name != "kustomization.yaml" and name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The Triton deployment's objects by kind (the Envoy balancer's: tests/unit/test_kubernetes_balancer.py)."""
    return {doc["kind"]: doc for doc in documents(files) if not doc["metadata"]["name"].endswith(("-envoy", "-pods"))}


def crd_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """The CRD's openAPIV3Schema for that served version, made strict: unknown fields are errors
    (a real API server would silently prune them, hiding a typo)."""
    if not CRDS.is_dir():
        pytest.skip(f"CRD schemas not found at {CRDS}")
    group, version = api_version.split("/")
    for path, crd in _crds().items():
        if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
            continue
        for served in crd["spec"]["versions"]:
            if served["name"] == version and served.get("served", True):
                return jsonschema.Draft7Validator(_strict(copy.deepcopy(served["schema"]["openAPIV3Schema"])))
        pytest.fail(f"{path.name} serves no version {version} of {kind}")
    pytest.fail(f"no CRD for {kind} ({api_version}) in {CRDS}")


@functools.lru_cache(maxsize=1)
def _crds() -> dict[Path, dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KServe CRD is 2 MB of YAML
    return {path: yaml.load(path.read_text(), Loader=loader) for path in sorted(CRDS.glob("*.yaml"))}  # noqa: S506 - safe loader


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for item in schema:
            _strict(item)
    return schema


def validate_cr(doc: dict[str, Any]) -> None:
    errors = sorted(crd_validator(doc["kind"], doc["apiVersion"]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{doc['kind']} {'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_deployment_and_service_validate_against_kubernetes_schema(repos: dict[str, Path]) -> None:
    for repo in repos.values():
        kinds = by_kind(render_manifests(repo, KubernetesOptions(name="textdemo", base_image=BASE)))
        for kind in ("Deployment", "Service"):
            kubernetes_validate.validate(kinds[kind], K8S_VERSION, strict=True)  # raises on any problem


def test_custom_resources_validate_against_their_crds(repos: dict[str, Path]) -> None:
    plain = render_manifests(
        repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE, monitor_labels={"release": "prometheus"})
    )
    kserve = render_manifests(repos["gpu"], KubernetesOptions(name="textdemo", base_image=BASE, kserve=True))
    checked = []
    for doc in documents(plain) + documents(kserve):
        if doc["apiVersion"] in ("v1", "apps/v1"):
            continue
        validate_cr(doc)
        checked.append(doc["kind"])
    assert sorted(checked) == ["InferenceService", "PodMonitor", "ScaledObject", "ServingRuntime"]


def test_gpu_limits_only_when_a_model_is_kind_gpu(repos: dict[str, Path]) -> None:
    gpu = by_kind(render_manifests(repos["gpu"], KubernetesOptions(name="textdemo", base_image=BASE, gpus_per_pod=2)))
    pod = gpu["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    cpu = render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE))
    assert "nvidia.com/gpu" not in "".join(cpu.values())


def test_probes_and_ports_match_triton(repos: dict[str, Path]) -> None:
    kinds = by_kind(render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE)))
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    args = container["args"]
    assert (
        args[args.index("--model-repository") + 1] == "/models" and args[args.index("--strict-readiness") + 1] == "true"
    )
    assert {p["name"]: p["port"] for p in kinds["Service"]["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_pod_runs_unprivileged_with_a_read_only_root(repos: dict[str, Path]) -> None:
    """The hardened default: non-root, no privilege escalation, no capabilities, seccomp, and a read-only
    root file system with emptyDirs where Triton writes (/tmp, /dev/shm)."""
    for device, repo in repos.items():
        deployment = by_kind(render_manifests(repo, KubernetesOptions(name="textdemo", base_image=BASE)))["Deployment"]
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, device
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 1000 and security["runAsGroup"] == 1000 and security["fsGroup"] == 1000
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        container = pod["containers"][0]
        hardened = container["securityContext"]
        assert hardened["allowPrivilegeEscalation"] is False
        assert hardened["privileged"] is False
        assert hardened["readOnlyRootFilesystem"] is True
        assert hardened["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(mounts) == {"/tmp", "/dev/shm"}
        assert "emptyDir" in volumes[mounts["/tmp"]] and volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert {"name": "HOME", "value": "/tmp"} in container["env"]  # the home folder is read-only
    runtime = by_kind(render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE, kserve=True)))
    validate_cr(runtime["ServingRuntime"])
    kserve = runtime["ServingRuntime"]["spec"]["containers"][0]
    assert kserve["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {m["mountPath"] for m in kserve["volumeMounts"]} == {"/tmp", "/dev/shm"}
    assert {v["name"] for v in runtime["ServingRuntime"]["spec"]["volumes"]} == {"dshm", "tmp"}


def test_the_image_runs_as_the_uid_the_pod_asks_for() -> None:
    """runAsNonRoot can only be checked against a numeric USER; both flavors must end with the same one."""
    for base in (BASE, "nvcr.io/nvidia/tritonserver:24.10-py3"):
        dockerfile = render_build_context(base)["Dockerfile"].decode()
        assert dockerfile.rstrip().splitlines()[-1] == "USER 1000:1000", base
        assert "useradd --uid 1000" in dockerfile
    entry = render_build_context(BASE)["tritonserver.sh"].decode()
    assert 'LD_LIBRARY_PATH="@PYTHON_LIBDIR@:/opt/compound/libs' in entry  # the build writes the path in
    assert 'sed -i "s|@PYTHON_LIBDIR@|$libdir|"' in render_build_context(BASE)["Dockerfile"].decode()


def test_scaling_queries_are_per_model_promql(repos: dict[str, Path]) -> None:
    scaled = by_kind(
        render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", namespace="serving", base_image=BASE))
    )["ScaledObject"]
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert scaled["spec"]["scaleTargetRef"]["name"] == "textdemo"
    for trigger in triggers.values():
        assert trigger["type"] == "prometheus"
        promql_parser.parse(trigger["metadata"]["query"])  # raises on a syntax error
    queue = triggers["queue-wait-us"]
    query = queue["metadata"]["query"]
    assert queue["metricType"] == "Value"  # a latency does not divide across replicas
    assert "sum by (model) (rate(nv_inference_queue_duration_us{" in query and "nv_inference_request_success" in query
    assert 'namespace="serving"' in query and 'pod=~"textdemo-[a-z0-9]+-[a-z0-9]+"' in query
    assert 'model=~"sentiment|tok|topic|verdict"' in query  # components only: ensembles queue ~0 µs themselves
    assert triggers["pending-requests"]["metricType"] == "AverageValue"
    assert "nv_inference_pending_request_count" in triggers["pending-requests"]["metadata"]["query"]


def test_options_and_switches(repos: dict[str, Path]) -> None:
    bare = render_manifests(
        repos["cpu"],
        KubernetesOptions(
            name="Text_Demo",
            base_image=BASE,
            autoscale=False,
            monitor=False,
            balancer=False,
            image="registry.example/td:1",
        ),
    )
    assert sorted(bare) == ["deployment.yaml", "kustomization.yaml", "secret.yaml", "service.yaml"]
    assert yaml.safe_load(bare["kustomization.yaml"])["resources"] == ["deployment.yaml", "secret.yaml", "service.yaml"]
    assert by_kind(bare)["Deployment"]["metadata"]["name"] == "text-demo"
    assert by_kind(bare)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/td:1"
    assert k8s_name("9lives") == "compound-9lives"
    with pytest.raises(CompoundError, match="--min-replicas"):
        render_manifests(repos["cpu"], KubernetesOptions(name="x", base_image=BASE, min_replicas=5, max_replicas=2))


def test_baked_image_tag_follows_the_repository(repos: dict[str, Path]) -> None:
    cpu = render_build_context(BASE, repository=repos["cpu"])
    gpu = render_build_context(BASE, repository=repos["gpu"])
    assert "repository/classify/config.pbtxt" in cpu and b"COPY repository/ /models/" in cpu["Dockerfile"]
    assert context_tag("compound-textdemo", cpu) != context_tag("compound-textdemo", gpu)
    assert context_tag("compound-textdemo", cpu) == context_tag(
        "compound-textdemo", render_build_context(BASE, repository=repos["cpu"])
    )
    ngc = render_build_context("nvcr.io/nvidia/tritonserver:24.10-py3")
    assert (
        image_flavor("nvcr.io/nvidia/tritonserver:24.10-py3") == "ngc"
        and b"/opt/tritonserver/bin/tritonserver" in ngc["tritonserver.sh"]
    )
    assert image_flavor(BASE) == "pytriton" and b"nvidia-pytriton==" in cpu["Dockerfile"]
    assert (ngc_tag("2.42.0"), ngc_tag("2.51.0"), ngc_tag("2.53.0")) == ("24.01", "24.10", "24.12")


def test_kustomize_builds_the_folder_offline(repos: dict[str, Path], tmp_path: Path) -> None:
    """`kubectl apply --dry-run=client` needs a cluster for discovery; `kubectl kustomize` does not."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    files = render_manifests(repos["gpu"], KubernetesOptions(name="textdemo", base_image=BASE))
    out = write_manifests(files, tmp_path / "manifests")
    built = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built.stdout) if d)
    triton = ["ConfigMap", "Deployment", "PodMonitor", "ScaledObject", "Secret", "Service"]
    balancer = ["ConfigMap", "Deployment", "Service"]  # Envoy's configuration and pods, the headless Service
    assert kinds == sorted(triton + balancer)


def test_no_reachable_cluster_is_a_clear_error(
    repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    deployment = KubernetesDeployment(
        repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE), manifests_dir=tmp_path / "m"
    )
    with pytest.raises(CompoundError, match="no Kubernetes cluster is reachable") as failure:
        deployment.start()
    assert "--dry-run" in str(failure.value)


def test_the_key_comes_from_a_secret_and_the_runtime_runs_beside_triton(repos: dict[str, Path], tmp_path: Path) -> None:
    """Restricted APIs in the pod: the key in a Secret (written 0600), read by tritonserver's args through
    the environment, and by the adaptive runtime's sidecar, which sees the server's stubs (shared
    process namespace) and fills the pod's CPU request."""
    options = KubernetesOptions(name="textdemo", base_image=BASE, image="registry.example/td:1", cpu="1500m")
    files = render_manifests(repos["cpu"], options)
    secret = by_kind(files)["Secret"]
    key = secret["stringData"]["api-key"]
    assert len(key) >= 24 and secret["metadata"]["name"] == "textdemo-key"
    pod = by_kind(files)["Deployment"]["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    triton, runtime = pod["containers"]
    key_env = {"name": "COMPOUND_API_KEY", "valueFrom": {"secretKeyRef": {"name": "textdemo-key", "key": "api-key"}}}
    assert key_env in triton["env"] and key_env in runtime["env"]
    assert any(
        a.startswith("--http-restricted-api=") and a.endswith("compound-key=$(COMPOUND_API_KEY)")
        for a in triton["args"]
    )
    assert key not in files["deployment.yaml"]  # only in the Secret
    assert runtime["command"] == ["/usr/local/bin/compound-runtime"] and runtime["args"][0] == "--inline"
    config = json.loads(runtime["args"][1])
    assert config["cores"] == 1.5 and config["stubs"] == "proc" and config["repository"] == "/models"
    assert "api_key" not in config
    assert runtime["securityContext"]["readOnlyRootFilesystem"] is True
    written = write_manifests(files, tmp_path / "m")
    assert stat.S_IMODE((written / "secret.yaml").stat().st_mode) == 0o600
    context = render_build_context(BASE, repository=repos["cpu"])
    assert (
        "compound/toolkit/runtime/supervisor.py" in context
        and b"COPY compound/ /opt/compound/app/" in context["Dockerfile"]
    )
    assert b"toolkit.runtime.supervisor" in context["runtime.sh"]
    plain = render_manifests(
        repos["cpu"], KubernetesOptions(name="t", base_image=BASE, image="x:1", runtime=False, restrict_apis=False)
    )
    assert (
        "secret.yaml" not in plain and len(by_kind(plain)["Deployment"]["spec"]["template"]["spec"]["containers"]) == 1
    )


def test_dry_run_says_when_the_image_it_names_was_never_built(repos: dict[str, Path], tmp_path: Path) -> None:
    """`--dry-run` without --image must not promise that `kubectl apply -k` will work as is."""
    from click.testing import CliRunner

    from toolkit.cli.main import cli

    out = tmp_path / "k8s"
    runner = CliRunner()
    args = ["deploy", str(repos["cpu"]), "--target", "kubernetes", "--dry-run", "--manifests-dir", str(out)]
    result = runner.invoke(cli, [*args, "--base-image", BASE])
    assert result.exit_code == 0, result.output
    assert "which --dry-run did not build or push" in result.output and "pass --image" in result.output
    named = runner.invoke(cli, [*args, "--image", "registry.example/td:1"])
    assert named.exit_code == 0 and "did not build" not in named.output
    assert "next: kubectl apply -k" in named.output


def test_an_image_that_may_not_be_built_is_explained_without_a_flag_that_does_not_exist(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    deployment = KubernetesDeployment(
        repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE), manifests_dir=tmp_path / "m", build=False
    )
    with pytest.raises(CompoundError, match="no --image given") as failure:
        deployment._build_image()
    assert "--no-build" not in str(failure.value) and "--image" in str(failure.value)


def test_a_new_repository_rolls_the_pods_one_by_one(repos: dict[str, Path], tmp_path: Path) -> None:
    """`compound update --target kubernetes`: the pod template names the repository's digest, and the
    rollout never takes a serving pod away before its replacement is ready."""
    import shutil

    options = KubernetesOptions(name="textdemo", base_image=BASE)
    before = yaml.safe_load(render_manifests(repos["cpu"], options)["deployment.yaml"])
    assert before["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    changed = tmp_path / "repo"
    shutil.copytree(repos["cpu"], changed)
    config = changed / "tok" / "config.pbtxt"
    config.write_text(config.read_text().replace('\\"width\\": 16', '\\"width\\": 8'))
    after = yaml.safe_load(render_manifests(changed, options)["deployment.yaml"])
    key = "io.compound/repository-digest"
    assert (
        after["spec"]["template"]["metadata"]["annotations"][key]
        != before["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_the_dashboard_is_rendered_beside_the_manifests_with_the_scaledobjects_selector(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    files = render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", namespace="serving", base_image=BASE))
    dashboard = json.loads(files[DASHBOARD_FILE])
    config_map = by_kind(files)["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar loads
    assert json.loads(config_map["data"]["textdemo.json"]) == dashboard
    assert "grafana-dashboard.yaml" in yaml.safe_load(files["kustomization.yaml"])["resources"]
    assert DASHBOARD_FILE not in yaml.safe_load(files["kustomization.yaml"])["resources"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["pipeline"]["allValue"] == "classify|sentiment_only"
    assert variables["component"]["allValue"] == "sentiment|tok|topic|verdict"
    queries = panel_queries(dashboard, "1m")
    assert len(queries) == len(dashboard["panels"]) >= 8
    for title, exprs in queries.items():
        for expr in exprs:
            promql_parser.parse(expr)  # raises on a syntax error
            assert "$" not in expr, f"{title}: a variable left unexpanded in {expr}"
            assert 'namespace="serving",pod=~"textdemo-[a-z0-9]+-[a-z0-9]+"' in expr  # the ScaledObject's pods
    bare = render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE, monitor=False))
    assert DASHBOARD_FILE not in bare and "grafana-dashboard.yaml" not in bare
    out = write_manifests(files, tmp_path / "manifests")
    assert (out / DASHBOARD_FILE).is_file()
    write_manifests(bare, out)
    assert not (out / DASHBOARD_FILE).exists()  # an earlier render's dashboard is not left behind


def test_tracing_in_the_manifests(repos: dict[str, Path]) -> None:
    """--otlp-endpoint reaches Triton's arguments, the server's environment (the runtime's own spans)
    and the runtime sidecar, in the plain manifests and KServe's alike."""
    options = KubernetesOptions(name="textdemo", base_image=BASE, otlp_endpoint="http://otel.monitoring:4318")
    pod = by_kind(render_manifests(repos["cpu"], options))["Deployment"]["spec"]["template"]["spec"]
    server, runtime = pod["containers"][0], pod["containers"][1]
    assert "mode=opentelemetry" in server["args"]
    assert "opentelemetry,url=http://otel.monitoring:4318/v1/traces" in server["args"]
    env = {item["name"]: item.get("value") for item in server["env"]}
    assert env["COMPOUND_OTLP_ENDPOINT"] == "http://otel.monitoring:4318"
    assert '"otlp_endpoint": "http://otel.monitoring:4318"' in runtime["args"][1]
    kserve = render_manifests(
        repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE, kserve=True, otlp_endpoint="http://otel:4318")
    )
    assert "COMPOUND_OTLP_ENDPOINT" in kserve["kserve.yaml"] and "mode=opentelemetry" in kserve["kserve.yaml"]
    plain = by_kind(render_manifests(repos["cpu"], KubernetesOptions(name="textdemo", base_image=BASE)))
    assert "mode=opentelemetry" not in plain["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
