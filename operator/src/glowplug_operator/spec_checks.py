"""What the CRD schema cannot say about a ModelServer spec: the names it may use and the
cross-field checks ``spec.parse_spec`` runs on the typed spec, each raising ``InvalidSpec`` with
the field's path and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from glowplug_operator.affinity import affinity_problem
from glowplug_operator.engines import ENGINES, PREFETCH_FLAGS, known_flag
from glowplug_operator.quantity import parse_quantity

if TYPE_CHECKING:
    from glowplug_operator.spec import (
        Cache,
        Image,
        ModelServerSpec,
        ModelSource,
        Optimization,
        Placement,
        RolloutStrategy,
    )

BUILTIN_OPTIMIZATIONS: tuple[str, ...] = (
    "prefetch-weights",
    "background-import",
    "fast-load",
    "slim-imports",
    "hf-offline",
    "native-model",
    "prefetch-page-cache",
    "overlap-download",
)
"""Startup flags the operator and the worker implement; any other name is a custom flag."""

OVERLAP_DOWNLOAD = "overlap-download"
"""The flag that moves the download from the prefetch init container into the worker."""

SCHEMES: tuple[str, ...] = ("hf", "s3", "https", "http", "pvc", "file")
"""URI schemes ``spec.model.source`` may use."""


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# Kubernetes' label key (optional DNS subdomain prefix and '/', then a name) and label value.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_STRICT = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEME = re.compile(r"^([a-z0-9]+)://")


class InvalidSpec(ValueError):
    """A ModelServer spec that cannot be valid; ``field`` is its path, e.g. ``spec.cache.size``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# spec.rollout's maxSurge and maxUnavailable: a count or a percentage.
_PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")


def _zero(value: int | str) -> bool:
    return value in (0, "0%")


def check_name(body: Mapping[str, Any]) -> None:
    """metadata.name becomes the Service's name: a DNS-1035 label."""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if isinstance(name, str) and (len(name) > 63 or not _DNS_1035_LABEL.match(name)):
        raise InvalidSpec(
            "metadata.name",
            f"{name!r} must be a DNS label of at most 63 characters that starts with a letter "
            "(lowercase letters, digits and '-'): it becomes the name of the Service",
        )


def _check_model(model: ModelSource) -> None:
    field = "spec.model.source"
    match = _SCHEME.match(model.source)
    if match is None or match.group(1) not in SCHEMES:
        raise InvalidSpec(
            field,
            f"{model.source!r} has an unsupported scheme; source must start with one of "
            + ", ".join(f"{s}://" for s in SCHEMES),
        )
    rest = model.location
    if model.scheme == "hf":
        repo, _, revision = rest.partition("@")
        parts = repo.split("/")
        if len(parts) != 2 or not all(parts) or ("@" in rest and not revision):
            raise InvalidSpec(
                field, "an hf:// source needs the repository as hf://ORG/NAME[@REVISION]"
            )
    elif model.scheme == "s3" and not rest.split("/", 1)[0]:
        raise InvalidSpec(field, "an s3:// source needs a bucket, as s3://BUCKET/PREFIX")
    elif model.scheme == "pvc" and not model.pvc_claim:
        raise InvalidSpec(field, "a pvc:// source needs a claim name, as pvc://CLAIM/PATH")
    elif model.scheme == "pvc" and not _DNS_SUBDOMAIN.match(model.pvc_claim or ""):
        raise InvalidSpec(field, f"{model.pvc_claim!r} is not a valid PersistentVolumeClaim name")
    elif model.scheme == "pvc" and ".." in (model.pvc_path or "").split("/"):
        raise InvalidSpec(field, "a pvc:// path must not contain '..' (it would leave the claim)")
    elif model.scheme == "file" and not rest.startswith("/"):
        raise InvalidSpec(field, "a file:// source needs an absolute path, as file:///PATH")
    elif model.scheme in ("http", "https") and not rest.split("/", 1)[0]:
        raise InvalidSpec(field, f"a {model.scheme}:// source needs a host, as https://HOST/PATH")
    ref = model.credentials_secret_ref
    if ref is not None and not _DNS_SUBDOMAIN.match(ref.name):
        raise InvalidSpec(
            "spec.model.credentialsSecretRef.name",
            f"{ref.name!r} is not a Secret name (lowercase letters, digits, '-' and '.')",
        )
    if model.sha256 is not None and model.scheme not in ("http", "https"):
        raise InvalidSpec(
            "spec.model.sha256", "sha256 only applies to http:// and https:// sources"
        )
    if model.revision is not None:
        if model.scheme != "hf":
            raise InvalidSpec("spec.model.revision", "revision only applies to hf:// sources")
        if "@" in model.source:
            raise InvalidSpec(
                "spec.model.revision",
                "the revision is given twice: drop spec.model.revision or the '@REVISION' "
                "suffix of spec.model.source",
            )


