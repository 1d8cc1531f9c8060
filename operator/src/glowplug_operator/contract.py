"""The strings both sides of the pod/ModelServer interface read: the one home for each of them.

The builders write these onto the children and the pod template; the observations read them
back from pods; the watch streams are filtered by them. A constant defined here and
nowhere else means the writer and the reader cannot drift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# The custom resource.
GROUP = "glowplug.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelServer"
PLURAL = "modelservers"

# Labels on every child and pod.
MODELSERVER_LABEL = f"{GROUP}/modelserver"  # the owning ModelServer's name
MANAGED_BY = {"app.kubernetes.io/managed-by": "glowplug"}
MANAGED_BY_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())  # lists and watches
# The pod template's effective flags: names in an annotation (comma-separated, "" for none) and
# their `flag_set_hash` in a label.
FLAGS_ANNOTATION = f"{GROUP}/optimizations"
FLAGS_HASH_LABEL = f"{GROUP}/optimizations-hash"
# A trial's restart token on the pod template: a new value rolls out the same flags again.
TRIAL_ANNOTATION = f"{GROUP}/trial"
# On the ModelServer, set by a user: "all" or flag names to take out of RolledBack/Disabled.
RETRY_ANNOTATION = f"{GROUP}/retry-optimizations"

# The pod's containers and where they leave their termination report.
INIT_CONTAINER = "prefetch"
CACHE_OWNER_CONTAINER = "cache-owner"  # HostPath caches only: chowns the node directory
WORKER_CONTAINER = "worker"
TERMINATION_PATH = "/dev/termination-log"

# Who the operator's Events say they come from.
REPORTING_COMPONENT = f"{GROUP}/operator"


def cache_claim_name(modelserver: str) -> str:
    """The PersistentVolumeClaim the operator creates for a ModelServer's weight cache."""
    return f"{modelserver}-cache"


def child_name(kind: str, modelserver: str) -> str:
    """The name of a ModelServer's child of `kind`: the ModelServer's own, but the cache claim."""
    return cache_claim_name(modelserver) if kind == "PersistentVolumeClaim" else modelserver


def flag_set_hash(flags: Sequence[str], fingerprints: Mapping[str, str] | None = None) -> str:
    """The FLAGS_HASH_LABEL value for a flag set: order-insensitive, 16 hex characters.

    `fingerprints` (flag name -> hash of its definition, see `flag_fingerprint`) makes a changed
    env/args of a flag a different flag set.
    """
    prints = fingerprints or {}
    canonical = ",".join(f"{name}={prints.get(name, '')}" for name in sorted(set(flags)))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flag_fingerprint(definition: Mapping[str, Any]) -> str:
    """A short hash of one spec.startup.optimizations[] entry (name, env, args...)."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
