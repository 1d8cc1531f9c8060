"""The cache's PersistentVolumeClaim as an observation: whether it is bound and, from the
StorageClasses, why not (`blockers.claim_message` says it in words).

Pure: a raw claim and the StorageClasses by name (as the store keeps them) in, an observation out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from glowplug_operator.timestamps import parse_time

# How a claim's storage class provisions (observe_claim): `missing` (no such StorageClass),
# `unnamed` (no class named and no default one), `manual` (kubernetes.io/no-provisioner: a
# PersistentVolume must be made for it), `first-consumer` (WaitForFirstConsumer, no pod scheduled
# yet), `provisioner` (a provisioner is to create the volume), `unknown` (the classes are not
# known: not listed yet, or not readable).
ClassState = Literal["missing", "unnamed", "manual", "first-consumer", "provisioner", "unknown"]
NO_PROVISIONER = "kubernetes.io/no-provisioner"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"


@dataclass(frozen=True)
class ClaimObservation:
    """The cache's PersistentVolumeClaim, with what its StorageClass says about binding it."""

    name: str
    bound: bool
    phase: str  # Pending | Bound | Lost
    storage_class: str | None
    class_state: ClassState
    provisioner: str | None
    created: datetime | None


def observe_claim(
    claim: Mapping[str, Any], storage_classes: Mapping[str, Mapping[str, Any]] | None
) -> ClaimObservation:
    """`storage_classes`: every StorageClass by name, None when they are not known."""
    meta = _dict(claim.get("metadata"))
    spec = _dict(claim.get("spec"))
    phase = str(_dict(claim.get("status")).get("phase") or "Pending")
    named = spec.get("storageClassName")
    name = named if isinstance(named, str) and named else None
    state: ClassState = "unknown"
    provisioner = None
    if storage_classes is not None:
        if name is None:
            defaults = [
                c
                for c in storage_classes.values()
                if _dict(_dict(c.get("metadata")).get("annotations")).get(DEFAULT_CLASS_ANNOTATION)
                == "true"
            ]
            # A default class is written into the claim by the API server or the PV
            # controller; until then the claim waits for it.
            state = "unnamed" if not defaults else "unknown"
        elif (found := storage_classes.get(name)) is None:
            state = "missing"
        else:
            raw = found.get("provisioner")
            provisioner = raw if isinstance(raw, str) else None
            selected = _dict(meta.get("annotations")).get(SELECTED_NODE_ANNOTATION)
            if provisioner == NO_PROVISIONER:
                state = "manual"
            elif found.get("volumeBindingMode") == "WaitForFirstConsumer" and not selected:
                state = "first-consumer"
            else:
                state = "provisioner"
    return ClaimObservation(
        name=str(meta.get("name", "")),
        bound=phase == "Bound",
        phase=phase,
        storage_class=name,
        class_state=state,
        provisioner=provisioner,
        created=parse_time(meta.get("creationTimestamp")),
    )


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
