"""What the store keeps of a watched object: all the reconciler reads, once in memory."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
from glowplug_operator.controller.store import SHARED_CHARS, Store

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "llama",
        "namespace": "ml",
        "labels": {"glowplug.dev/modelserver": "llama", "app.kubernetes.io/managed-by": "glowplug"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "managedFields": [{"manager": "glowplug", "operation": "Apply"}],
        "resourceVersion": "42",
    },
    "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "worker"}]}}},
    "status": {
        "conditions": [
            {"type": "Available", "status": "True", "message": "x" * (SHARED_CHARS + 1)},
        ],
    },
}


def _parsed() -> dict[str, Any]:
    """As a watch event delivers it: a fresh parse (orjson), no value shared with another."""
    return dict(orjson.loads(json.dumps(DEPLOYMENT)))


def test_the_store_keeps_everything_but_managed_fields_and_the_last_applied_annotation() -> None:
    store = Store()
    store.put_child("Deployment", _parsed())
    kept = store.child("Deployment", "ml", "llama")
    expected = copy.deepcopy(DEPLOYMENT)
    del expected["metadata"]["managedFields"]
    expected["metadata"]["annotations"] = {}
    assert kept == expected


def test_two_objects_in_the_store_share_their_keys_and_short_strings() -> None:
    store = Store()
    first, second = _parsed(), _parsed()
    second["metadata"]["name"] = "mistral"
    assert (
        first["status"]["conditions"][0]["status"]
        is not second["status"]["conditions"][0]["status"]
    )
    store.put_child("Deployment", first)
    store.put_child("Deployment", second)
    a = store.child("Deployment", "ml", "llama")
    b = store.child("Deployment", "ml", "mistral")
    assert a is not None and b is not None
    cond_a, cond_b = a["status"]["conditions"][0], b["status"]["conditions"][0]
    assert cond_a["status"] is cond_b["status"]  # "True"
    assert next(iter(cond_a)) is next(iter(cond_b))  # the key "type"
    assert cond_a["message"] == cond_b["message"]  # long strings are kept, not shared
