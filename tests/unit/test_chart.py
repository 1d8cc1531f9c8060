"""The Helm chart: helm lint, helm template, and what the rendered objects grant and select.

Needs the helm binary: $GLOWPLUG_HELM, or the one `make binaries` builds into
~/.cache/glowplug/bin/helm-<version>/helm. Without it the helm tests skip, saying so, and fail
under CI=true.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ci import cannot_run

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "glowplug"
NAMESPACE = "glowplug-system"


def helm_binary() -> Path | None:
    if os.environ.get("GLOWPLUG_HELM"):
        return Path(os.environ["GLOWPLUG_HELM"])
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    cache_dir = Path(os.environ.get("GLOWPLUG_CACHE", Path.home() / ".cache" / "glowplug"))
    path = cache_dir / "bin" / f"helm-{versions['HELM_VERSION']}" / "helm"
    return path if path.exists() else None


HELM = helm_binary()


@pytest.fixture
def helm_available() -> None:
    if HELM is None:
        cannot_run("no helm binary: set GLOWPLUG_HELM or run `make binaries`")


needs_helm = pytest.mark.usefixtures("helm_available")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    assert HELM.is_file(), f"GLOWPLUG_HELM={HELM} is not a file: point it at a helm binary"
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=False
    )


@cache
def render(*sets: str, include_crds: bool = False) -> tuple[dict[str, Any], ...]:
    args = ["template", "glowplug", str(CHART), "--namespace", NAMESPACE]
    for value in sets:
        args += ["--set", value]
    if include_crds:
        args.append("--include-crds")
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_chart_carries_an_exact_copy_of_the_crd() -> None:
    source = (ROOT / "crds" / "modelserver.yaml").read_bytes()
    copy = (CHART / "crds" / "modelserver.yaml").read_bytes()
    assert copy == source, "run: cp crds/modelserver.yaml charts/glowplug/crds/modelserver.yaml"


def test_the_dashboard_is_valid_json_and_uses_the_operator_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "glowplug.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "glowplug_modelserver_ready_replicas",
        "glowplug_modelserver_cold_start_seconds",
        "glowplug_optimization_rollbacks_total",
        "glowplug_optimization_state",
    ):
        assert metric in exprs
    rollbacks = next(p for p in dashboard["panels"] if "rollbacks" in p["title"].lower())
    assert "by (flag" in rollbacks["targets"][0]["expr"]
    # The worker's own metric (scraped through the PodMonitor), by the name the worker exports.
    from glowplug_worker.serve.metrics import Metrics

    phases = next(p for p in dashboard["panels"] if "phases" in p["title"].lower())
    exported = {m.name for m in Metrics().registry.collect()}
    assert "glowplug_worker_startup_phase_seconds" in exported
    assert "glowplug_worker_startup_phase_seconds{" in phases["targets"][0]["expr"]


@needs_helm
def test_helm_lint_passes_strict() -> None:
    result = helm("lint", str(CHART), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
def test_default_render_has_the_operator_objects_and_no_optional_ones() -> None:
    kinds = sorted(d["kind"] for d in render())
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]


@needs_helm
def test_default_is_two_replicas_electing_a_leader_on_a_lease() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = env_of(docs)
    assert env["GLOWPLUG_LEADER_ELECTION"] == "true"
    assert env["GLOWPLUG_LEASE_NAMESPACE"] == NAMESPACE
    assert env["GLOWPLUG_LEASE_NAME"] == "glowplug"
    assert env["GLOWPLUG_LEASE_SECONDS"] == "8"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    identity = next(e for e in container["env"] if e["name"] == "GLOWPLUG_IDENTITY")
    assert identity["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@needs_helm
def test_the_lease_role_lets_the_operator_take_and_renew_its_lease_only() -> None:
    docs = render()
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = role["rules"]
    assert allows(rules, "coordination.k8s.io", "leases", "create")
    named = [r for r in rules if "get" in r["verbs"]]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["glowplug"],
            "verbs": ["get", "update"],
        }
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]


@needs_helm
def test_the_disruption_budget_keeps_one_operator_pod() -> None:
    docs = render()
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@needs_helm
def test_one_replica_without_election_recreates_and_has_no_budget_or_lease() -> None:
    docs = render("replicaCount=1", "leaderElection.enabled=false")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "GLOWPLUG_LEADER_ELECTION" not in env_of(docs)
    assert not [d for d in docs if d["kind"] in ("PodDisruptionBudget", "Role", "RoleBinding")]


@needs_helm
def test_two_replicas_without_election_are_refused() -> None:
    result = helm("template", "glowplug", str(CHART), "--set", "leaderElection.enabled=false")
    assert result.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in result.stderr


@needs_helm
def test_include_crds_renders_the_modelserver_crd() -> None:
    crd = one(render(include_crds=True), "CustomResourceDefinition")
    source = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
    assert crd == source


# (apiGroup, resource, verb) the operator needs: kopf's watches and annotations, status,
# server-side apply of the children, pod observation, events, and kopf's discovery.
NEEDED = [("glowplug.dev", "modelservers", verb) for verb in ("get", "list", "watch")] + [
    ("glowplug.dev", "modelservers/status", "patch"),
    ("glowplug.dev", "modelservers/finalizers", "update"),
    *[
        (group, resource, verb)
        for group, resource in (
            ("apps", "deployments"),
            ("", "services"),
            ("", "persistentvolumeclaims"),
            ("policy", "poddisruptionbudgets"),
        )
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
    ],
    *[("", "pods", verb) for verb in ("get", "list", "watch")],
    ("", "pods/log", "get"),  # a stock engine's own start phases
    ("", "events", "create"),
]
# Cluster-scoped: kopf lists the namespaces and watches the CRD.
NEEDED_CLUSTER = [
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    *[("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")],
    *[("storage.k8s.io", "storageclasses", verb) for verb in ("list", "watch")],
]
# What nothing in the operator uses (tests/e2e/test_rbac.py runs it with exactly these rules).
UNUSED = [
    ("", "pods/status", "get"),
    ("", "events", "patch"),
    ("events.k8s.io", "events", "create"),
]


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules
    )


@needs_helm
@pytest.mark.parametrize(("group", "resource", "verb"), NEEDED + NEEDED_CLUSTER)
def test_rbac_grants_what_the_operator_needs(group: str, resource: str, verb: str) -> None:
    assert allows(one(render(), "ClusterRole")["rules"], group, resource, verb)


@needs_helm
def test_rbac_grants_no_verb_nothing_uses() -> None:
    rules = one(render(), "ClusterRole")["rules"]
    assert [need for need in UNUSED if allows(rules, *need)] == []


@needs_helm
def test_a_namespaced_install_grants_roles_in_those_namespaces_only() -> None:
    docs = render("namespaces={ml,serving}")
    cluster = one(docs, "ClusterRole")["rules"]
    assert all(allows(cluster, *need) for need in NEEDED_CLUSTER)
    assert [need for need in NEEDED if allows(cluster, *need)] == []
    # (the leader election's Role for its Lease in the release namespace is tested on its own)
    watched = [d for d in docs if not d["metadata"]["name"].endswith("-leader-election")]
    roles = {d["metadata"]["namespace"]: d for d in watched if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in watched if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"ml", "serving"}
    account = one(docs, "ServiceAccount")["metadata"]
    for namespace, role in roles.items():
        assert all(allows(role["rules"], *need) for need in NEEDED), namespace
        assert [need for need in UNUSED if allows(role["rules"], *need)] == []
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
        ]
    assert env_of(docs)["GLOWPLUG_NAMESPACES"] == "ml,serving"


@needs_helm
def test_rbac_grants_no_wildcards_no_secrets_and_no_spec_writes_beyond_patch() -> None:
    rules = one(render(), "ClusterRole")["rules"]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), rule
    assert not any(allows(rules, "", "secrets", v) for v in ("get", "list", "watch"))
    assert not allows(rules, "glowplug.dev", "modelservers", "delete")
    assert not allows(rules, "glowplug.dev", "modelservers", "create")


@needs_helm
def test_the_binding_gives_the_role_to_the_operators_service_account() -> None:
    docs = render()
    binding = one(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")["metadata"]
    deployment = one(docs, "Deployment")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


@needs_helm
def test_selectors_are_stable_and_match_the_pods() -> None:
    docs = render("serviceMonitor.enabled=true")
    deployment = one(docs, "Deployment")
    match = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    for selector in (
        match,
        service["spec"]["selector"],
        monitor["spec"]["selector"]["matchLabels"],
    ):
        assert "helm.sh/chart" not in selector
        assert "app.kubernetes.io/version" not in selector
        assert selector.items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "glowplug"
        assert labels["app.kubernetes.io/instance"] == "glowplug"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


@needs_helm
def test_operator_pod_meets_the_restricted_pod_security_profile() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True
        assert "add" not in context["capabilities"]


@needs_helm
def test_liveness_probe_hits_kopfs_health_endpoint() -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8080


@needs_helm
def test_default_settings_reach_the_operator_environment() -> None:
    env = env_of(render())
    assert env["GLOWPLUG_NAMESPACES"] == "", "empty means all namespaces"
    assert env["GLOWPLUG_HOST_PATH_PREFIXES"] == "", "empty refuses HostPath caches"
    assert env["GLOWPLUG_METRICS_PORT"] == "9090"
    assert env["GLOWPLUG_LOG_LEVEL"] == "INFO"
    assert env["GLOWPLUG_DEFAULT_BUDGET_SECONDS"] == "900"
    assert env["GLOWPLUG_WORKER_IMAGE"] == "ghcr.io/glowplug/worker:0.1.0"
    assert env["GLOWPLUG_PREFETCH_IMAGE"] == "ghcr.io/glowplug/prefetch:0.1.0"
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/glowplug/operator:0.1.0"


@needs_helm
def test_values_change_the_environment_ports_and_images() -> None:
    docs = render(
        "namespaces={ml,research}",
        "metrics.port=9300",
        "logLevel=DEBUG",
        "defaultBudgetSeconds=1800",
        "worker.image.repository=registry.example/worker",
        "worker.image.tag=v2",
        "prefetch.image.repository=registry.example/prefetch",
        "image.tag=v3",
        "hostPathPrefixes={/var/cache/models,/mnt/nvme}",
    )
    env = env_of(docs)
    assert env["GLOWPLUG_NAMESPACES"] == "ml,research"
    assert env["GLOWPLUG_HOST_PATH_PREFIXES"] == "/var/cache/models,/mnt/nvme"
    assert env["GLOWPLUG_METRICS_PORT"] == "9300"
    assert env["GLOWPLUG_LOG_LEVEL"] == "DEBUG"
    assert env["GLOWPLUG_DEFAULT_BUDGET_SECONDS"] == "1800"
    assert env["GLOWPLUG_WORKER_IMAGE"] == "registry.example/worker:v2"
    assert env["GLOWPLUG_PREFETCH_IMAGE"] == "registry.example/prefetch:0.1.0"
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":v3")
    assert {"name": "metrics", "containerPort": 9300, "protocol": "TCP"} in container["ports"]
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 9300


@needs_helm
def test_grafana_dashboard_configmap_when_enabled() -> None:
    configmap = one(render("grafanaDashboard.enabled=true"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["glowplug.json"])
    assert dashboard["uid"] == "glowplug-modelservers"


@needs_helm
def test_service_monitor_scrapes_the_metrics_port_when_enabled() -> None:
    monitor = one(render("serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


@needs_helm
@pytest.mark.parametrize(
    ("namespaces", "selector"), [("", {"any": True}), ("{ml}", {"matchNames": ["ml"]})]
)
def test_pod_monitor_scrapes_the_model_server_pods_the_operator_builds(
    namespaces: str, selector: dict[str, Any]
) -> None:
    """The PodMonitor's selector, port and relabeling fit the Deployment the operator renders
    for examples/modelserver.yaml (the worker serves /metrics on its `http` port)."""
    from tests.unit.test_builders import deployment, example

    sets = ["podMonitor.enabled=true"] + ([f"namespaces={namespaces}"] if namespaces else [])
    monitor = one(render(*sets), "PodMonitor")
    pod = deployment(example("modelserver"))["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == selector
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    worker = next(c for c in pod["spec"]["containers"] if c["name"] == "worker")
    assert endpoint["port"] in {p["name"] for p in worker["ports"]}
    assert endpoint["path"] == "/metrics"
    (relabel,) = endpoint["relabelings"]
    label = relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
    assert {k.replace(".", "_").replace("/", "_") for k in pod["metadata"]["labels"]} >= {label}
    assert relabel["targetLabel"] == "modelserver"


@needs_helm
def test_no_pod_monitor_unless_enabled() -> None:
    assert not [d for d in render() if d["kind"] == "PodMonitor"]


@needs_helm
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("metrics.port=80", "/metrics/port"),
        ("metrics.port=8080", "/metrics/port"),
        ("logLevel=VERBOSE", "/logLevel"),
        ("namespaces=ml", "/namespaces"),
        ("namespaces={Not_A_Namespace}", "/namespaces/0"),
        ("defaultBudgetSeconds=5", "/defaultBudgetSeconds"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("serviceMonitor.interval=often", "/serviceMonitor/interval"),
        ("metricsPort=9090", "additional properties 'metricsPort'"),
        ("replicaCount=0", "/replicaCount"),
        ("leaderElection.leaseSeconds=1", "/leaderElection/leaseSeconds"),
    ],
)
def test_values_schema_refuses_bad_values_naming_them(value: str, says: str) -> None:
    result = helm("template", "glowplug", str(CHART), "--set", value)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert says in result.stderr
