"""The typed ModelServer spec: parse the custom resource body once, at the edge.

``parse_spec(body)`` turns a ModelServer body into a frozen ``ModelServerSpec`` with the same
defaults as the CRD (``crds/modelserver.yaml``), and raises ``InvalidSpec`` naming the field and
the fix for anything the CRD cannot catch, or did not catch because it was bypassed (an old CRD, a
direct write to etcd). Attribute names are snake_case; the YAML names are camelCase aliases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from glowplug_operator.engines import EngineKind
from glowplug_operator.printable import first_unprintable
from glowplug_operator.spec_checks import (
    BUILTIN_OPTIMIZATIONS,
    OVERLAP_DOWNLOAD,
    InvalidSpec,
    check_fields,
    check_name,
)

# The spec's own names, and the three of spec_checks that its users need with it.
__all__ = [
    "BUILTIN_OPTIMIZATIONS",
    "CAMEL_CASE",
    "OVERLAP_DOWNLOAD",
    "Cache",
    "CamelModel",
    "EngineSpec",
    "Image",
    "InvalidSpec",
    "ModelServerSpec",
    "ModelSource",
    "Optimization",
    "Placement",
    "Resources",
    "RolloutStrategy",
    "SecretRef",
    "Serving",
    "Startup",
    "parse_spec",
]


def _int_to_str(value: Any) -> Any:
    """Quantities are int-or-string in the CRD (``cpu: 8``); keep them as strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _secret_names(value: Any) -> Any:
    """``pullSecrets: [{name: a}]`` -> ``["a"]``; anything else is left for the type check."""
    if isinstance(value, list):
        return [
            item["name"] if isinstance(item, dict) and "name" in item else item for item in value
        ]
    return value


Quantity = Annotated[str, BeforeValidator(_int_to_str)]


# The resource's JSON is camelCase, the code's names snake_case: the spec's models and the status
# records (rollback/state.py) share this configuration.
CAMEL_CASE = ConfigDict(
    extra="ignore",
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
)


class CamelModel(BaseModel):
    """The base of the resource's models: camelCase JSON, frozen, strict types."""

    model_config = ConfigDict(**CAMEL_CASE, frozen=True, strict=True)


class SecretRef(CamelModel):
    name: str = Field(min_length=1, max_length=253)


class ModelSource(CamelModel):
    source: str = Field(min_length=1, max_length=2048)
    revision: str | None = Field(default=None, min_length=1, max_length=256)
    credentials_secret_ref: SecretRef | None = None
    task: Literal["generate", "embed"] = "generate"
    include: list[str] = Field(default_factory=list, max_length=64)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @property
    def scheme(self) -> str:
        """The URI scheme of the source: hf, s3, https, http, pvc or file."""
        return self.source.split("://", 1)[0]

    @property
    def location(self) -> str:
        """The source without its scheme: what follows ``://``."""
        return self.source.split("://", 1)[1] if "://" in self.source else ""

    @property
    def hf_repo(self) -> str | None:
        """For hf:// sources, the repository as ORG/NAME (without any @REVISION)."""
        return self.location.split("@", 1)[0] if self.scheme == "hf" else None

    @property
    def pvc_claim(self) -> str | None:
        """For pvc:// sources, the name of the PersistentVolumeClaim holding the weights."""
        return self.location.split("/", 1)[0] if self.scheme == "pvc" else None

    @property
    def pvc_path(self) -> str | None:
        """For pvc:// sources, the directory inside the claim ('' for its root), as a subPath."""
        if self.scheme != "pvc":
            return None
        parts = self.location.split("/", 1)
        return parts[1].strip("/") if len(parts) == 2 else ""


class Resources(CamelModel):
    gpus: int = Field(default=1, ge=0, le=16)
    memory: Quantity | None = None
    cpu: Quantity | None = None


class Placement(CamelModel):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    runtime_class_name: str | None = None
    priority_class_name: str | None = None


class Cache(CamelModel):
    kind: Literal["EmptyDir", "PersistentVolumeClaim", "HostPath"] = "EmptyDir"
    size: Quantity | None = None
    storage_class_name: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = "ReadWriteOnce"
    existing_claim: str | None = None
    host_path: str | None = None
    retain_on_delete: bool = False


