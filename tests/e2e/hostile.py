"""hypothesis strategies for hostile ModelServers: a valid base, then zero or more mutations
drawn from what a careless or malicious user writes (odd Unicode, huge strings, boundary
numbers, unknown flags and fields, fields that contradict each other)."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

# Text a user can paste: control characters, bidi overrides, zero-width, emoji, NUL, paths.
ODD = [
    "",
    " ",
    "\u0000",
    "\u202etxt.exe",
    "\u200b",
    "e\u0301",
    "🦙",
    "模型",
    "../../etc/passwd",
    "a b",
    "$(id)",
    "${HOME}",
    "*",
    "\\",
    "\n",
    "x" * 64,
    "x" * 300,
    "y" * 5000,
]
odd_text = st.one_of(
    st.sampled_from(ODD),
    st.text(max_size=40),
    st.text(alphabet=string.ascii_lowercase + string.digits + "-._/", max_size=80),
)
sizes = st.sampled_from([-(2**63), -1, 0, 1, 29, 30, 100, 101, 1023, 1024, 65535, 65536])
numbers = st.one_of(
    sizes,
    st.sampled_from([2**31 - 1, 2**31, 2**63, 86400, 86401, 10_000_001]),
    st.integers(min_value=-5, max_value=200),
    st.sampled_from(["3", 1.5, True, None]),
)
quantities = st.one_of(
    st.sampled_from(
        ["16Gi", "0", "-1", "1e3", "lots", "\u0661\u0662Gi", "1.5", "0.001m", "9" * 70, "4"]
    ),
    odd_text,
)
FLAGS = [
    "prefetch-weights",
    "fast-load",
    "hf-offline",
    "native-model",
    "prefetch-page-cache",
    "overlap-download",
]
flag_names = st.one_of(st.sampled_from(FLAGS), st.sampled_from(["Fast-Load", "x" * 64]), odd_text)
env_names = st.one_of(
    st.sampled_from(["HOME", "HF_TOKEN", "HF_HOME", "GLOWPLUG_MODEL_DIR", "MY_FLAG", "1BAD"]),
    odd_text,
)
sources = st.one_of(
    st.sampled_from(
        [
            "hf://org/model",
            "hf://org/model@v1",
            "hf://org",
            "hf://org/model/extra",
            "s3://bucket/prefix",
            "s3://",
            "https://models.example.com/m.safetensors",
            "https://models.example.com/manifest.json",
            "https:///nohost",
            "http://h/../../m.bin",
            "pvc://claim/dir",
            "pvc://Claim_Bad/x",
            "pvc://claim/../../etc",
            "file:///models/m",
            "file://relative",
            "gs://bucket/m",
            "HF://org/model",
        ]
    ),
    st.builds(
        lambda s, rest: f"{s}://{rest}", st.sampled_from(["hf", "s3", "https", "pvc"]), odd_text
    ),
    odd_text,
)
hexes = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["A" * 64, "a" * 63, "a" * 65, "g" * 64]),
)


optimizations = st.lists(
    st.fixed_dictionaries(
        {"name": flag_names},
        optional={
            "env": st.dictionaries(env_names, odd_text, max_size=3),
            "args": st.lists(odd_text, max_size=3),
        },
    ),
    max_size=6,
)
mutations = st.one_of(
    st.tuples(st.just("model.source"), sources),
    st.tuples(st.just("model.revision"), odd_text),
    st.tuples(st.just("model.include"), st.lists(odd_text, max_size=70)),
    st.tuples(st.just("model.sha256"), hexes),
    st.tuples(st.just("model.task"), st.sampled_from(["generate", "embed", "classify", ""])),
    st.tuples(st.just("model.credentialsSecretRef"), st.fixed_dictionaries({"name": odd_text})),
    st.tuples(st.just("replicas"), numbers),
    st.tuples(st.just("resources.gpus"), numbers),
    st.tuples(st.just("resources.memory"), quantities),
    st.tuples(st.just("resources.cpu"), quantities),
    st.tuples(st.just("placement.nodeSelector"), st.dictionaries(odd_text, odd_text, max_size=3)),
    st.tuples(
        st.just("placement.tolerations"),
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "key": odd_text,
                    "operator": st.sampled_from(["Exists", "Equal", "In"]),
                    "value": odd_text,
                    "effect": st.sampled_from(["NoSchedule", "NoExecute", "Bogus"]),
                    "tolerationSeconds": numbers,
                },
            ),
            max_size=3,
        ),
    ),
    st.tuples(st.just("placement.affinity"), st.sampled_from([{}, {"nodeAffinity": {"x": 1}}])),
    st.tuples(st.just("placement.runtimeClassName"), odd_text),
    st.tuples(st.just("placement.priorityClassName"), odd_text),
    st.tuples(
        st.just("cache"),
        st.fixed_dictionaries(
            {"kind": st.sampled_from(["EmptyDir", "PersistentVolumeClaim", "HostPath", "Tmpfs"])},
            optional={
                "size": quantities,
                "hostPath": st.one_of(
                    st.sampled_from(["/var/lib/models", "rel", "/a/../b"]), odd_text
                ),
                "existingClaim": odd_text,
                "storageClassName": odd_text,
                "accessMode": st.sampled_from(["ReadWriteOnce", "ReadWriteMany", "Bogus"]),
                "retainOnDelete": st.sampled_from([True, False, "yes"]),
            },
        ),
    ),
    st.tuples(st.just("startup.optimizations"), optimizations),
    st.tuples(st.just("startup.budgetSeconds"), numbers),
    st.tuples(st.just("startup.rollback"), st.sampled_from(["Automatic", "Off", "Sometimes"])),
    st.tuples(st.just("serving.port"), numbers),
    st.tuples(st.just("serving.maxModelLen"), numbers),
    st.tuples(st.just("serving.maxConcurrency"), numbers),
    st.tuples(st.just("serving.dtype"), st.sampled_from(["auto", "float16", "int3", ""])),
    st.tuples(st.just("image.worker"), odd_text),
    st.tuples(st.just("image.pullPolicy"), st.sampled_from(["Always", "Never", "Sometimes"])),
    st.tuples(
        st.just("engine"),
        st.fixed_dictionaries(
            {
                "kind": st.sampled_from(
                    ["builtin", "vllm", "sglang", "transformers-serve", "custom", "x"]
                )
            },
            optional={
                "command": st.lists(odd_text, max_size=2),
                "args": st.lists(odd_text, max_size=2),
            },
        ),
    ),
    st.tuples(st.sampled_from(["bogus", "model.bogus", "serving.extra"]), odd_text),
)


def _apply(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


@st.composite
def modelserver_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A ModelServer spec: a small valid one (no pods' worth of GPUs past the kwok nodes'),
    then up to four hostile mutations."""
    spec: dict[str, Any] = {
        "model": {"source": draw(st.sampled_from(["hf://org/model", "s3://b/m", "pvc://w/m"]))},
        "replicas": draw(st.integers(0, 1)),
        "resources": {"gpus": draw(st.integers(0, 1))},
    }
    for path, value in draw(st.lists(mutations, max_size=4)):
        _apply(spec, path, value)
    return spec


names = st.one_of(
    st.just(None),  # the test's own unique DNS label, three times in four
    st.just(None),
    st.just(None),
    st.sampled_from(["Upper", "a" * 64, "a.b", "x" * 200, "1abc", "-a", "🦙"]),
)
