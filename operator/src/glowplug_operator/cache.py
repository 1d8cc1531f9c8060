"""The weights' cache: the key a model's files are fetched and stored under, the directory
that key names in the cache volume, and the volume itself. The prefetcher's arguments and the
worker's model path both come from here, so the two always agree."""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from glowplug_operator.contract import cache_claim_name
from glowplug_operator.settings import Settings
from glowplug_operator.spec import ModelServerSpec


@dataclass(frozen=True)
class PrefetchKey:
    """Everything the prefetcher is told about what to fetch, and so everything its own cache
    key (source, revision, include globs) is made of. The prefetch arguments and the model
    directory both come from this one value: two ModelServers share a directory exactly when
    their prefetchers would fetch the same files."""

    source: str
    revision: str | None
    includes: tuple[str, ...]
    sha256: str | None = None

    @classmethod
    def of(cls, spec: ModelServerSpec) -> PrefetchKey:
        m = spec.model
        return cls(m.source, m.revision, tuple(m.include), m.sha256)

    def args(self, dest: str) -> list[str]:
        args = ["--source", self.source, "--dest", dest]
        if self.revision:
            args += ["--revision", self.revision]
        for pattern in self.includes:
            args += ["--include", pattern]
        if self.sha256:
            args += ["--sha256", self.sha256]
        return args

    def digest(self) -> str:
        key = f"{self.source}@{self.revision or ''}"
        if self.includes:  # without globs, the key (and directory) of earlier versions
            key += "|" + json.dumps(sorted(set(self.includes)))  # as the prefetcher sorts them
        if self.sha256:  # likewise: only a spec that sets a digest gets a new directory
            key += "#sha256=" + self.sha256
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def model_dir(spec: ModelServerSpec, settings: Settings, namespace: str = "") -> str:
    """Where the weights live in the cache volume: keyed by the PrefetchKey, so ModelServers
    sharing a volume and a model share one download, and different globs never share one. On a
    HostPath cache (shared by every namespace on the node) the key starts with the namespace:
    no namespace reads, or plants, another's weights."""
    digest = PrefetchKey.of(spec).digest()
    if spec.cache.kind == "HostPath":
        return f"{settings.cache_mount_path}/{namespace}.{digest}"
    return f"{settings.cache_mount_path}/{digest}"


def host_path_problem(spec: ModelServerSpec, settings: Settings) -> str | None:
    """Why this operator refuses the spec's HostPath cache, or None (not HostPath, or allowed)."""
    path = spec.cache.host_path
    if spec.cache.kind != "HostPath" or path is None:
        return None
    if not settings.host_path_prefixes:
        return (
            "HostPath caches are off in this operator (GLOWPLUG_HOST_PATH_PREFIXES lists no "
            "directory); use a PersistentVolumeClaim or EmptyDir cache"
        )
    normal = posixpath.normpath(path)
    if ".." in path.split("/") or not any(
        normal == prefix or normal.startswith(prefix + "/")
        for prefix in settings.host_path_prefixes
    ):
        return (
            f"{path!r} is not under an allowed directory ({', '.join(settings.host_path_prefixes)})"
        )
    return None


def cache_volume_claim(owner_name: str, spec: ModelServerSpec) -> str | None:
    """The claim the cache volume mounts: the user's existing one, else the operator's."""
    if spec.cache.kind != "PersistentVolumeClaim":
        return None
    return spec.cache.existing_claim or cache_claim_name(owner_name)


def cache_volume(owner_name: str, spec: ModelServerSpec) -> dict[str, Any]:
    cache = spec.cache
    if cache.kind == "PersistentVolumeClaim":
        return {
            "name": "cache",
            "persistentVolumeClaim": {"claimName": cache_volume_claim(owner_name, spec)},
        }
    if cache.kind == "HostPath":
        return {"name": "cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    empty: dict[str, Any] = {"sizeLimit": cache.size} if cache.size else {}
    return {"name": "cache", "emptyDir": empty}
