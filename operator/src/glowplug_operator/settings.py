"""The operator's settings: one object, loaded once from GLOWPLUG_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PREFIX = "GLOWPLUG_"


class SettingsError(ValueError):
    """A GLOWPLUG_* variable has a value the operator cannot use."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    worker_image: str = Field(default="ghcr.io/glowplug/worker:0.1.0", min_length=1)
    """Image of the builtin engine's worker container unless a ModelServer overrides it."""
    prefetch_image: str = Field(default="ghcr.io/glowplug/prefetch:0.1.0", min_length=1)
    """Image of the prefetch init container, for every engine (no torch: small)."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces."""
    default_budget_seconds: int = Field(default=900, ge=30, le=86400)
    """Startup budget for a ModelServer that sets none (becomes the startup probe's window)."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    health_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the liveness endpoint /healthz (the chart's probe); 0 turns it off."""
    field_manager: str = "glowplug"
    """The one server-side-apply field manager the operator writes with."""
    cache_mount_path: str = "/models"
    """Where the weight cache volume is mounted in both containers."""
    reconcile_workers: int = Field(default=16, ge=1, le=256)
    """How many ModelServers are reconciled at once."""
    first_status_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    """How long a new ModelServer's first status may wait for its pods to turn Ready, so that a
    quick start is one status write, not two; meanwhile the CRD's default status says Ready
    Unknown (Pending). 0 writes it at once."""
    resync_seconds: float = Field(default=300.0, ge=5)
    """A converged ModelServer is re-checked this often (reads only; writes only on drift)."""
    api_threads: int = Field(default=16, ge=1, le=256)
    """Threads (and connections) for the API gateway's blocking calls: writes in flight at once."""
    leader_election: bool = False
    """Run as one of several replicas: only the holder of the Lease reconciles and writes."""
    lease_name: str = Field(default="glowplug-operator", min_length=1)
    lease_namespace: str = ""
    """Where the Lease lives (the chart: the operator's own namespace); needed with
    leader_election."""
    lease_seconds: int = Field(default=8, ge=4, le=120)
    """How long a Lease not renewed keeps a standby out: a SIGKILLed leader's replica takes
    over within about this plus 4 s."""
    identity: str = ""
    """This replica's name in the Lease and in its Events' reportingInstance (the chart: the
    pod's name); empty: hostname-pid."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    """`text` for people, `json` (one object per line) for log pipelines."""
    host_path_prefixes: tuple[str, ...] = ()
    """Directories under which a ModelServer may put a HostPath cache; empty turns HostPath
    caches off (a node directory is shared by every namespace's pods on that node)."""

    @field_validator("host_path_prefixes", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("host_path_prefixes")
    @classmethod
    def _absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/") or ".." in path.split("/") or path == "/":
                raise ValueError(f"{path!r} must be an absolute directory other than /")
        return tuple(path.rstrip("/") for path in value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.health_port:
            raise ValueError(
                f"metrics_port: port {self.health_port} is the health port; pick another"
            )
        return self

    @model_validator(mode="after")
    def _lease_namespace(self) -> Settings:
        if self.leader_election and not self.lease_namespace:
            raise ValueError(
                "lease_namespace: set it (the namespace of the Lease) to elect a leader"
            )
        return self

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {
            key[len(PREFIX) :].lower(): value
            for key, value in env.items()
            if key.startswith(PREFIX) and key[len(PREFIX) :].lower() in cls.model_fields
        }
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            if first["loc"]:
                name = PREFIX + str(first["loc"][0]).upper()
                raise SettingsError(
                    f"{name}: {first['msg']} (got {first.get('input')!r})"
                ) from None
            field, _, message = str(first["msg"]).removeprefix("Value error, ").partition(": ")
            raise SettingsError(f"{PREFIX}{field.upper()}: {message}") from None
