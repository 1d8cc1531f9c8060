"""Generic helpers for Kubernetes objects as plain dicts: quantities, and "is what the operator
applied still contained in the live object"."""

from __future__ import annotations

from typing import Any

from glowplug_operator.quantity import parse_quantity


def contains(live: Any, wanted: Any) -> bool:
    """True when every field the operator wants is in the live object with the same value.
    Fields the API server or others added are ignored; lists must match item by item."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    if live == wanted:
        return True
    # 1 vs "1", 0.5 vs "500m", "1.5Gi" vs "1536Mi": the API server stores canonical quantities.
    a, b = parse_quantity(live), parse_quantity(wanted)
    return a is not None and a == b
