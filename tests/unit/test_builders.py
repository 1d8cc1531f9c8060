"""The pure builders: a ModelServer (as a user writes it) + settings + effective flags in, the
manifests the operator applies out.

Golden files (tests/data/golden/) hold two rendered Deployments for review. After a deliberate
change to the builders, regenerate them and review the diff:

    GLOWPLUG_UPDATE_GOLDEN=1 uv run pytest tests/unit/test_builders.py -k golden
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from glowplug_operator.builders import (
    Owner,
    build_cache_claim,
    build_deployment,
    build_disruption_budget,
    build_service,
    endpoint,
    label_selector,
    startup_probe_timing,
)
from glowplug_operator.cache import host_path_problem, model_dir
from glowplug_operator.settings import Settings, SettingsError
from glowplug_operator.spec import InvalidSpec, ModelServerSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
SETTINGS = Settings()
UID = "0b5c1f6e-0000-4000-8000-000000000001"  # placeholder for the API server's metadata.uid
HASH = "0123456789abcdef"  # placeholder for contract.flag_set_hash(...)
TERMINATION_PATH = "/dev/termination-log"
Manifest = dict[str, Any]


# --- inputs, as a user writes them -------------------------------------------------------------


def example(name: str) -> Manifest:
    """One of examples/*.yaml, as `kubectl apply -f` would send it (in namespace ml)."""
    body: Manifest = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    body["metadata"]["namespace"] = "ml"
    body["metadata"]["uid"] = UID
    return body


BUILTIN_EXAMPLES = ("modelserver", "embedding", "custom-flag-vllm")
ENGINE_EXAMPLES = ("engine-vllm", "engine-sglang", "engine-transformers-serve", "engine-custom")
EXAMPLES = BUILTIN_EXAMPLES + ENGINE_EXAMPLES


def body(**spec: Any) -> Manifest:
    """A minimal ModelServer named llama in namespace ml; keyword arguments are spec fields."""
    spec.setdefault("model", {"source": "hf://org/name"})
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "llama", "namespace": "ml", "uid": UID},
        "spec": spec,
    }


def owner_of(raw: Manifest) -> Owner:
    meta = raw["metadata"]
    return Owner(meta["name"], meta["namespace"], meta["uid"])


def all_flags(spec: ModelServerSpec) -> list[str]:
    return [f.name for f in spec.startup.optimizations]


def deployment(
    raw: Manifest,
    effective: Sequence[str] | None = None,
    *,
    settings: Settings = SETTINGS,
    flags_hash: str = HASH,
    trial: str | None = None,
) -> Manifest:
    """The Deployment for `raw`; all of the spec's flags are effective unless told otherwise."""
    spec = parse_spec(raw)
    names = all_flags(spec) if effective is None else effective
    return build_deployment(owner_of(raw), spec, settings, names, flags_hash, trial)


# --- reading the output, as kubectl would show it ----------------------------------------------


def pod_spec(dep: Manifest) -> Manifest:
    spec: Manifest = dep["spec"]["template"]["spec"]
    return spec


def prefetch(dep: Manifest) -> Manifest:
    *_, container = pod_spec(dep)["initContainers"]  # a HostPath cache's cache-owner first
    assert container["name"] == "prefetch"
    return container


def worker(dep: Manifest) -> Manifest:
    (container,) = pod_spec(dep)["containers"]
    assert container["name"] == "worker"
    return container


def containers(dep: Manifest) -> list[Manifest]:
    return [prefetch(dep), worker(dep)]


def env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def volume(dep: Manifest, name: str) -> Manifest:
    return next(v for v in pod_spec(dep)["volumes"] if v["name"] == name)


def mount(container: Manifest, name: str) -> Manifest:
    return next(m for m in container["volumeMounts"] if m["name"] == name)


def option(args: Sequence[str], name: str) -> str:
    return args[list(args).index(name) + 1]


def template_annotations(dep: Manifest) -> dict[str, str]:
    return dep["spec"]["template"]["metadata"]["annotations"]


def template_labels(dep: Manifest) -> dict[str, str]:
    return dep["spec"]["template"]["metadata"]["labels"]


# --- Pod Security Standards, "restricted" profile (the rules that apply to what we render) ------

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: Manifest) -> list[str]:
    """What the PodSecurity admission would reject under `restricted` (policy v1.30+)."""
    problems: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"spec.{flag}")
    for volume_ in pod.get("volumes", []):
        kinds = set(volume_) - {"name"}
        for kind in kinds - ALLOWED_VOLUMES:
            problems.append(f"volume {volume_['name']}: {kind}")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for kind in ("initContainers", "containers"):
        for container in pod.get(kind, []):
            where = f"{kind} {container['name']}"
            ctx = container.get("securityContext") or {}
            if ctx.get("privileged"):
                problems.append(f"{where}: privileged")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            caps = ctx.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where}: capabilities must drop ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                problems.append(f"{where}: capabilities.add beyond NET_BIND_SERVICE")
            non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
            if non_root is not True:
                problems.append(f"{where}: runAsNonRoot must be true")
            if ctx.get("runAsUser") == 0:
                problems.append(f"{where}: runAsUser 0")
            seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
            if any(p.get("hostPort") for p in container.get("ports", [])):
                problems.append(f"{where}: hostPort")
    return problems


CACHES: dict[str, Manifest] = {
    "EmptyDir": {"kind": "EmptyDir", "size": "20Gi"},
    "PersistentVolumeClaim": {"kind": "PersistentVolumeClaim", "size": "40Gi"},
    "existingClaim": {"kind": "PersistentVolumeClaim", "existingClaim": "shared-weights"},
    "HostPath": {"kind": "HostPath", "hostPath": "/var/lib/glowplug"},
}


class TestDeployment:
    # -- the cache volume, shared by the two containers

    @pytest.mark.parametrize("cache", CACHES.values(), ids=CACHES.keys())
    def test_prefetch_writes_where_the_worker_reads(self, cache: Manifest) -> None:
        dep = deployment(body(cache=cache))
        init, serve = prefetch(dep), worker(dep)
        expected = {"name": "cache", "mountPath": "/models"}
        assert mount(init, "cache") == mount(serve, "cache") == expected
        dest = option(init["args"], "--dest")
        assert dest == option(serve["args"], "--model")
        assert dest.startswith("/models/")

    @pytest.mark.parametrize("cache", CACHES.values(), ids=CACHES.keys())
    def test_overlap_download_moves_the_prefetch_into_the_worker(self, cache: Manifest) -> None:
        raw = body(cache=cache, startup={"optimizations": [{"name": "overlap-download"}]})
        with_init = prefetch(deployment(raw, effective=[]))
        dep = deployment(raw)
        init = [c["name"] for c in pod_spec(dep).get("initContainers", [])]
        assert init == (["cache-owner"] if cache["kind"] == "HostPath" else [])
        serve = worker(dep)
        # The worker runs exactly the prefetcher's arguments, and serves where they publish.
        download = shlex.split(option(serve["args"], "--download"))
        assert download == with_init["args"][1:]
        assert option(download, "--dest") == option(serve["args"], "--model")
        assert mount(serve, "cache") == mount(with_init, "cache")
        assert {"name": "GLOWPLUG_OPTIMIZATIONS", "value": "overlap-download"} in serve["env"]
        # ... and the worker's own parser takes that command line.
        from glowplug_worker.serve.cli import build_parser, validate

        options = validate(build_parser().parse_args(serve["args"][1:]))
        assert options is not None and options.source.raw == "hf://org/name"

    def test_cache_mount_path_comes_from_settings(self) -> None:
        dep = deployment(body(), settings=Settings(cache_mount_path="/weights"))
        for container in containers(dep):
            assert mount(container, "cache")["mountPath"] == "/weights"
            assert env(container)["HF_HOME"] == "/weights/.hf"
        assert option(worker(dep)["args"], "--model").startswith("/weights/")

    @pytest.mark.parametrize(
        ("cache", "source"),
        [
            (CACHES["EmptyDir"], {"emptyDir": {"sizeLimit": "20Gi"}}),
            ({"kind": "EmptyDir"}, {"emptyDir": {}}),
            (
                CACHES["PersistentVolumeClaim"],
                {"persistentVolumeClaim": {"claimName": "llama-cache"}},
            ),
            (CACHES["existingClaim"], {"persistentVolumeClaim": {"claimName": "shared-weights"}}),
            (
                CACHES["HostPath"],
                {"hostPath": {"path": "/var/lib/glowplug", "type": "DirectoryOrCreate"}},
            ),
        ],
        ids=["EmptyDir", "EmptyDir-unbounded", "PVC", "existingClaim", "HostPath"],
    )
    def test_cache_volume_follows_the_cache_kind(self, cache: Manifest, source: Manifest) -> None:
        assert volume(deployment(body(cache=cache)), "cache") == {"name": "cache", **source}

    # -- GPUs, shared memory

    @pytest.mark.parametrize("gpus", [0, 1, 4])
    def test_only_the_worker_asks_for_gpus(self, gpus: int) -> None:
        dep = deployment(body(resources={"gpus": gpus, "memory": "16Gi", "cpu": 4}))
        limits = worker(dep)["resources"]["limits"]
        assert limits.get("nvidia.com/gpu") == (gpus or None)
        init = prefetch(dep)["resources"]
        assert "nvidia.com/gpu" not in {**init.get("limits", {}), **init.get("requests", {})}
        for container in containers(dep):
            assert container["resources"]["limits"]["memory"] == "16Gi"
            assert "cpu" not in container["resources"]["limits"]  # imports are not throttled
            assert container["resources"]["requests"] == {"memory": "16Gi", "cpu": "4"}

    @pytest.mark.parametrize("cache", CACHES.values(), ids=CACHES.keys())
    def test_a_large_claim_is_not_chowned_on_every_start(self, cache: Manifest) -> None:
        # fsGroup alone makes the kubelet walk and chown every file of the volume on each start.
        ctx = pod_spec(deployment(body(cache=cache)))["securityContext"]
        assert ctx["fsGroup"] == ctx["runAsGroup"]
        assert ctx["fsGroupChangePolicy"] == "OnRootMismatch"

    def test_the_worker_keeps_serving_until_endpoints_stop_routing_to_it(self) -> None:
        # SIGTERM only after a preStop pause, and the pause plus the worker's drain fit in the
        # grace period: a rollout (every flag trial is one) does not cut requests off.
        dep = deployment(body())
        pre_stop = worker(dep)["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = 25  # the worker's --drain-seconds default
        assert pre_stop >= 5
        assert pre_stop + drain < pod_spec(dep)["terminationGracePeriodSeconds"]

    def test_dev_shm_is_an_in_memory_volume_of_the_worker(self) -> None:
        dep = deployment(body())
        assert mount(worker(dep), "dshm")["mountPath"] == "/dev/shm"
        assert volume(dep, "dshm")["emptyDir"]["medium"] == "Memory"

    # -- probes

    @pytest.mark.parametrize(
        ("spec_budget", "default_budget", "budget"),
        [
            (30, 900, 30),
            (59, 900, 59),
            (60, 900, 60),
            (601, 900, 601),
            (86400, 900, 86400),
            (None, 900, 900),
            (None, 1234, 1234),
        ],
    )
    def test_startup_probe_covers_the_budget(
        self, spec_budget: int | None, default_budget: int, budget: int
    ) -> None:
        startup: Manifest = {} if spec_budget is None else {"budgetSeconds": spec_budget}
        settings = Settings(default_budget_seconds=default_budget)
        probe = worker(deployment(body(startup=startup), settings=settings))["startupProbe"]
        # The worker holds a not-ready answer up to 0.9 s: the probe sees the start end at once.
        assert probe["httpGet"] == {"path": "/ready?wait=0.9", "port": "http"}
        assert probe["timeoutSeconds"] > 0.9 * probe["periodSeconds"]
        window = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget <= window < budget + probe["periodSeconds"]

    def test_readiness_and_liveness_probes(self) -> None:
        serve = worker(deployment(body(serving={"port": 8080})))
        assert serve["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert serve["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert serve["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        assert option(serve["args"], "--port") == "8080"
        assert "livenessProbe" not in prefetch(deployment(body()))

    def test_progress_deadline_leaves_room_for_the_startup_budget(self) -> None:
        dep = deployment(body(startup={"budgetSeconds": 600}))
        assert dep["spec"]["progressDeadlineSeconds"] > 600

    @pytest.mark.parametrize(
        ("rollout", "expected"),
        [
            (None, {"maxSurge": 1, "maxUnavailable": 0}),
            ({"maxSurge": 0, "maxUnavailable": 1}, {"maxSurge": 0, "maxUnavailable": 1}),
            ({"maxUnavailable": "50%"}, {"maxSurge": 1, "maxUnavailable": "50%"}),
        ],
        ids=["default-surges-one-pod", "in-place-on-a-full-cluster", "percentage"],
    )
    def test_the_rolling_update_is_spec_rollout(
        self, rollout: Manifest | None, expected: Manifest
    ) -> None:
        dep = deployment(body() if rollout is None else body(rollout=rollout))
        assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": expected}

    # -- the termination report

    def test_both_containers_report_through_the_termination_message(self) -> None:
        for container in containers(deployment(body())):
            assert container["terminationMessagePath"] == TERMINATION_PATH
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
            assert env(container)["GLOWPLUG_TERMINATION_PATH"] == TERMINATION_PATH

    # -- PodSecurity

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_examples_pass_the_restricted_profile(self, name: str) -> None:
        assert restricted_violations(pod_spec(deployment(example(name)))) == []

    @pytest.mark.parametrize("cache", CACHES.values(), ids=CACHES.keys())
    def test_host_path_is_the_only_exception_and_only_when_asked(self, cache: Manifest) -> None:
        problems = restricted_violations(pod_spec(deployment(body(cache=cache))))
        expected = []
        if cache["kind"] == "HostPath":  # and the one container that hands the directory over
            expected = [
                "volume cache: hostPath",
                "initContainers cache-owner: capabilities.add beyond NET_BIND_SERVICE",
                "initContainers cache-owner: runAsNonRoot must be true",
                "initContainers cache-owner: runAsUser 0",
            ]
        assert sorted(problems) == sorted(expected)

    def test_a_host_path_directory_is_handed_to_the_pods_user_and_nothing_else(self) -> None:
        # The kubelet creates it root-owned, and fsGroup does not apply to hostPath.
        init = pod_spec(deployment(body(cache=CACHES["HostPath"])))["initContainers"]
        owner = init[0]
        assert [c["name"] for c in init] == ["cache-owner", "prefetch"]
        ctx_pod = pod_spec(deployment(body(cache=CACHES["HostPath"])))["securityContext"]
        uid = ctx_pod["runAsUser"]
        assert owner["command"] == ["chown", f"{uid}:{uid}", "/models"]  # not recursive
        ctx = owner["securityContext"]
        assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"]
        for cache in ("EmptyDir", "PersistentVolumeClaim"):
            names = [
                c["name"] for c in pod_spec(deployment(body(cache=CACHES[cache])))["initContainers"]
            ]
            assert names == ["prefetch"]

    @pytest.mark.parametrize(
        ("breach", "problem"),
        [
            (lambda p: p.update(hostNetwork=True), "spec.hostNetwork"),
            (lambda p: p.update(hostPID=True), "spec.hostPID"),
            (
                lambda p: p["volumes"].append({"name": "x", "hostPath": {"path": "/"}}),
                "volume x: hostPath",
            ),
            (
                lambda p: p["containers"][0]["securityContext"].update(privileged=True),
                "containers worker: privileged",
            ),
            (
                lambda p: p["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
                "initContainers prefetch: allowPrivilegeEscalation must be false",
            ),
            (
                lambda p: p["containers"][0]["securityContext"]["capabilities"].update(
                    add=["SYS_ADMIN"]
                ),
                "containers worker: capabilities.add beyond NET_BIND_SERVICE",
            ),
            (
                lambda p: p["containers"][0]["securityContext"]["capabilities"].pop("drop"),
                "containers worker: capabilities must drop ALL",
            ),
            (
                lambda p: [
                    p["securityContext"].pop("runAsNonRoot"),
                    p["containers"][0]["securityContext"].pop("runAsNonRoot"),
                ],
                "containers worker: runAsNonRoot must be true",
            ),
            (
                lambda p: p["containers"][0]["securityContext"].update(
                    seccompProfile={"type": "Unconfined"}
                ),
                "containers worker: seccompProfile must be RuntimeDefault or Localhost",
            ),
        ],
        ids=[
            "hostNetwork",
            "hostPID",
            "hostPath",
            "privileged",
            "escalation",
            "add-cap",
            "keep-caps",
            "root",
            "unconfined",
        ],
    )
    def test_the_restricted_checker_catches_breaches(
        self, breach: Callable[[Manifest], Any], problem: str
    ) -> None:
        """The checker above is what the two tests before rely on: it must see each breach."""
        pod = copy.deepcopy(pod_spec(deployment(body())))
        breach(pod)
        assert problem in restricted_violations(pod)

    # -- credentials

    def test_credentials_are_referenced_never_copied(self) -> None:
        dep = deployment(example("custom-flag-vllm"))
        assert prefetch(dep)["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
        for container in containers(dep):
            names = {e["name"] for e in container["env"]}
            assert not names & {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY"}
            assert all("valueFrom" not in e for e in container["env"])
        secret_refs = [ref for c in containers(dep) for ref in c.get("envFrom", [])]
        assert json.dumps(dep).count('"hf-token"') == len(secret_refs)  # nowhere else

    def test_only_the_prefetcher_gets_the_credentials(self) -> None:
        assert "envFrom" not in worker(deployment(example("custom-flag-vllm")))

    def test_no_credentials_no_env_from(self) -> None:
        for container in containers(deployment(body())):
            assert "envFrom" not in container

    # -- effective flags

    FLAGS: list[Manifest] = [
        {"name": "prefetch-weights"},
        {"name": "fast-load"},
        {"name": "hf-offline"},
        {"name": "vllm-forkserver", "env": {"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"}},
        {"name": "eager", "args": ["--enforce-eager"], "env": {"VLLM_EAGER": "1"}},
    ]

    @pytest.mark.parametrize(
        ("effective", "annotation", "custom_env", "extra_args"),
        [
            (
                ["prefetch-weights", "fast-load", "hf-offline", "vllm-forkserver", "eager"],
                "prefetch-weights,fast-load,hf-offline,vllm-forkserver,eager",
                {"VLLM_WORKER_MULTIPROC_METHOD": "forkserver", "VLLM_EAGER": "1"},
                ["--enforce-eager"],
            ),
            (
                ["eager", "fast-load", "prefetch-weights"],
                "prefetch-weights,fast-load,eager",
                {"VLLM_EAGER": "1"},
                ["--enforce-eager"],
            ),
            (
                ["vllm-forkserver", "hf-offline"],
                "hf-offline,vllm-forkserver",
                {"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"},
                [],
            ),
            (["fast-load", "not-in-the-spec"], "fast-load", {}, []),
            ([], "", {}, []),
        ],
        ids=["all", "spec-order", "custom-env-only", "unknown-name", "none"],
    )
    def test_the_template_runs_exactly_the_effective_flags(
        self,
        effective: list[str],
        annotation: str,
        custom_env: dict[str, str],
        extra_args: list[str],
    ) -> None:
        raw = body(startup={"optimizations": self.FLAGS})
        dep = deployment(raw, effective, flags_hash="feedc0dedeadbeef")
        assert template_annotations(dep)["glowplug.dev/optimizations"] == annotation
        assert template_labels(dep)["glowplug.dev/optimizations-hash"] == "feedc0dedeadbeef"
        for container in containers(dep):
            assert env(container)["GLOWPLUG_OPTIMIZATIONS"] == annotation
        worker_env = env(worker(dep))
        all_custom = {"VLLM_WORKER_MULTIPROC_METHOD", "VLLM_EAGER"}
        assert {k: v for k, v in worker_env.items() if k in all_custom} == custom_env
        baseline = worker(deployment(raw, []))["args"]
        assert worker(dep)["args"] == baseline + extra_args
        assert ("HF_HUB_OFFLINE" in worker_env) == ("hf-offline" in effective)

    def test_custom_flag_env_reaches_only_the_worker(self) -> None:
        dep = deployment(body(startup={"optimizations": self.FLAGS}))
        assert "VLLM_EAGER" not in env(prefetch(dep))
        assert "--enforce-eager" not in prefetch(dep)["args"]

    def test_later_flag_wins_when_two_set_the_same_variable(self) -> None:
        flags = [
            {"name": "threads-4", "env": {"OMP_NUM_THREADS": "4"}},
            {"name": "threads-8", "env": {"OMP_NUM_THREADS": "8"}},
        ]
        dep = deployment(body(startup={"optimizations": flags}))
        assert env(worker(dep))["OMP_NUM_THREADS"] == "8"
        assert (
            env(worker(deployment(body(startup={"optimizations": flags}), ["threads-4"])))[
                "OMP_NUM_THREADS"
            ]
            == "4"
        )

    def test_hf_offline_sets_hf_hub_offline_on_the_worker(self) -> None:
        raw = body(startup={"optimizations": [{"name": "hf-offline"}]})
        assert env(worker(deployment(raw)))["HF_HUB_OFFLINE"] == "1"
        assert "HF_HUB_OFFLINE" not in env(worker(deployment(raw, [])))

    def test_hf_offline_leaves_the_prefetcher_online(self) -> None:
        dep = deployment(example("modelserver"))  # hf:// source, hf-offline on, EmptyDir cache
        assert "hf-offline" in template_annotations(dep)["glowplug.dev/optimizations"]
        assert "HF_HUB_OFFLINE" not in env(prefetch(dep))

    @pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_HOME", "HOME", "GLOWPLUG_X"])
    def test_a_custom_flag_may_not_override_the_workers_own_env(self, variable: str) -> None:
        # It would silently undo hf-offline, move the caches or change the worker's options.
        flags = [{"name": "hf-offline"}, {"name": "my-cache", "env": {variable: "/scratch"}}]
        with pytest.raises(InvalidSpec, match=rf"optimizations\[1\]\.env: '{variable}': env may"):
            parse_spec(body(startup={"optimizations": flags}))

    def test_env_names_are_unique_across_flags(self) -> None:
        flags = [{"name": "hf-offline"}, {"name": "my-cache", "env": {"XDG_CACHE_HOME": "/x"}}]
        for container in containers(deployment(body(startup={"optimizations": flags}))):
            names = [e["name"] for e in container["env"]]
            assert len(names) == len(set(names)), names

    def test_a_trial_restart_is_a_template_annotation(self) -> None:
        assert template_annotations(deployment(body(), trial="3"))["glowplug.dev/trial"] == "3"
        assert "glowplug.dev/trial" not in template_annotations(deployment(body()))

    # -- ownership, labels, selector

    def test_owned_by_the_modelserver_as_controller(self) -> None:
        dep = deployment(body())
        assert dep["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "glowplug.dev/v1alpha1",
                "kind": "ModelServer",
                "name": "llama",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert (dep["metadata"]["name"], dep["metadata"]["namespace"]) == ("llama", "ml")

    def test_recommended_labels_on_the_deployment_and_its_pods(self) -> None:
        dep = deployment(body())
        expected = {
            "app.kubernetes.io/name": "modelserver",
            "app.kubernetes.io/instance": "llama",
            "app.kubernetes.io/managed-by": "glowplug",
            "app.kubernetes.io/part-of": "glowplug",
        }
        for labels in (dep["metadata"]["labels"], template_labels(dep)):
            assert labels.items() >= expected.items()

    @pytest.mark.parametrize(
        ("effective", "flags_hash", "trial"),
        [([], "0000000000000000", None), (["fast-load"], "1111111111111111", "2")],
    )
    def test_selector_matches_the_pods_and_ignores_flag_changes(
        self, effective: list[str], flags_hash: str, trial: str | None
    ) -> None:
        raw = body(startup={"optimizations": [{"name": "fast-load"}, {"name": "hf-offline"}]})
        before = deployment(raw)
        after = deployment(raw, effective, flags_hash=flags_hash, trial=trial)
        selector = after["spec"]["selector"]["matchLabels"]
        assert selector == before["spec"]["selector"]["matchLabels"]  # spec.selector is immutable
        assert template_labels(after).items() >= selector.items()
        assert "glowplug.dev/optimizations-hash" not in selector

    # -- image, placement

    @pytest.mark.parametrize(
        ("image", "expected"),
        [
            ({}, "ghcr.io/acme/worker:1.2.3"),
            ({"worker": "ghcr.io/example/vllm:0.1"}, "ghcr.io/example/vllm:0.1"),
        ],
        ids=["settings", "spec"],
    )
    def test_image_from_the_spec_else_the_settings(self, image: Manifest, expected: str) -> None:
        settings = Settings(
            worker_image="ghcr.io/acme/worker:1.2.3", prefetch_image="ghcr.io/acme/prefetch:1"
        )
        dep = deployment(body(image=image), settings=settings)
        # The prefetcher always runs from the prefetch image: a worker image need not ship it.
        assert [c["image"] for c in containers(dep)] == ["ghcr.io/acme/prefetch:1", expected]

    def test_pull_policy_and_pull_secrets(self) -> None:
        dep = deployment(example("custom-flag-vllm"))
        assert [c["imagePullPolicy"] for c in containers(dep)] == ["IfNotPresent"] * 2
        assert pod_spec(dep)["imagePullSecrets"] == [{"name": "ghcr-pull"}]
        plain = deployment(body())
        assert "imagePullSecrets" not in pod_spec(plain)
        assert all("imagePullPolicy" not in c for c in containers(plain))

    def test_placement_is_copied(self) -> None:
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        }
        placement = {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
            "affinity": affinity,
            "runtimeClassName": "nvidia",
            "priorityClassName": "inference",
        }
        pod = pod_spec(deployment(body(placement=placement, resources={"gpus": 0})))
        assert pod["nodeSelector"] == placement["nodeSelector"]
        assert pod["tolerations"] == placement["tolerations"]
        assert pod["affinity"] == affinity
        assert pod["runtimeClassName"] == "nvidia"
        assert pod["priorityClassName"] == "inference"

    @pytest.mark.parametrize(
        "placement",
        [
            {},
            {
                "nodeSelector": {},
                "tolerations": [],
                "affinity": {},
                "runtimeClassName": "",
                "priorityClassName": "",
            },
        ],
        ids=["absent", "empty-as-in-the-design-doc"],
    )
    def test_no_placement_no_placement_fields(self, placement: Manifest) -> None:
        """Empty values are left out: the API server would drop them, and the live Deployment
        would never look like the wanted one."""
        pod = pod_spec(deployment(body(resources={"gpus": 0}, placement=placement)))
        for field in (
            "nodeSelector",
            "tolerations",
            "affinity",
            "runtimeClassName",
            "priorityClassName",
        ):
            assert field not in pod

    GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

    @pytest.mark.parametrize(
        ("gpus", "tolerations", "expected"),
        [
            (0, [], None),
            (1, [], [GPU_TOLERATION]),
            (
                2,
                [{"key": "dedicated", "operator": "Exists"}],
                [{"key": "dedicated", "operator": "Exists"}, GPU_TOLERATION],
            ),
            (
                1,
                [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}],
                [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}],
            ),
        ],
        ids=["no-gpu", "gpu", "added-to-the-users", "users-own-gpu-toleration"],
    )
    def test_gpu_pods_tolerate_the_gpu_taint(
        self, gpus: int, tolerations: list[Manifest], expected: list[Manifest] | None
    ) -> None:
        raw = body(resources={"gpus": gpus}, placement={"tolerations": tolerations})
        assert pod_spec(deployment(raw)).get("tolerations") == expected

    # -- sources on a claim

    def test_pvc_source_is_mounted_read_only_in_both_containers(self) -> None:
        dep = deployment(body(model={"source": "pvc://weights/llama-3b"}))
        assert volume(dep, "source") == {
            "name": "source",
            "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
        }
        for container in containers(dep):
            assert mount(container, "source") == {
                "name": "source",
                "mountPath": "/mnt/pvc/weights",
                "readOnly": True,
            }
            assert env(container)["GLOWPLUG_PVC_ROOT"] == "/mnt/pvc"

    def test_prefetch_gets_the_source_revision_and_include_patterns(self) -> None:
        args = prefetch(deployment(example("modelserver")))["args"]
        assert option(args, "--source") == "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0"
        assert option(args, "--revision") == "main"
        includes = [args[i + 1] for i, a in enumerate(args) if a == "--include"]
        assert includes == ["*.safetensors", "*.json", "tokenizer.model"]

    def test_prefetch_gets_the_sha256_only_when_set(self) -> None:
        url = "https://models.example.com/tiny.safetensors"
        pinned = prefetch(deployment(body(model={"source": url, "sha256": "ab" * 32})))["args"]
        assert option(pinned, "--sha256") == "ab" * 32
        plain = prefetch(deployment(body(model={"source": url})))["args"]
        assert "--sha256" not in plain

    def test_zero_replicas_keep_the_service_and_the_cache(self) -> None:
        raw = body(replicas=0, cache=CACHES["PersistentVolumeClaim"])
        spec = parse_spec(raw)
        assert deployment(raw)["spec"]["replicas"] == 0
        assert build_service(owner_of(raw), spec) is not None
        assert build_cache_claim(owner_of(raw), spec) is not None

    # -- the command lines are the worker's (docs/termination-report.md's other side too)

    @pytest.mark.parametrize(
        "raw",
        [
            *(example(name) for name in BUILTIN_EXAMPLES),
            body(model={"source": "pvc://weights/llama-3b"}),
            body(model={"source": "s3://bucket/llama"}),
            body(serving={"maxModelLen": 4096, "dtype": "float16"}),
        ],
        ids=[*BUILTIN_EXAMPLES, "pvc", "s3", "serving-options"],
    )
    def test_the_worker_accepts_the_rendered_command_lines(
        self, raw: Manifest, tmp_path: Path
    ) -> None:
        from glowplug_worker.prefetch.cli import parse_options
        from glowplug_worker.serve.cli import build_parser, validate

        spec = parse_spec(raw)
        dep = deployment(raw, [f.name for f in spec.startup.optimizations if not f.args])
        init, serve = prefetch(dep), worker(dep)
        assert init["command"] == serve["command"] == ["glowplug-worker"]

        assert init["args"][0] == "prefetch"
        opts, _ = parse_options(init["args"][1:], env(init))
        assert opts.source.raw == spec.model.source
        assert opts.dest == option(serve["args"], "--model")
        assert opts.pvc_root == "/mnt/pvc"
        assert opts.includes == tuple(spec.model.include)

        assert serve["args"][0] == "serve"
        args = build_parser().parse_args(serve["args"][1:])
        (tmp_path / "config.json").write_text("{}")
        args.model = tmp_path  # the directory the prefetcher publishes
        validate(args)
        assert args.port == serve["ports"][0]["containerPort"] == spec.serving.port
        assert args.task == spec.model.task
        assert args.max_model_len == spec.serving.max_model_len

    # -- purity

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_same_inputs_same_manifest(self, name: str) -> None:
        raw = example(name)
        before = copy.deepcopy(raw)
        first = deployment(raw, trial="1")
        assert deployment(raw, trial="1") == first
        assert json.loads(json.dumps(first)) == first  # plain JSON, nothing else
        assert raw == before

    # -- golden files

    @pytest.mark.parametrize(
        "name",
        [
            "modelserver",
            "custom-flag-vllm",
            "engine-vllm",
            "engine-sglang",
            "engine-transformers-serve",
            "engine-custom",
        ],
    )
    def test_golden(self, name: str) -> None:
        rendered = yaml.safe_dump(deployment(example(name)), sort_keys=False)
        path = GOLDEN / f"deployment-{name}.yaml"
        if os.environ.get("GLOWPLUG_UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rendered)
        assert rendered == path.read_text(), f"regenerate: see the docstring of {__name__}"


class TestStartupProbeTiming:
    @pytest.mark.parametrize("budget", [30, 31, 59, 60, 61, 299, 300, 900, 3601, 86400])
    def test_gives_up_after_the_budget_and_not_a_period_later(self, budget: int) -> None:
        period, failures = startup_probe_timing(budget)
        assert budget <= period * failures < budget + period
        assert failures >= 1

    def test_a_ready_worker_is_seen_within_a_second(self) -> None:
        serve = worker(deployment(body()))
        assert serve["startupProbe"]["periodSeconds"] == 1
        assert serve["readinessProbe"]["periodSeconds"] == 1


class TestModelDir:
    def test_same_model_same_directory_across_modelservers(self) -> None:
        a = parse_spec(body(model={"source": "hf://org/name", "revision": "abc"}))
        b = parse_spec(body(model={"source": "hf://org/name", "revision": "abc"}, replicas=3))
        assert model_dir(a, SETTINGS) == model_dir(b, SETTINGS)

    @pytest.mark.parametrize(
        "other",
        [
            {"source": "hf://org/name", "revision": "def"},
            {"source": "hf://org/other", "revision": "abc"},
            {"source": "s3://bucket/org/name"},
        ],
        ids=["revision", "repository", "scheme"],
    )
    def test_other_weights_other_directory(self, other: Manifest) -> None:
        a = parse_spec(body(model={"source": "hf://org/name", "revision": "abc"}))
        b = parse_spec(body(model=other))
        assert model_dir(a, SETTINGS) != model_dir(b, SETTINGS)

    def test_other_include_globs_other_directory(self) -> None:
        # The prefetcher's cache key has the globs: sharing a directory, one ModelServer's
        # prefetch would replace the other's files under its running workers.
        a = parse_spec(body(model={"source": "s3://b/m", "include": ["*.json"]}))
        b = parse_spec(body(model={"source": "s3://b/m", "include": ["*.safetensors"]}))
        c = parse_spec(body(model={"source": "s3://b/m"}))
        assert len({model_dir(a, SETTINGS), model_dir(b, SETTINGS), model_dir(c, SETTINGS)}) == 3

    def test_glob_order_does_not_split_the_cache(self) -> None:
        a = parse_spec(body(model={"source": "s3://b/m", "include": ["*.json", "*.safetensors"]}))
        b = parse_spec(body(model={"source": "s3://b/m", "include": ["*.safetensors", "*.json"]}))
        assert model_dir(a, SETTINGS) == model_dir(b, SETTINGS)

    def test_directory_without_globs_is_the_one_earlier_versions_used(self) -> None:
        # An operator upgrade must not move every cache (a re-download of every model).
        spec = parse_spec(body(model={"source": "hf://org/name", "revision": "abc"}))
        assert model_dir(spec, SETTINGS).endswith(
            "/" + hashlib.sha256(b"hf://org/name@abc").hexdigest()[:16]
        )

    def test_a_digest_gets_its_own_directory_and_none_keeps_the_old_one(self) -> None:
        # A changed digest must never reuse files fetched under the old one; a spec without a
        # digest keeps the directory earlier versions used.
        url = "https://h/m.bin"
        plain = parse_spec(body(model={"source": url}))
        a = parse_spec(body(model={"source": url, "sha256": "a" * 64}))
        b = parse_spec(body(model={"source": url, "sha256": "b" * 64}))
        dirs = {model_dir(spec, SETTINGS) for spec in (plain, a, b)}
        assert len(dirs) == 3
        assert model_dir(plain, SETTINGS).endswith(
            "/" + hashlib.sha256(f"{url}@".encode()).hexdigest()[:16]
        )

    def test_inside_the_cache_mount(self) -> None:
        spec = parse_spec(body())
        assert model_dir(spec, Settings(cache_mount_path="/w")).startswith("/w/")


class TestHostPathCache:
    """A node directory is shared by every namespace's pods on the node (issue 16, item 2)."""

    HOST = {"kind": "HostPath", "hostPath": "/var/lib/glowplug/cache"}
    ALLOWED = Settings(host_path_prefixes=("/var/lib/glowplug",))

    def test_off_unless_the_operator_allows_a_prefix(self) -> None:
        spec = parse_spec(body(cache=self.HOST))
        problem = host_path_problem(spec, Settings())
        assert problem is not None and "GLOWPLUG_HOST_PATH_PREFIXES" in problem
        assert host_path_problem(spec, self.ALLOWED) is None

    @pytest.mark.parametrize(
        "path", ["/var/lib/glowplugx", "/etc", "/var/lib/glowplug/../../etc", "/var/lib"]
    )
    def test_only_under_an_allowed_prefix(self, path: str) -> None:
        spec = parse_spec(body(cache={"kind": "HostPath", "hostPath": path}))
        assert "not under an allowed directory" in (host_path_problem(spec, self.ALLOWED) or "")

    def test_other_caches_need_no_permission(self) -> None:
        for cache in (CACHES["EmptyDir"], CACHES["PersistentVolumeClaim"]):
            assert host_path_problem(parse_spec(body(cache=cache)), Settings()) is None

    def test_the_directory_key_includes_the_namespace(self) -> None:
        spec = parse_spec(body(cache=self.HOST))
        a, b = model_dir(spec, self.ALLOWED, "team-a"), model_dir(spec, self.ALLOWED, "team-b")
        assert a != b and "team-a" in a
        shared = parse_spec(body(cache=CACHES["PersistentVolumeClaim"]))
        assert model_dir(shared, SETTINGS, "team-a") == model_dir(shared, SETTINGS, "team-b")

    def test_reuse_is_verified_and_both_containers_use_the_namespaced_directory(self) -> None:
        dep = deployment(body(cache=self.HOST))
        args = prefetch(dep)["args"]
        assert "--verify-reuse" in args
        dest = args[args.index("--dest") + 1]
        model = worker(dep)["args"][worker(dep)["args"].index("--model") + 1]
        assert dest == model and f"/{dep['metadata']['namespace']}." in dest
        assert "--verify-reuse" not in prefetch(deployment(body()))["args"]

    def test_settings_parse_and_refuse_relative_prefixes(self) -> None:
        env = {"GLOWPLUG_HOST_PATH_PREFIXES": "/var/lib/glowplug/, /mnt/models"}
        assert Settings.from_env(env).host_path_prefixes == ("/var/lib/glowplug", "/mnt/models")
        with pytest.raises(SettingsError, match="GLOWPLUG_HOST_PATH_PREFIXES"):
            Settings.from_env({"GLOWPLUG_HOST_PATH_PREFIXES": "var/lib"})


class TestLabelSelector:
    def test_selects_the_pods_of_the_deployment(self) -> None:
        dep = deployment(body())
        pairs = dict(part.split("=", 1) for part in label_selector(owner_of(body())).split(","))
        assert pairs == dep["spec"]["selector"]["matchLabels"]
        assert template_labels(dep).items() >= pairs.items()


class TestEndpoint:
    def test_is_the_service_address(self) -> None:
        raw = body(serving={"port": 8080})
        service = build_service(owner_of(raw), parse_spec(raw))
        meta = service["metadata"]
        url = f"http://{meta['name']}.{meta['namespace']}.svc:{service['spec']['ports'][0]['port']}"
        assert endpoint(owner_of(raw), parse_spec(raw)) == url == "http://llama.ml.svc:8080"


class TestService:
    def test_routes_to_the_worker_port(self) -> None:
        raw = example("embedding")
        spec = parse_spec(raw)
        service = build_service(owner_of(raw), spec)
        dep = deployment(raw)
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [
            {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
        ]
        assert [p["name"] for p in worker(dep)["ports"]] == ["http"]
        assert template_labels(dep).items() >= service["spec"]["selector"].items()
        assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

    def test_owned_and_labelled_like_the_deployment(self) -> None:
        raw = body()
        service = build_service(owner_of(raw), parse_spec(raw))
        dep = deployment(raw)
        assert service["metadata"]["name"] == "llama"
        assert service["metadata"]["ownerReferences"] == dep["metadata"]["ownerReferences"]
        assert service["metadata"]["labels"] == dep["metadata"]["labels"]


class TestCacheClaim:
    @staticmethod
    def claim(cache: Manifest) -> Manifest | None:
        raw = body(cache=cache)
        return build_cache_claim(owner_of(raw), parse_spec(raw))

    @pytest.mark.parametrize(
        "cache",
        [CACHES["EmptyDir"], CACHES["HostPath"], CACHES["existingClaim"]],
        ids=["EmptyDir", "HostPath", "existingClaim"],
    )
    def test_no_claim_unless_one_is_asked_for(self, cache: Manifest) -> None:
        assert self.claim(cache) is None

    @pytest.mark.parametrize(
        ("cache", "spec"),
        [
            (
                {"kind": "PersistentVolumeClaim", "size": "40Gi"},
                {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "40Gi"}}},
            ),
            (
                {
                    "kind": "PersistentVolumeClaim",
                    "size": "100Gi",
                    "accessMode": "ReadWriteMany",
                    "storageClassName": "fast-ssd",
                },
                {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "100Gi"}},
                    "storageClassName": "fast-ssd",
                },
            ),
        ],
        ids=["defaults", "class-and-mode"],
    )
    def test_claim_named_after_the_modelserver(self, cache: Manifest, spec: Manifest) -> None:
        claim = self.claim(cache)
        assert claim is not None
        assert (claim["kind"], claim["metadata"]["name"]) == (
            "PersistentVolumeClaim",
            "llama-cache",
        )
        assert claim["spec"] == spec  # no storageClassName: the cluster's default class applies
        assert volume(deployment(body(cache=cache)), "cache")["persistentVolumeClaim"] == {
            "claimName": "llama-cache"
        }

    @pytest.mark.parametrize(("retain", "owned"), [(False, True), (True, False)])
    def test_retain_on_delete_keeps_the_claim_out_of_garbage_collection(
        self, retain: bool, owned: bool
    ) -> None:
        claim = self.claim(
            {"kind": "PersistentVolumeClaim", "size": "1Gi", "retainOnDelete": retain}
        )
        assert claim is not None
        assert ("ownerReferences" in claim["metadata"]) is owned


class TestDisruptionBudget:
    @pytest.mark.parametrize("replicas", [0, 1])
    def test_none_for_a_single_replica(self, replicas: int) -> None:
        raw = body(replicas=replicas)
        assert build_disruption_budget(owner_of(raw), parse_spec(raw)) is None

    @pytest.mark.parametrize("replicas", [2, 5])
    def test_one_pod_at_a_time_for_several(self, replicas: int) -> None:
        raw = body(replicas=replicas)
        pdb = build_disruption_budget(owner_of(raw), parse_spec(raw))
        assert pdb is not None
        assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        dep = deployment(raw)
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]
        assert pdb["metadata"]["ownerReferences"] == dep["metadata"]["ownerReferences"]
