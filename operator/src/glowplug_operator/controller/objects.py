"""Generic helpers for Kubernetes objects as plain dicts: quantities, and "is what the operator
applied still contained in the live object"."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"),
    **{s: Decimal(10) ** (3 * i) for i, s in enumerate("kMGTPE", 1)},
    **{f"{s}i": Decimal(2) ** (10 * i) for i, s in enumerate("KMGTPE", 1)},
}  # fmt: skip


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity's value, or None for anything that is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) not in _SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None


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
