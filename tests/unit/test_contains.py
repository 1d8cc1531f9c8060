"""objects.contains(live, wanted): does the live object already hold what the operator would
apply? True means no write. A converged ModelServer must give True for the children as the API
server returns them (defaults added, quantities as strings), and any drift must give False."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from glowplug_operator.builders import Owner, build_deployment, build_service
from glowplug_operator.controller.objects import contains
from glowplug_operator.settings import Settings
from glowplug_operator.spec import parse_spec

Manifest = dict[str, Any]
OWNER = Owner("llama", "ml", "uid-1")


def spec_body(**spec: Any) -> Manifest:
    spec.setdefault("model", {"source": "hf://org/name"})
    spec.setdefault("resources", {"gpus": 1, "memory": "16Gi", "cpu": "4"})
    spec.setdefault("startup", {"optimizations": [{"name": "fast-load"}]})
    return {"metadata": {"name": "llama", "namespace": "ml"}, "spec": spec}


def wanted_deployment(**spec: Any) -> Manifest:
    parsed = parse_spec(spec_body(**spec))
    names = [f.name for f in parsed.startup.optimizations]
    return build_deployment(OWNER, parsed, Settings(), names, "0123456789abcdef")


def _stringify_quantities(resources: Manifest) -> None:
    for part in ("limits", "requests"):
        for key, value in resources.get(part, {}).items():
            resources[part][key] = str(value)


def _drop_empty_env_values(container: Manifest) -> None:
    for var in container.get("env", []):
        if var.get("value") == "":
            del var["value"]  # EnvVar.value is `omitempty`


def as_served(manifest: Manifest) -> Manifest:
    """The object as a GET returns it after the operator applied `manifest`: server fields and
    defaults added, quantities serialized as strings, empty strings of omitempty fields gone."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(
        uid="c0ffee",
        resourceVersion="4711",
        generation=3,
        creationTimestamp="2026-11-25T12:00:00Z",
        managedFields=[{"manager": "glowplug", "operation": "Apply"}],
    )
    live["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "2"
    if live["kind"] == "Service":
        live["spec"].update(
            clusterIP="10.96.0.12",
            clusterIPs=["10.96.0.12"],
            sessionAffinity="None",
            ipFamilies=["IPv4"],
            internalTrafficPolicy="Cluster",
        )
    if live["kind"] == "Deployment":
        pod = live["spec"]["template"]["spec"]
        pod.update(
            restartPolicy="Always",
            dnsPolicy="ClusterFirst",
            schedulerName="default-scheduler",
            serviceAccountName="default",
        )
        for container in pod["initContainers"] + pod["containers"]:
            container.setdefault("imagePullPolicy", "IfNotPresent")
            _stringify_quantities(container.get("resources", {}))
            _drop_empty_env_values(container)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    container[probe].setdefault("successThreshold", 1)
                    container[probe]["httpGet"].setdefault("scheme", "HTTP")
        live["status"] = {"replicas": 1, "readyReplicas": 1, "observedGeneration": 3}
    return live


class TestContains:
    @pytest.mark.parametrize(
        "wanted",
        [
            wanted_deployment(),
            wanted_deployment(replicas=3, resources={"gpus": 2}, serving={"port": 8080}),
            build_service(OWNER, parse_spec(spec_body())),
        ],
        ids=["deployment", "deployment-2-gpus", "service"],
    )
    def test_a_converged_child_needs_no_write(self, wanted: Manifest) -> None:
        assert contains(as_served(wanted), wanted)

    DRIFT: list[tuple[str, Callable[[Manifest], Any]]] = [
        ("replicas", lambda d: d["spec"].update(replicas=5)),
        ("image", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="x:1")),
        (
            "flags-annotation",
            lambda d: d["spec"]["template"]["metadata"]["annotations"].update(
                {"glowplug.dev/optimizations": ""}
            ),
        ),
        ("label-removed", lambda d: d["metadata"]["labels"].pop("app.kubernetes.io/instance")),
        (
            "gpu-limit",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
                {"nvidia.com/gpu": "2"}
            ),
        ),
        (
            "env-value",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"][0].update(
                value="background-import"
            ),
        ),
        (
            "env-var-removed",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].pop(),
        ),
        (
            "sidecar-added",
            lambda d: d["spec"]["template"]["spec"]["containers"].append(
                {"name": "sidecar", "image": "busybox"}
            ),
        ),
        ("volume-removed", lambda d: d["spec"]["template"]["spec"]["volumes"].pop()),
        (
            "bool-flipped",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
                allowPrivilegeEscalation=True
            ),
        ),
        ("field-gone", lambda d: d["spec"]["template"]["spec"].pop("securityContext")),
    ]

    @pytest.mark.parametrize(("what", "drift"), DRIFT, ids=[d[0] for d in DRIFT])
    def test_drift_is_corrected(self, what: str, drift: Callable[[Manifest], Any]) -> None:
        wanted = wanted_deployment()
        live = as_served(wanted)
        drift(live)
        assert not contains(live, wanted)

    @pytest.mark.parametrize(
        ("live", "wanted", "same"),
        [
            ({"nvidia.com/gpu": "1"}, {"nvidia.com/gpu": 1}, True),
            ({"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": 1}, False),
            ({"containerPort": 8000}, {"containerPort": "8000"}, True),
            ({"a": 1, "added": "by server"}, {"a": 1}, True),
            ({"a": None}, {"a": {"b": 1}}, False),
            ({}, {"a": 1}, False),
            ({"a": [1, 2]}, {"a": [1, 2]}, True),
            ({"a": [1, 2, 3]}, {"a": [1, 2]}, False),
            ({"a": [1]}, {"a": [1, 2]}, False),
            ({"a": [2, 1]}, {"a": [1, 2]}, False),
            ({"a": [{"x": 1, "y": 2}]}, {"a": [{"x": 1}]}, True),
            ({"a": {}}, {"a": {}}, True),
        ],
        ids=[
            "int-vs-string-quantity",
            "different-quantity",
            "string-vs-int",
            "server-added-field",
            "null-vs-object",
            "missing-field",
            "same-list",
            "longer-list",
            "shorter-list",
            "reordered-list",
            "server-defaults-in-list-items",
            "empty-object",
        ],
    )
    def test_value_by_value(self, live: Manifest, wanted: Manifest, same: bool) -> None:
        assert contains(live, wanted) is same

    @pytest.mark.parametrize(
        "startup",
        [{}, {"optimizations": [{"name": "no-v1", "env": {"VLLM_USE_V1": ""}}]}],
        ids=["no-flags", "custom-flag-empty-value"],
    )
    def test_empty_env_values_need_no_write(self, startup: Manifest) -> None:
        wanted = wanted_deployment(startup=startup)
        assert contains(as_served(wanted), wanted)

    @pytest.mark.parametrize(
        ("field", "written", "canonical"),
        [("cpu", "0.5", "500m"), ("memory", "1.5Gi", "1536Mi"), ("memory", "2048Mi", "2Gi")],
    )
    def test_quantities_in_canonical_form_are_the_same(
        self, field: str, written: str, canonical: str
    ) -> None:
        wanted = wanted_deployment(resources={"gpus": 1, field: written})
        live = as_served(wanted)
        pod = live["spec"]["template"]["spec"]
        for container in pod["initContainers"] + pod["containers"]:
            for part in container["resources"].values():
                if field in part:
                    part[field] = canonical
        assert contains(live, wanted)