def _check_quantity(field: str, value: str | None, *, positive: bool) -> None:
    if value is None:
        return
    amount = parse_quantity(value)
    if amount is None or amount < 0:
        raise InvalidSpec(
            field, f"{value!r} is not a Kubernetes quantity; write it like 48Gi, 512Mi, 8 or 500m"
        )
    if positive and amount == 0:
        raise InvalidSpec(field, f"{value!r} must be greater than zero, such as 40Gi")


def is_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN_STRICT.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def _check_placement(placement: Placement) -> None:
    field = "spec.placement"
    if (found := affinity_problem(placement.affinity, f"{field}.affinity")) is not None:
        raise InvalidSpec(*found)
    for key, value in placement.node_selector.items():
        if not is_label_key(key):
            raise InvalidSpec(
                f"{field}.nodeSelector",
                f"nodeSelector keys must be label keys: {key!r} is not (an optional DNS "
                "subdomain prefix and '/', then a name of letters, digits, '-', '_' and '.')",
            )
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise InvalidSpec(
                f"{field}.nodeSelector",
                f"nodeSelector values must be label values: {value!r} is not (at most 63 "
                "letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
            )
    for index, toleration in enumerate(placement.tolerations):
        at = f"{field}.tolerations[{index}]"
        tol_key = toleration.get("key")
        if isinstance(tol_key, str) and tol_key != "" and not is_label_key(tol_key):
            raise InvalidSpec(f"{at}.key", f"a toleration key must be a label key: {tol_key!r}")
        if "tolerationSeconds" in toleration and toleration.get("effect") != "NoExecute":
            raise InvalidSpec(
                f"{at}.tolerationSeconds", "tolerationSeconds is only allowed with effect NoExecute"
            )
    classes = (
        ("runtimeClassName", placement.runtime_class_name, "RuntimeClass"),
        ("priorityClassName", placement.priority_class_name, "PriorityClass"),
    )
    for name, class_name, kind in classes:
        if class_name and not _DNS_SUBDOMAIN_STRICT.match(class_name):
            raise InvalidSpec(
                f"{field}.{name}",
                f"{name} must be a {kind} name (lowercase letters, digits, '-' and '.'): "
                f"{class_name!r}",
            )


def _check_cache(cache: Cache) -> None:
    if cache.storage_class_name and not _DNS_SUBDOMAIN_STRICT.match(cache.storage_class_name):
        raise InvalidSpec(
            "spec.cache.storageClassName",
            "storageClassName must be a StorageClass name (lowercase letters, digits, '-' and "
            f"'.'): {cache.storage_class_name!r}",
        )
    if (
        cache.kind == "PersistentVolumeClaim"
        and cache.size is None
        and cache.existing_claim is None
    ):
        raise InvalidSpec(
            "spec.cache.size",
            "cache.kind PersistentVolumeClaim needs spec.cache.size (to create a claim) or "
            "spec.cache.existingClaim (to use one)",
        )
    if cache.kind == "HostPath" and cache.host_path is None:
        raise InvalidSpec(
            "spec.cache.hostPath",
            "cache.kind HostPath needs spec.cache.hostPath, an absolute directory on the node",
        )
    if cache.host_path is not None:
        if cache.kind != "HostPath":
            raise InvalidSpec(
                "spec.cache.hostPath", "hostPath is only allowed with spec.cache.kind HostPath"
            )
        if not cache.host_path.startswith("/"):
            raise InvalidSpec(
                "spec.cache.hostPath",
                f"{cache.host_path!r} must be an absolute path, starting with /",
            )
    if cache.existing_claim is not None:
        if cache.kind != "PersistentVolumeClaim":
            raise InvalidSpec(
                "spec.cache.existingClaim",
                "existingClaim is only allowed with spec.cache.kind PersistentVolumeClaim",
            )
        if cache.size is not None:
            raise InvalidSpec(
                "spec.cache.size",
                "spec.cache.size and spec.cache.existingClaim exclude each other: an existing "
                "claim keeps its own size; drop size",
            )
        if not _DNS_SUBDOMAIN.match(cache.existing_claim):
            raise InvalidSpec(
                "spec.cache.existingClaim",
                f"{cache.existing_claim!r} is not a valid PersistentVolumeClaim name",
            )


def _check_engine(spec: ModelServerSpec) -> None:
    engine = spec.engine
    if engine.kind == "custom" and spec.image.worker is None:
        raise InvalidSpec(
            "spec.image.worker", "engine custom needs the image to run: set spec.image.worker"
        )
    if engine.kind == "custom" and not engine.command:
        raise InvalidSpec(
            "spec.engine.command", "engine custom needs the command that starts the server"
        )
    if engine.kind == "builtin" and engine.command:
        raise InvalidSpec(
            "spec.engine.command",
            "the builtin engine runs glowplug-worker; a command applies to the other engines",
        )
    for name, path in (
        ("readinessPath", engine.readiness_path),
        ("livenessPath", engine.liveness_path),
    ):
        if path is not None and (not path.startswith("/") or any(c.isspace() for c in path)):
            raise InvalidSpec(
                f"spec.engine.{name}", f"{path!r} must be an HTTP path starting with /"
            )
    if engine.kind != "builtin" and spec.model.task != "generate":
        raise InvalidSpec(
            "spec.model.task",
            f"task {spec.model.task} is served by the builtin engine only; engine "
            f"{engine.kind} serves generate (give the engine's own options in spec.engine.args "
            "with engine custom)",
        )


