"""The shape of a pod's affinity, for `spec.placement.affinity` (free-form in the CRD).

The API server stores any object there, but server-side apply of the Deployment needs a typed
object: a field the Affinity type does not declare, or a value of the wrong type, fails every
apply with a 500 ("failed to create typed patch object ... field not declared in schema"),
which is retried forever with no status. Found by the hostile-spec suite; checked here so the
ModelServer gets Ready=False, InvalidSpec, naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STR, INT, STR_MAP = "string", "integer", "map of strings"
_REQUIREMENT = {"key": STR, "operator": STR, "values": [STR]}
_LABEL_SELECTOR = {"matchLabels": STR_MAP, "matchExpressions": [_REQUIREMENT]}
_NODE_TERM = {"matchExpressions": [_REQUIREMENT], "matchFields": [_REQUIREMENT]}
_POD_TERM = {
    "labelSelector": _LABEL_SELECTOR,
    "namespaceSelector": _LABEL_SELECTOR,
    "namespaces": [STR],
    "topologyKey": STR,
    "matchLabelKeys": [STR],
    "mismatchLabelKeys": [STR],
}
_POD_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": [_POD_TERM],
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": INT, "podAffinityTerm": _POD_TERM}
    ],
}
AFFINITY: dict[str, Any] = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_NODE_TERM]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": INT, "preference": _NODE_TERM}
        ],
    },
    "podAffinity": _POD_AFFINITY,
    "podAntiAffinity": _POD_AFFINITY,
}


def affinity_problem(value: Any, path: str, schema: Any = None) -> tuple[str, str] | None:
    """(field path, what is wrong) for the first field of `value` that a pod's affinity does
    not declare or whose value has the wrong type; None when it has the Affinity type's shape."""
    schema = AFFINITY if schema is None else schema
    if value is None:
        return None  # a null field is an unset one
    if schema == STR:
        return None if isinstance(value, str) else (path, "must be a string")
    if schema == INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else (path, "must be an integer")
    if schema == STR_MAP:
        if isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
            return None
        return (path, "must be a map of strings to strings")
    if isinstance(schema, list):
        if not isinstance(value, list):
            return (path, "must be a list")
        for i, item in enumerate(value):
            if (found := affinity_problem(item, f"{path}[{i}]", schema[0])) is not None:
                return found
        return None
    if not isinstance(value, Mapping):
        return (path, "must be an object")
    for key, item in value.items():
        if key not in schema:
            known = ", ".join(schema)
            return (f"{path}.{key}", f"is not a field of a pod's affinity here (known: {known})")
        if (found := affinity_problem(item, f"{path}.{key}", schema[key])) is not None:
            return found
    return None
