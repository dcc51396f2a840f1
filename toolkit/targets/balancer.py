"""The Kubernetes target's L7 balancer: Envoy in front of the Triton pods.

A gRPC client keeps one HTTP/2 connection; a ClusterIP Service balances connections, so all of a
client's requests reach one pod and pods KEDA adds get no traffic from clients already connected.
Envoy balances each request instead, finding the pods through a headless Service (one DNS address per
ready pod). Rendered from templates/k8s/envoy.yaml.j2 (its configuration) and envoy-deployment.yaml.j2
(ConfigMap, headless Service, Deployment); the public Service then selects the Envoy pods.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import jinja2

ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"
ADMIN_PORT = 9901  # loopback only
PROBE_PORT = 9902  # the kubelet's probes of the Envoy pods

# What Envoy retries on another pod: only failures where the pod gave no answer (or, for gRPC, said
# UNAVAILABLE before any response: stopping, a model not loaded, a queue timeout's rejection).
RETRY_HTTP = "reset,connect-failure,refused-stream"
RETRY_GRPC = "reset,connect-failure,refused-stream,unavailable"
RETRY_METRICS = "reset,connect-failure"


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    cluster: str
    retry_on: str
    comment: str


@dataclass(frozen=True)
class Cluster:
    name: str
    port: int
    http2: bool
    comment: str


LISTENERS = (
    Listener("http", 8000, "triton_http", RETRY_HTTP, "Triton's HTTP/REST port, as clients know it"),
    Listener("grpc", 8001, "triton_grpc", RETRY_GRPC, "Triton's gRPC port: every call balanced on its own"),
    Listener(
        "metrics",
        8002,
        "triton_metrics",
        RETRY_METRICS,
        "one pod's Prometheus metrics per request (for `kubectl port-forward`; Prometheus scrapes every pod "
        "itself, through the PodMonitor)",
    ),
)
CLUSTERS = (
    Cluster("triton_http", 8000, False, "the Triton pods' HTTP port (HTTP/1.1, what Triton's HTTP server speaks)"),
    Cluster("triton_grpc", 8001, True, "the Triton pods' gRPC port (HTTP/2)"),
    Cluster("triton_metrics", 8002, False, "the Triton pods' metrics port"),
)


def balancer_values(
    env: jinja2.Environment,
    values: dict[str, Any],
    *,
    image: str,
    replicas: int,
    cluster_domain: str = "cluster.local",
) -> dict[str, Any]:
    """The templates' values for the balancer, its configuration rendered (and hashed: a new one rolls
    the Envoy pods), added to the manifests' `values` (name, namespace, labels, version, source)."""
    name, namespace = values["name"], values["namespace"]
    pods_service = f"{name}-pods"
    envoy_selector = {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/instance": name}
    balancer: dict[str, Any] = {
        "balancer": True,
        "envoy_name": f"{name}-envoy",
        "envoy_selector": envoy_selector,
        "envoy_labels": {
            **envoy_selector,
            "app.kubernetes.io/component": "balancer",
            "app.kubernetes.io/part-of": name,
            "app.kubernetes.io/managed-by": "compound",
            "app.kubernetes.io/version": values["labels"].get("app.kubernetes.io/version", ""),
        },
        "pods_service": pods_service,
        "pods_host": f"{pods_service}.{namespace}.svc.{cluster_domain}",
        "envoy_image": image,
        "envoy_replicas": replicas,
        "envoy_admin_port": ADMIN_PORT,
        "envoy_probe_port": PROBE_PORT,
        "envoy_listeners": LISTENERS,
        "envoy_clusters": CLUSTERS,
        "envoy_buffer_bytes": 4 * 1024 * 1024,
        "envoy_idle_timeout_s": 300,
        "envoy_request_timeout_s": 300,
        "envoy_retries": 2,
        "envoy_dns_refresh_s": 5,
        "envoy_connect_timeout_s": 1,
        "envoy_max_requests": 100_000,
        "envoy_retry_budget_percent": 20.0,
        "envoy_health_interval_s": 5,
        "envoy_drain_s": 15,
        "envoy_cpu": "500m",
        "envoy_memory": "256Mi",
    }
    config = env.get_template("k8s/envoy.yaml.j2").render({**values, **balancer})
    balancer["envoy_config"] = config.rstrip("\n")
    balancer["envoy_config_digest"] = hashlib.sha256(config.encode()).hexdigest()[:16]
    return balancer
