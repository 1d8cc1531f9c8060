"""What `kubectl glowplug` prints (glowplug_operator.kubectl.render) and the retry value it
writes, on a ModelServer the operator wrote on the local cluster (tests/data/statuses/) and on
hand-made cold starts. tests/e2e/test_operations.py runs the plugin through kubectl."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from glowplug_operator.kubectl.cli import PluginError, parse, retry_value
from glowplug_operator.kubectl.render import explain_text, status_text, timeline
from glowplug_operator.timestamps import iso, parse_time

ROOT = Path(__file__).resolve().parents[2]


def rolled_back() -> dict[str, Any]:
    """The last status of the e2e rollback scenario: fast-load rolled back, serving without it."""
    steps = json.loads((ROOT / "tests/data/statuses/rollback-by-report.json").read_text())["steps"]
    obj: dict[str, Any] = steps[-1]["object"]
    obj["metadata"]["namespace"] = "ml"
    return obj


def now_of(obj: dict[str, Any]) -> datetime:
    times = [parse_time(c["lastTransitionTime"]) for c in obj["status"]["conditions"]]
    return max(t for t in times if t) + timedelta(seconds=30)


def event(reason: str, message: str, at: datetime, type_: str = "Warning") -> dict[str, Any]:
    return {"type": type_, "reason": reason, "message": message, "lastTimestamp": iso(at)}


class TestTimeline:
    def test_phases_follow_each_other_and_the_workers_run_inside_its_start(self) -> None:
        phases = {"schedule": 2.0, "download": 8.0, "start": 10.0, "import": 4.0, "load": 6.0}
        bars = {name: bar for name, _, bar in timeline(phases, width=20)}
        assert bars == {
            "schedule": "██",
            "download": "  ████████",
            "start": "          ██████████",
            "import": "          ████",
            "load": "              ██████",
        }

    def test_a_workers_own_download_runs_beside_its_import(self) -> None:
        """overlap-download: scheduled to Ready (10 s) is imagePull and start; the download
        (4 s) cannot have come between them."""
        phases = {"imagePull": 2.0, "start": 8.0, "download": 4.0, "import": 5.0, "load": 3.0}
        bars = {name: bar for name, _, bar in timeline(phases, width=10, total=10.0)}
        assert bars == {
            "imagePull": "██",
            "start": "  ████████",
            "download": "  ████",
            "import": "  █████",
            "load": "       ███",
        }
        # An init container's download tiles the start with the rest.
        init = {"imagePull": 2.0, "download": 4.0, "start": 4.0, "import": 3.0}
        bars = {name: bar for name, _, bar in timeline(init, width=10, total=10.0)}
        assert bars["download"] == "  ████" and bars["start"] == "      ████"

    def test_an_unknown_phase_comes_last_and_a_zero_phase_has_no_bar(self) -> None:
        rows = timeline({"start": 3.0, "schedule": 0.0, "imagePull": 1.0, "mystery": 1.0}, width=10)
        assert [(name, bar) for name, _, bar in rows] == [
            ("schedule", ""),
            ("imagePull", "██"),
            ("start", "  ██████"),
            ("mystery", "        ██"),
        ]

    def test_no_phases(self) -> None:
        assert timeline({}) == []


class TestStatus:
    def test_a_rolled_back_flag_its_reason_and_history(self) -> None:
        obj = rolled_back()
        now = now_of(obj)
        events = [
            event(
                "OptimizationRolledBack",
                "rolled back flag fast-load: in phase load: RuntimeError: misaligned",
                now - timedelta(seconds=20),
            ),
            event("Ready", "1/1 replicas serve the model", now - timedelta(seconds=5), "Normal"),
        ]
        text = status_text(obj, events, now)
        lines = text.splitlines()
        assert lines[0].startswith("ModelServer ml/evidence  replicas 1/1  generation 1")
        flag = next(line for line in lines if line.strip().startswith("fast-load"))
        assert flag.split()[:3] == ["fast-load", "RolledBack", "FailedInPhase"]
        assert "misaligned address" in flag
        ready = next(line for line in lines if line.strip().startswith("Ready "))
        assert ready.split()[:3] == ["Ready", "True", "Serving"]
        assert "running now: prefetch-weights, slim-imports" in text
        history = text[text.index("HISTORY") :].splitlines()
        assert history[2].split()[:3] == ["20s", "Warning", "OptimizationRolledBack"]
        assert history[3].split()[:3] == ["5s", "Normal", "Ready"]

    def test_the_cold_start_as_bars(self) -> None:
        obj = rolled_back()
        obj["status"]["coldStart"] = {
            "lastSeconds": 20.0,
            "phases": {"schedule": 2.0, "download": 8.0, "start": 10.0, "import": 4.0},
        }
        text = status_text(obj, [], now_of(obj))
        assert "COLD START  20.0s from scheduling to Ready" in text
        download = next(line for line in text.splitlines() if line.strip().startswith("download"))
        assert download.split("|")[1] == " " * 4 + "█" * 16 + " " * 20

    def test_before_the_operator_wrote_a_status(self) -> None:
        obj = {"metadata": {"name": "new", "namespace": "ml", "generation": 1}}
        text = status_text(obj, [], datetime(2026, 1, 1, tzinfo=UTC))
        assert "CONDITIONS  (none yet)" in text
        assert "COLD START  (no pod has become Ready yet)" in text
        assert "generation 1 (status describes -)" in text

    def test_the_crds_default_status_has_no_transition_age(self) -> None:
        crd = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        obj = {
            "metadata": {
                "name": "new",
                "namespace": "ml",
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "status": schema["properties"]["status"]["default"],
        }
        text = status_text(obj, [], datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
        ready = next(line for line in text.splitlines() if line.strip().startswith("Ready"))
        assert ready.split()[:4] == ["Ready", "Unknown", "Pending", "-"], ready
        assert "generation 1 (status describes 0)" in text


class TestExplainRollback:
    def test_names_the_decision_its_evidence_and_its_events(self) -> None:
        obj = rolled_back()
        now = now_of(obj)
        events = [
            event(
                "OptimizationRolledBack",
                "rolled back flag fast-load: in phase load: RuntimeError: misaligned address",
                now - timedelta(seconds=20),
            )
        ]
        text = explain_text(obj, events, now)
        block = text[text.index("fast-load: RolledBack") :].split("\n\n")[0]
        assert "fast-load: RolledBack (FailedInPhase)" in block
        assert "why: in phase load: RuntimeError: CUDA error: misaligned address" in block
        assert "OptimizationRolledBack" in block
        sets = text[text.index("FLAG SETS TRIED") :]
        assert "[prefetch-weights, fast-load, slim-imports]" in sets
        assert "never Ready" in sets
        assert "[prefetch-weights, slim-imports]" in sets
        assert "reached Ready" in sets

    def test_the_kept_reports_of_the_set_in_force(self) -> None:
        obj = rolled_back()
        obj["status"]["rollout"]["sets"][0]["recent"] = [
            {
                "seq": 3,
                "at": "2026-11-30T09:00:00Z",
                "kind": "failed",
                "phase": "load",
                "flag": "fast-load",
                "error": "RuntimeError: misaligned address",
            }
        ]
        text = explain_text(obj, [], now_of(obj))
        line = next(li for li in text.splitlines() if "2026-11-30T09:00:00Z" in li)
        assert line.split()[1:6] == ["failed", "phase", "load", "report", "blames"]
        assert line.rstrip().endswith("RuntimeError: misaligned address")

    def test_nothing_to_explain(self) -> None:
        obj = rolled_back()
        for state in obj["status"]["optimizations"]:
            state.update(state="Active", failures=0)
        assert "No flag has been rolled back" in explain_text(obj, [], now_of(obj))


class TestRetryValue:
    def test_all_rolled_back_flags_by_default(self) -> None:
        assert retry_value(rolled_back(), []) == ("fast-load", ["fast-load"])

    def test_a_value_already_honoured_is_written_differently_with_the_same_flags(self) -> None:
        obj = rolled_back()
        obj["metadata"]["annotations"] = {"glowplug.dev/retry-optimizations": "fast-load"}
        assert retry_value(obj, ["fast-load"])[0] == "fast-load,fast-load"
        obj["metadata"]["annotations"]["glowplug.dev/retry-optimizations"] = (
            "fast-load,slim-imports"
        )
        assert retry_value(obj, ["fast-load", "slim-imports"])[0] == "slim-imports,fast-load"

    def test_an_unknown_flag_is_refused(self) -> None:
        with pytest.raises(PluginError, match="nope: not a flag of this ModelServer"):
            retry_value(rolled_back(), ["nope"])

    def test_nothing_to_retry(self) -> None:
        obj = rolled_back()
        for state in obj["status"]["optimizations"]:
            state["state"] = "Active"
        with pytest.raises(PluginError, match="nothing to retry"):
            retry_value(obj, [])


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "ml", "--context", "prod", "retry", "llama", "fast-load"],
        ["retry", "llama", "fast-load", "-n", "ml", "--context", "prod"],
        ["--context=prod", "retry", "-n", "ml", "llama", "fast-load"],
    ],
    ids=["before", "after", "both"],
)
def test_kubectl_flags_before_or_after_the_command(argv: list[str]) -> None:
    options = parse(argv)
    assert (options.command, options.name, options.flags) == ("retry", "llama", ["fast-load"])
    assert (options.namespace, options.context, options.kubeconfig) == ("ml", "prod", None)
