"""The chaos suite's flap detector (tests/cluster/ready_watch.py): a Ready True -> False for the
generation already Ready is a flap; one that comes with a new generation is a spec change's."""

from __future__ import annotations

from typing import Any

from tests.cluster.ready_watch import flaps


def _v(name: str, rv: int, observed: int | None, ready: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if observed is not None:
        status["observedGeneration"] = observed
    if ready is not None:
        status["conditions"] = [
            {"type": "Ready", "status": ready, "reason": "Starting", "message": "0/1 ready"}
        ]
    return {
        "metadata": {"name": name, "resourceVersion": str(rv), "generation": observed or 1},
        "status": status,
    }


def test_ready_false_at_the_same_generation_is_a_flap() -> None:
    found, dips = flaps([_v("a", 1, 1, "False"), _v("a", 2, 1, "True"), _v("a", 3, 1, "False")])
    assert found == ["a gen 1: Starting: 0/1 ready"]
    assert dips == 0


def test_ready_false_for_a_new_generation_is_no_flap() -> None:
    found, dips = flaps([_v("a", 1, 1, "True"), _v("a", 2, 2, "False"), _v("a", 3, 2, "True")])
    assert (found, dips) == ([], 1)


def test_starting_is_no_flap_and_versions_seen_twice_count_once() -> None:
    versions = [_v("a", 1, None, None), _v("a", 2, 1, "False"), _v("b", 3, 1, "True")]
    assert flaps([*versions, versions[2], _v("b", 4, 1, "True")]) == ([], 0)


def test_each_modelserver_is_judged_on_its_own() -> None:
    found, _ = flaps([_v("a", 1, 1, "True"), _v("b", 2, 1, "False"), _v("a", 3, 1, "False")])
    assert found == ["a gen 1: Starting: 0/1 ready"]
