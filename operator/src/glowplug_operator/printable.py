"""Characters a spec string may hold: what the API server's apply decoder (YAML 1.2) accepts.

The API server stores a ModelServer with any JSON string, but a child written by server-side
apply goes through a YAML decoder that refuses control characters (U+007F, C0 and C1 controls
but tab, newline and carriage return, U+FFFE/U+FFFF). Found by the hostile-spec suite: a
`revision` of U+007F was accepted, then every apply of the Deployment failed with "yaml: control
characters are not allowed", naming no field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def first_unprintable(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, character) of the first string, key or value, under `value` holding a
    character the apply decoder refuses; None when there is none."""
    if isinstance(value, str):
        match = _UNPRINTABLE.search(value)
        return (path, match.group()) if match else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            at = f"{path}.{key}"
            if isinstance(key, str) and (match := _UNPRINTABLE.search(key)):
                return (at, match.group())
            if (found := first_unprintable(item, at)) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := first_unprintable(item, f"{path}[{i}]")) is not None:
                return found
    return None
