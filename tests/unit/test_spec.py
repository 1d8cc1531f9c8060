"""parse_spec: defaults, the attributes the builders read, and the errors a user sees."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from glowplug_operator.spec import (
    BUILTIN_OPTIMIZATIONS,
    InvalidSpec,
    ModelServerSpec,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "data" / "invalid-specs").glob("*.yaml"))


def body(**spec: Any) -> dict[str, Any]:
    spec.setdefault("model", {"source": "hf://org/name"})
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": spec,
    }


def refusal(raw: dict[str, Any]) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw)
    return caught.value


class TestDefaults:
    def test_a_spec_with_only_a_source_gets_the_crd_defaults(self) -> None:
        spec = parse_spec(body())
        assert spec.replicas == 1
        assert spec.model.task == "generate"
        assert spec.model.include == []
        assert spec.model.revision is None
        assert spec.model.credentials_secret_ref is None
        assert spec.resources.gpus == 1
        assert (spec.resources.memory, spec.resources.cpu) == (None, None)
        assert spec.placement.node_selector == {}
        assert spec.placement.tolerations == []
        assert spec.placement.affinity is None
        assert spec.cache.kind == "EmptyDir"
        assert spec.cache.access_mode == "ReadWriteOnce"  # what a single-node provisioner offers
        assert spec.cache.retain_on_delete is False
        assert spec.startup.budget_seconds is None
        assert spec.startup.optimizations == []
        assert spec.startup.rollback == "Automatic"
        assert (spec.serving.port, spec.serving.dtype) == (8000, "auto")
        assert (spec.serving.max_concurrency, spec.serving.max_queue) == (8, 64)
        assert spec.serving.max_model_len is None
        assert spec.serving.request_timeout_seconds == 120
        assert spec.image.worker is None
        assert spec.image.pull_policy is None
        assert spec.image.pull_secrets == []
        assert (spec.rollout.max_surge, spec.rollout.max_unavailable) == (1, 0)

    def test_unknown_fields_are_ignored_for_forward_compatibility(self) -> None:
        spec = parse_spec(body(futureField={"x": 1}, cache={"kind": "EmptyDir", "tier": "fast"}))
        assert spec.cache.kind == "EmptyDir"

    def test_the_spec_is_frozen(self) -> None:
        spec = parse_spec(body())
        with pytest.raises(pydantic.ValidationError):
            spec.replicas = 3  # type: ignore[misc]


class TestFullSpec:
    RAW: dict[str, Any] = {
        "model": {
            "source": "hf://meta-llama/Llama-3.2-3B-Instruct",
            "revision": "0cb88a4f764b7a12671c53f0838cd831a0843b95",
            "credentialsSecretRef": {"name": "hf-token"},
            "task": "embed",
            "include": ["*.safetensors"],
        },
        "replicas": 3,
        "resources": {"gpus": 2, "memory": "48Gi", "cpu": 8},
        "placement": {
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {}},
            "runtimeClassName": "nvidia",
            "priorityClassName": "inference",
        },
        "cache": {
            "kind": "PersistentVolumeClaim",
            "size": "40Gi",
            "storageClassName": "rwx",
            "accessMode": "ReadWriteOnce",
            "retainOnDelete": True,
        },
        "startup": {
            "budgetSeconds": 900,
            "optimizations": [
                {"name": "prefetch-weights"},
                {"name": "vllm-forkserver", "env": {"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"}},
                {"name": "eager", "args": ["--enforce-eager"]},
            ],
            "rollback": "Off",
        },
        "serving": {
            "port": 9000,
            "dtype": "bfloat16",
            "maxConcurrency": 16,
            "maxQueue": 0,
            "maxModelLen": 8192,
            "requestTimeoutSeconds": 30,
        },
        "image": {
            "worker": "ghcr.io/example/worker:1.0",
            "pullPolicy": "Always",
            "pullSecrets": [{"name": "ghcr"}, {"name": "quay"}],
        },
    }

    def test_every_camel_case_field_reaches_its_snake_case_attribute(self) -> None:
        spec = parse_spec({"spec": self.RAW})
        assert spec.model.credentials_secret_ref is not None
        assert spec.model.credentials_secret_ref.name == "hf-token"
        assert spec.model.task == "embed"
        assert spec.model.include == ["*.safetensors"]
        assert spec.replicas == 3
        assert (spec.resources.gpus, spec.resources.memory) == (2, "48Gi")
        assert spec.resources.cpu == "8", "an integer quantity is kept as a string"
        assert spec.placement.node_selector == {"gpu": "h100"}
        assert spec.placement.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
        assert spec.placement.affinity == {"nodeAffinity": {}}
        assert spec.placement.runtime_class_name == "nvidia"
        assert spec.placement.priority_class_name == "inference"
        assert (spec.cache.kind, spec.cache.size) == ("PersistentVolumeClaim", "40Gi")
        assert spec.cache.storage_class_name == "rwx"
        assert spec.cache.access_mode == "ReadWriteOnce"
        assert spec.cache.retain_on_delete is True
        assert spec.startup.budget_seconds == 900
        assert spec.startup.rollback == "Off"
        assert spec.serving.port == 9000
        assert spec.serving.dtype == "bfloat16"
        assert (spec.serving.max_concurrency, spec.serving.max_queue) == (16, 0)
        assert spec.serving.max_model_len == 8192
        assert spec.serving.request_timeout_seconds == 30
        assert spec.image.worker == "ghcr.io/example/worker:1.0"
        assert spec.image.pull_policy == "Always"
        assert spec.image.pull_secrets == ["ghcr", "quay"]

    def test_optimizations_keep_order_and_know_which_are_builtin(self) -> None:
        flags = parse_spec({"spec": self.RAW}).startup.optimizations
        assert [f.name for f in flags] == ["prefetch-weights", "vllm-forkserver", "eager"]
        assert [f.builtin for f in flags] == [True, False, False]
        assert flags[1].env == {"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"}
        assert flags[2].args == ["--enforce-eager"]
        assert flags[0].env == {} and flags[0].args == []

    def test_builtin_names(self) -> None:
        assert BUILTIN_OPTIMIZATIONS == (
            "prefetch-weights",
            "background-import",
            "fast-load",
            "slim-imports",
            "hf-offline",
            "native-model",
            "prefetch-page-cache",
            "overlap-download",
        )
        raw = body(startup={"optimizations": [{"name": n} for n in BUILTIN_OPTIMIZATIONS]})
        assert all(f.builtin for f in parse_spec(raw).startup.optimizations)

    def test_parsing_does_not_change_the_body(self) -> None:
        raw = {"spec": copy.deepcopy(self.RAW)}
        parse_spec(raw)
        assert raw == {"spec": self.RAW}


class TestSource:
    @pytest.mark.parametrize(
        ("source", "scheme"),
        [
            ("hf://org/name", "hf"),
            ("s3://bucket/prefix/llama", "s3"),
            ("https://models.example.com/llama/manifest.json", "https"),
            ("http://minio.storage:9000/llama/manifest.json", "http"),
            ("pvc://weights/llama", "pvc"),
            ("file:///models/llama", "file"),
        ],
    )
    def test_scheme(self, source: str, scheme: str) -> None:
        assert parse_spec(body(model={"source": source})).model.scheme == scheme

    @pytest.mark.parametrize(
        ("source", "claim", "path"),
        [
            ("pvc://weights/models/llama", "weights", "models/llama"),
            ("pvc://weights/models/llama/", "weights", "models/llama"),
            ("pvc://weights", "weights", ""),
            ("pvc://weights/", "weights", ""),
        ],
    )
    def test_pvc_claim_and_path(self, source: str, claim: str, path: str) -> None:
        model = parse_spec(body(model={"source": source})).model
        assert (model.pvc_claim, model.pvc_path) == (claim, path)

    def test_non_pvc_sources_have_no_claim(self) -> None:
        model = parse_spec(body(model={"source": "s3://bucket/llama"})).model
        assert (model.pvc_claim, model.pvc_path) == (None, None)

    def test_a_revision_after_at_becomes_the_revision(self) -> None:
        model = parse_spec(body(model={"source": "hf://org/name@v1.2"})).model
        assert model.revision == "v1.2"
        assert model.hf_repo == "org/name"
        assert model.source == "hf://org/name@v1.2"

    def test_an_explicit_revision_is_kept(self) -> None:
        model = parse_spec(body(model={"source": "hf://org/name", "revision": "abc"})).model
        assert (model.revision, model.hf_repo) == ("abc", "org/name")


def invalid_header(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# field:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name} has no '# field:' line")


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_every_invalid_spec_file_is_refused_at_its_field(path: Path) -> None:
    """What the API server refuses, parse_spec refuses too (for an old or bypassed CRD)."""
    error = refusal(yaml.safe_load(path.read_text()))
    # The CRD's rule may name a list or an object; parse_spec names the item or field in it.
    field = invalid_header(path)
    assert error.field == field or error.field.startswith((f"{field}[", f"{field}."))
    assert str(error).startswith(f"{error.field}: ")


class TestInvalid:
    @pytest.mark.parametrize(
        ("spec", "field", "says"),
        [
            ({"model": {"source": "gs://bucket/llama"}}, "spec.model.source", "hf://, s3://"),
            ({"model": {"source": "hf://org/name/extra"}}, "spec.model.source", "hf://ORG/NAME"),
            ({"model": {"source": "hf://org/name@"}}, "spec.model.source", "hf://ORG/NAME"),
            ({"model": {"source": "file://models"}}, "spec.model.source", "absolute path"),
            ({"model": {"source": "https:///x"}}, "spec.model.source", "needs a host"),
            ({"model": {"source": "pvc://Bad_Claim/x"}}, "spec.model.source", "not a valid"),
            (
                {"model": {"source": "s3://b/x", "revision": "v1"}},
                "spec.model.revision",
                "only applies to hf://",
            ),
            (
                {"model": {"source": "pvc://c/m", "sha256": "a" * 64}},
                "spec.model.sha256",
                "only applies to http:// and https://",
            ),
            (
                {"model": {"source": "https://h/m.bin", "sha256": "A" * 64}},
                "spec.model.sha256",
                "should match pattern",
            ),
            (
                {"model": {"source": "hf://org/m", "revision": "\x7f"}},
                "spec.model.revision",
                "control character U+007F",
            ),
            (
                {"startup": {"optimizations": [{"name": "x", "env": {"A": "b\x00"}}]}},
                "spec.startup.optimizations[0].env.A",
                "control character U+0000",
            ),
            (
                {"placement": {"nodeSelector": {"k\x85\x9f": "v"}}},
                "spec.placement.nodeSelector.k\x85\x9f",
                "control character U+009F",
            ),
            (
                {"placement": {"affinity": {"nodeAffinity": {"x": 1}}}},
                "spec.placement.affinity.nodeAffinity.x",
                "not a field of a pod's affinity",
            ),
            (
                {
                    "placement": {
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {"weight": "high", "podAffinityTerm": {}}
                                ]
                            }
                        }
                    }
                },
                "spec.placement.affinity.podAntiAffinity"
                ".preferredDuringSchedulingIgnoredDuringExecution[0].weight",
                "must be an integer",
            ),
            ({"replicas": "3"}, "spec.replicas", "valid integer"),
            ({"replicas": True}, "spec.replicas", "valid integer"),
            ({"resources": {"cpu": "-1"}}, "spec.resources.cpu", "not a Kubernetes quantity"),
            ({"resources": {"memory": "lots"}}, "spec.resources.memory", "like 48Gi"),
            (
                {"cache": {"kind": "PersistentVolumeClaim", "size": "0"}},
                "spec.cache.size",
                "greater than zero",
            ),
            ({"cache": {"existingClaim": "weights"}}, "spec.cache.existingClaim", "only allowed"),
            (
                {"cache": {"kind": "PersistentVolumeClaim", "existingClaim": "Bad_Name"}},
                "spec.cache.existingClaim",
                "not a valid PersistentVolumeClaim name",
            ),
            (
                {"startup": {"optimizations": [{"name": "x", "env": {}, "args": []}]}},
                "spec.startup.optimizations[0]",
                "needs env or args",
            ),
            ({"startup": {"optimizations": [{"env": {"A": "1"}}]}}, "spec.startup", "required"),
            ({"image": {"worker": "ghcr.io/x y"}}, "spec.image.worker", "whitespace"),
            ({"image": {"pullSecrets": [{}]}}, "spec.image.pullSecrets[0]", "valid string"),
            ({"rollout": {"maxSurge": 0}}, "spec.rollout", "cannot both be 0"),
            ({"rollout": {"maxSurge": "101%"}}, "spec.rollout.maxSurge", "a percentage"),
            ({"rollout": {"maxUnavailable": -1}}, "spec.rollout.maxUnavailable", "0 to 100"),
            ({"rollout": {"maxSurge": True}}, "spec.rollout.maxSurge", "valid"),
            (
                {
                    "model": {"source": "hf://org/m", "credentialsSecretRef": {"name": "hf"}},
                    "startup": {
                        "optimizations": [{"name": "fast-load"}, {"name": "overlap-download"}]
                    },
                },
                "spec.startup.optimizations[1].name",
                "drop the flag for a source that needs credentials",
            ),
            (
                {
                    "engine": {"kind": "vllm"},
                    "startup": {"optimizations": [{"name": "overlap-download"}]},
                },
                "spec.startup.optimizations[0].name",
                "flag of glowplug's builtin engine",
            ),
        ],
    )
    def test_refusal_names_the_field_and_the_fix(
        self, spec: dict[str, Any], field: str, says: str
    ) -> None:
        error = refusal(body(**spec))
        assert error.field.startswith(field)
        assert says in str(error)

    def test_a_body_without_spec(self) -> None:
        error = refusal({"metadata": {"name": "llama"}})
        assert error.field == "spec"
        assert "spec.model.source" in str(error)

    def test_a_name_that_cannot_be_a_service_name(self) -> None:
        raw = body()
        raw["metadata"]["name"] = "7b-llama"
        assert refusal(raw).field == "metadata.name"

    def test_the_value_is_shown_and_long_values_are_cut(self) -> None:
        error = refusal(body(serving={"dtype": "x" * 500}))
        assert error.field == "spec.serving.dtype"
        assert "'auto'" in error.message and "xxx..." in error.message
        assert len(str(error)) < 300

    def test_several_problems_are_counted(self) -> None:
        error = refusal(body(replicas=-1, serving={"port": 1}))
        assert error.field == "spec.replicas"
        assert "and 1 more problem" in str(error)

    def test_a_direct_model_validate_does_not_run_the_cross_field_checks(self) -> None:
        """Documented behaviour: only parse_spec runs them, so handlers must use it."""
        raw = {"model": {"source": "ftp://x"}, "cache": {"kind": "HostPath"}}
        assert ModelServerSpec.model_validate(raw).cache.host_path is None
        assert refusal({"spec": raw}).field == "spec.model.source"


def test_tabs_newlines_and_any_printable_unicode_are_accepted() -> None:
    spec = parse_spec(
        {"spec": {"model": {"source": "hf://org/m", "revision": "模型 🦙\tv1\r\n\u0085"}}}
    )
    assert spec.model.revision == "模型 🦙\tv1\r\n\u0085"


def test_a_full_affinity_of_every_kind_is_accepted() -> None:
    term = {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
    pod_term = {
        "labelSelector": {"matchLabels": {"app": "x"}, "matchExpressions": []},
        "topologyKey": "kubernetes.io/hostname",
        "namespaces": ["a"],
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "preference": term}],
        },
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [pod_term],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": pod_term}
            ],
        },
    }
    spec = parse_spec(
        {"spec": {"model": {"source": "hf://o/m"}, "placement": {"affinity": affinity}}}
    )
    assert spec.placement.affinity == affinity