def _check_optimizations(optimizations: list[Optimization], engine: str = "builtin") -> None:
    seen: set[str] = set()
    for index, flag in enumerate(optimizations):
        field = f"spec.startup.optimizations[{index}]"
        if not _DNS_LABEL.match(flag.name):
            raise InvalidSpec(
                f"{field}.name",
                f"{flag.name!r} must be lowercase letters, digits and '-', "
                "starting and ending with a letter or digit",
            )
        if flag.name in seen:
            raise InvalidSpec(
                f"{field}.name",
                f"optimization {flag.name!r} is listed twice; startup.optimizations names "
                "must be unique",
            )
        seen.add(flag.name)
        if engine != "builtin" and flag.builtin and flag.name not in PREFETCH_FLAGS:
            raise InvalidSpec(
                f"{field}.name",
                f"{flag.name!r} is a flag of glowplug's builtin engine, not of engine {engine}; "
                + _engine_flags_hint(engine),
            )
        known = flag.builtin or known_flag(engine, flag.name) is not None
        if not known and not flag.env and not flag.args:
            raise InvalidSpec(
                field,
                f"optimization {flag.name!r} is not a flag engine {engine} knows: "
                + _engine_flags_hint(engine)
                + "; a custom flag needs env or args",
            )
        for key in flag.env:
            if len(key) > 256 or not _ENV_NAME.match(key):
                raise InvalidSpec(
                    f"{field}.env",
                    f"{key!r} is not a valid environment variable name: use letters, digits "
                    "and '_', not starting with a digit",
                )
            if key == "HOME" or key.startswith(("HF_", "GLOWPLUG_")):
                raise InvalidSpec(
                    f"{field}.env",
                    f"{key!r}: env may not set HOME, HF_* or GLOWPLUG_*: the worker sets them "
                    "itself (cache, offline mode, its own options)",
                )


def _check_overlap_download(spec: ModelServerSpec) -> None:
    """`overlap-download` moves the download into the worker container, which never sees the
    source's credentials: the two cannot go together."""
    names = [f.name for f in spec.startup.optimizations]
    if OVERLAP_DOWNLOAD in names and spec.model.credentials_secret_ref is not None:
        raise InvalidSpec(
            f"spec.startup.optimizations[{names.index(OVERLAP_DOWNLOAD)}].name",
            f"{OVERLAP_DOWNLOAD} has the worker download the model, and the worker never gets "
            "spec.model.credentialsSecretRef (only the prefetch init container does); drop the "
            "flag for a source that needs credentials",
        )


def _check_rollout(rollout: RolloutStrategy) -> None:
    for field, value in (
        ("spec.rollout.maxSurge", rollout.max_surge),
        ("spec.rollout.maxUnavailable", rollout.max_unavailable),
    ):
        if isinstance(value, bool) or (isinstance(value, int) and not 0 <= value <= 100):
            raise InvalidSpec(field, f"must be a count from 0 to 100 or a percentage (got {value})")
        if isinstance(value, str) and not _PERCENT.match(value):
            raise InvalidSpec(
                field, f"must be a count or a percentage such as '25%' (got {value!r})"
            )
    if _zero(rollout.max_surge) and _zero(rollout.max_unavailable):
        raise InvalidSpec(
            "spec.rollout",
            "maxSurge and maxUnavailable cannot both be 0: no pod could be replaced; "
            "use maxSurge 1 (room for one more pod) or maxUnavailable 1 (replace in place)",
        )


def _engine_flags_hint(engine: str) -> str:
    names = list(BUILTIN_OPTIMIZATIONS) if engine == "builtin" else list(PREFETCH_FLAGS)
    names += list(ENGINES[engine].flags)
    return f"engine {engine} knows {', '.join(names)}"


def _check_image(image: Image) -> None:
    if image.worker is not None and any(c.isspace() for c in image.worker):
        raise InvalidSpec("spec.image.worker", f"{image.worker!r} must not contain whitespace")
    for index, name in enumerate(image.pull_secrets):
        if not name:
            raise InvalidSpec(f"spec.image.pullSecrets[{index}].name", "needs a Secret name")


def check_fields(spec: ModelServerSpec) -> None:
    """The checks across the typed spec's fields, in the order of the spec."""
    _check_model(spec.model)
    for field, value, positive in (
        ("spec.resources.memory", spec.resources.memory, False),
        ("spec.resources.cpu", spec.resources.cpu, False),
        ("spec.cache.size", spec.cache.size, True),
    ):
        _check_quantity(field, value, positive=positive)
    _check_placement(spec.placement)
    _check_cache(spec.cache)
    _check_engine(spec)
    _check_optimizations(spec.startup.optimizations, spec.engine.kind)
    _check_overlap_download(spec)
    _check_image(spec.image)
    _check_rollout(spec.rollout)