class Optimization(CamelModel):
    name: str = Field(min_length=1, max_length=63)
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)

    @property
    def builtin(self) -> bool:
        """True for the flags glowplug implements; False for custom env/args toggles."""
        return self.name in BUILTIN_OPTIMIZATIONS


class Startup(CamelModel):
    budget_seconds: int | None = Field(default=None, ge=30, le=86400)
    optimizations: list[Optimization] = Field(default_factory=list, max_length=32)
    rollback: Literal["Automatic", "Off"] = "Automatic"


class Serving(CamelModel):
    port: int = Field(default=8000, ge=1024, le=65535)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    max_concurrency: int = Field(default=8, ge=1, le=1024)
    max_queue: int = Field(default=64, ge=0, le=100000)
    max_model_len: int | None = Field(default=None, ge=1, le=10_000_000)
    request_timeout_seconds: int = Field(default=120, ge=1, le=3600)


class Image(CamelModel):
    worker: str | None = Field(default=None, min_length=1, max_length=512)
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    pull_secrets: Annotated[list[str], BeforeValidator(_secret_names)] = Field(
        default_factory=list, max_length=16
    )


# spec.rollout: how the Deployment replaces pods when the template changes (a flag trial too).
class RolloutStrategy(CamelModel):
    """The Deployment's rolling update. The default, one extra pod and none unavailable, keeps
    serving through every change but needs room (a GPU) for one more pod; on a full cluster
    ``maxSurge: 0, maxUnavailable: 1`` replaces pods in place."""

    max_surge: int | str = Field(default=1)
    max_unavailable: int | str = Field(default=0)


class EngineSpec(CamelModel):
    """What runs in the worker container (engines.py): glowplug's own server or a stock one."""

    kind: EngineKind = "builtin"
    command: list[str] = Field(default_factory=list, max_length=16)
    args: list[str] = Field(default_factory=list, max_length=64)
    readiness_path: str | None = Field(default=None, min_length=1, max_length=256)
    liveness_path: str | None = Field(default=None, min_length=1, max_length=256)


class ModelServerSpec(CamelModel):
    """The whole spec. Build it with ``parse_spec``, which also runs the cross-field checks."""

    model: ModelSource
    replicas: int = Field(default=1, ge=0, le=100)
    rollout: RolloutStrategy = Field(default_factory=RolloutStrategy)
    resources: Resources = Field(default_factory=Resources)
    placement: Placement = Field(default_factory=Placement)
    cache: Cache = Field(default_factory=Cache)
    startup: Startup = Field(default_factory=Startup)
    serving: Serving = Field(default_factory=Serving)
    image: Image = Field(default_factory=Image)
    engine: EngineSpec = Field(default_factory=EngineSpec)


def parse_spec(body: Mapping[str, Any]) -> ModelServerSpec:
    """Parse a ModelServer body (the whole object; uses ``body["spec"]``) into a typed spec.

    Raises ``InvalidSpec`` with the field path and the fix when the spec cannot be valid.
    """
    raw = body.get("spec")
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec", "a ModelServer needs a spec with at least spec.model.source")
    check_name(body)
    if (found := first_unprintable(raw, "spec")) is not None:
        field, char = found
        raise InvalidSpec(
            field,
            f"contains the control character U+{ord(char):04X}, which Kubernetes refuses in the "
            "objects the operator writes; remove it",
        )
    try:
        spec = ModelServerSpec.model_validate(dict(raw))
    except ValidationError as error:
        raise _from_validation_error(error) from None
    check_fields(spec)
    return _with_source_revision(spec)


def _from_validation_error(error: ValidationError) -> InvalidSpec:
    first = error.errors()[0]
    field = "spec" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    )
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "this field is required"
    else:
        shown = repr(first.get("input"))
        message += f" (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
    more = len(error.errors()) - 1
    if more:
        message += f"; and {more} more problem{'s' if more > 1 else ''}"
    return InvalidSpec(field, message)


def _with_source_revision(spec: ModelServerSpec) -> ModelServerSpec:
    """For hf://ORG/NAME@REVISION sources, expose REVISION as ``spec.model.revision`` too."""
    model = spec.model
    if model.scheme != "hf" or model.revision is not None or "@" not in model.source:
        return spec
    revision = model.source.split("@", 1)[1]
    return spec.model_copy(update={"model": model.model_copy(update={"revision": revision})})
