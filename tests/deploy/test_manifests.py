"""Kubernetes, KServe and compose manifests, offline: schemas (strict), rendered overlays, and
the promises between them (probes, drain timing, ports, selectors, settings)."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.deploy.conftest import ROOT, tool

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes still commonly run, and the newest the schemas know.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
GRACE_DEFAULT = Settings.model_fields["grace_period_seconds"].default
# KServe's ComponentExtensionSpec: the predictor's fields that are not a PodSpec's.
KSERVE_EXTENSION_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_is_valid_kubernetes(overlay: str, version: str) -> None:
    docs = render(overlay)
    assert sorted(d["kind"] for d in docs) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    for doc in docs:
        validate(doc, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_complete_manifest_file_is_valid_kubernetes(version: str) -> None:
    """Base resources one by one (overlay patches are partial: they are checked rendered, above)."""
    files = [p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"]
    assert len(files) == 4
    for path in files:
        for doc in load(path):
            validate(doc, version)


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = by_kind(render("cpu"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container(broken)["readinesProbe"] = container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, VERSIONS[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_drain_and_grace_period_fit_together(overlay: str) -> None:
    deployment = by_kind(render(overlay), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    port_names = {p["name"] for p in c["ports"]}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"]["path"] == path, probe
        assert c[probe]["httpGet"]["port"] in port_names, probe
    # Readiness through gRPC's health service: SERVING exactly when /readyz is 200 (tests/service/grpc).
    assert c["readinessProbe"]["grpc"]["port"] == grpc_container_port(c) == image_port("SEQSERVE_GRPC_PORT")
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # imports (CUDA's too) before listening
    [command] = [c["lifecycle"]["preStop"]["exec"]["command"]]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = float(env(c).get("SEQSERVE_GRACE_PERIOD_SECONDS", GRACE_DEFAULT))
    # The endpoints drop the pod during preStop; the server drains within its grace period after
    # SIGTERM; the kubelet's SIGKILL comes only after terminationGracePeriodSeconds.
    assert pre_stop >= 3
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert "command" not in c and "args" not in c  # the image's entrypoint, as in compose and KServe
    assert pod["securityContext"]["runAsNonRoot"] is True


LIVENESS_PATHS = {"/healthz", "/v2/health/live"}
"""Answered once the process listens, whatever its models do."""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_broken_model_entry_keeps_a_pod_unready_but_never_restarts_it(overlay: str) -> None:
    """Strict readiness (the default) keeps /readyz 503 while any version failed to load: only the
    readiness probe may ask it. Probes that restart a container on failure must not, or a broken
    entry is a restart loop; the rollout waits instead, and its deadline reports it."""
    assert Settings.model_fields["strict_readiness"].default is True
    deployment = by_kind(render(overlay), "Deployment")
    c = container(deployment)
    assert c["readinessProbe"]["grpc"]["port"] == grpc_container_port(c)  # gRPC health: the /readyz contract
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in LIVENESS_PATHS, probe
    assert deployment["spec"]["progressDeadlineSeconds"] >= 300
    for manifest in KSERVE_MANIFESTS:
        [isvc] = load(K8S / "kserve" / manifest)
        [kserve] = isvc["spec"]["predictor"]["containers"]
        for probe in ("startupProbe", "livenessProbe"):
            if probe in kserve:
                assert kserve[probe]["httpGet"]["path"] in LIVENESS_PATHS, probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_pdb_and_monitoring_select_the_deployment(overlay: str) -> None:
    docs = render(overlay)
    deployment = by_kind(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    c = container(deployment)
    service = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert sorted(ports) == ["grpc", "http"]
    for port in ports.values():
        assert port["targetPort"] in {p["name"] for p in c["ports"]}
    port = ports["http"]
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == c["ports"][0]["containerPort"] == image_port()
    [monitor] = load(K8S / "monitoring" / "servicemonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [(port["name"], "/metrics")]


def test_gpu_overlay_differs_from_cpu_only_in_image_device_gpu_and_sizes() -> None:
    cpu, gpu = (container(by_kind(render(o), "Deployment")) for o in OVERLAYS)
    assert cpu["image"] == "seqserve:cpu" and gpu["image"] == "seqserve:gpu"
    assert "nvidia.com/gpu" not in str(cpu)
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert env(gpu) == {**env(cpu), "SEQSERVE_DEVICE": "cuda"}
    same = {k for k in cpu if k not in ("image", "resources", "env", "startupProbe")}
    assert {k: cpu[k] for k in same} == {k: gpu[k] for k in same}
    gpu_pod = by_kind(render("gpu"), "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]


KSERVE_MANIFESTS = ("inferenceservice.yaml", "inferenceservice-grpc.yaml")
"""KServe exposes one port per predictor: HTTP (http1), or gRPC (h2c) with HTTP kept for liveness."""


@pytest.mark.parametrize("manifest", KSERVE_MANIFESTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_kserve_inference_service_predictor_is_a_valid_pod_spec(version: str, manifest: str) -> None:
    [isvc] = load(K8S / "kserve" / manifest)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}
    validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": pod_spec}, version
    )
    [c] = predictor["containers"]
    assert c["name"] == "kserve-container"  # the name KServe routes to
    [port] = c["ports"]
    if port["name"] == "h2c":  # gRPC: readiness through gRPC's health service, liveness over HTTP
        assert int(env(c)["SEQSERVE_GRPC_PORT"]) == port["containerPort"] == c["readinessProbe"]["grpc"]["port"]
        assert c["livenessProbe"]["httpGet"]["port"] == int(env(c)["SEQSERVE_PORT"]) == 8080
    else:
        assert int(env(c)["SEQSERVE_PORT"]) == port["containerPort"] == 8080
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    grace = float(env(c).get("SEQSERVE_GRACE_PERIOD_SECONDS", GRACE_DEFAULT))
    assert predictor["terminationGracePeriodSeconds"] > grace
    assert predictor["minReplicas"] <= predictor["maxReplicas"]


def test_compose_runs_replicas_behind_the_shared_nginx_config() -> None:
    compose_dir = ROOT / "deploy" / "compose"
    [compose] = load(compose_dir / "compose.yaml")
    server, lb = compose["services"]["seqserve"], compose["services"]["lb"]
    assert server["deploy"]["replicas"] >= 2
    assert "command" not in server and "entrypoint" not in server  # the image's entrypoint
    grace = float(server["environment"].get("SEQSERVE_GRACE_PERIOD_SECONDS", GRACE_DEFAULT))
    assert float(server["stop_grace_period"].rstrip("s")) > grace
    assert server["expose"] == [str(image_port()), str(image_port("SEQSERVE_GRPC_PORT"))]
    health = " ".join(server["healthcheck"]["test"])  # gRPC's health service: SERVING when /readyz is 200
    assert "grpc_health.v1" in health and f"127.0.0.1:{image_port('SEQSERVE_GRPC_PORT')}" in health
    mounts = {v.split(":")[1]: (compose_dir / v.split(":")[0]).resolve() for v in lb["volumes"]}
    assert mounts["/etc/nginx/conf.d/default.conf"] == ROOT / "deploy" / "nginx" / "seqserve.conf"
    for path in mounts.values():
        assert path.is_file(), path
    replicas = (compose_dir / "seqserve-replicas.conf").read_text()
    assert f"server seqserve:{image_port()} " in replicas
    for port in lb["ports"]:
        assert port.startswith("127.0.0.1:")


def test_every_seqserve_variable_in_a_manifest_is_a_setting() -> None:
    names: set[str] = set()
    for path in [*K8S.rglob("*.yaml"), ROOT / "deploy" / "compose" / "compose.yaml"]:
        names.update(re.findall(r"\bSEQSERVE_[A-Z_]+\b", path.read_text()))
    assert names
    for name in names:
        assert name.removeprefix("SEQSERVE_").lower() in Settings.model_fields, name


def test_nginx_retries_every_failed_try_of_a_post_on_another_replica() -> None:
    conf = (ROOT / "deploy" / "nginx" / "seqserve.conf").read_text()
    [retry] = re.findall(r"^\s*proxy_next_upstream (.*);", conf, re.M)
    assert set(retry.split()) >= {"error", "timeout", "http_502", "http_503", "http_504", "non_idempotent"}
    assert re.search(r"^\s*proxy_next_upstream_tries [2-9];", conf, re.M)
    assert re.search(r"^\s*keepalive \d+;", conf, re.M)


def image_port(name: str = "SEQSERVE_PORT") -> int:
    match = re.search(rf"\b{name}=(\d+)", (ROOT / "Dockerfile").read_text())
    assert match
    return int(match.group(1))


def grpc_container_port(c: dict[str, Any]) -> int:
    [port] = [p["containerPort"] for p in c["ports"] if p["name"] in ("grpc", "h2c")]
    return int(port)


@pytest.mark.parametrize("version", VERSIONS)
def test_streams_overlay_points_every_replica_at_its_redis(version: str) -> None:
    """overlays/streams: the base plus Redis for stream state; SEQSERVE_STATE_URL names Redis's Service and port."""
    docs = render("streams")
    for doc in docs:
        validate(doc, version)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    url = env(container(deployments["seqserve"]))["SEQSERVE_STATE_URL"]
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url)
    assert match, url
    redis_service = services[match.group(1)]
    assert int(match.group(2)) in [p["port"] for p in redis_service["spec"]["ports"]]
    redis = deployments[match.group(1)]
    assert redis_service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    args = container(redis)["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # an evicted stream would be a lost one
    base = {d["kind"]: d for d in render("cpu") if d["kind"] != "Deployment"}
    assert {
        k: d
        for k, d in ((d["kind"], d) for d in docs if d["metadata"]["name"] == "seqserve" and d["kind"] != "Deployment")
    } == base


def test_compose_replicas_share_stream_state_in_redis() -> None:
    [compose] = load(ROOT / "deploy" / "compose" / "compose.yaml")
    server, redis = compose["services"]["seqserve"], compose["services"]["redis"]
    assert server["environment"]["SEQSERVE_STATE_URL"] == "redis://redis:6379/0"
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "6379" in redis["expose"] and "noeviction" in redis["command"]
