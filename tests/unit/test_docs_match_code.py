"""The docs name only what the code has: every metric name in docs/, the READMEs and the chart's
dashboard exists in a registry of the code; the cold-start phase names agree between docs/api.md,
the CRD and what status.py writes; the Dockerfiles' image names are the chart's."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import yaml
from glowplug_operator.controller.metrics import Metrics
from glowplug_operator.controller.startup_reports import WORKER_PHASES
from glowplug_operator.engines import ENGINES
from glowplug_operator.status import POD_PHASES
from glowplug_worker.serve.metrics import Metrics as WorkerMetrics
from prometheus_client import CollectorRegistry

from tests.unit.test_status import T0, ready_pod, status

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "README.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "charts" / "glowplug" / "dashboards").glob("*.json")),
    *sorted((ROOT / "charts" / "glowplug" / "templates").glob("*")),
]
PACKAGES = {"glowplug_operator", "glowplug_worker"}  # module paths, not metrics
METRIC = re.compile(r"\bglowplug_[a-z0-9_]+")


def _names(registry: CollectorRegistry) -> set[str]:
    """Metric family names and the sample names Prometheus shows (_total, _bucket, ...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in registry.collect():
        names |= {family.name, *(family.name + s for s in suffixes.get(family.type, ()))}
    return names


def code_metrics() -> set[str]:
    names = _names(Metrics().registry) | _names(WorkerMetrics().registry)
    # The prefetcher prints its summary as text: glowplug_prefetch_<key> for each key it emits.
    prefetch = (ROOT / "worker/src/glowplug_worker/prefetch/cli.py").read_text()
    names |= {f"glowplug_prefetch_{key}" for key in re.findall(r'^\s+"(\w+)": ', prefetch, re.M)}
    names |= {"glowplug_prefetch_success"}  # also in the failure summary's one-line dict
    return names


def test_every_metric_the_docs_name_exists() -> None:
    known = code_metrics()
    missing = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOCS
        for name in METRIC.findall(path.read_text())
        if name not in PACKAGES and name not in known and not name.endswith("_")  # a prefix
    }
    assert not missing, sorted(missing)


def test_the_check_finds_a_metric_that_does_not_exist() -> None:
    text = "a counter such as `glowplug_flag_rollbacks_total{flag, reason}`"
    assert [n for n in METRIC.findall(text) if n not in code_metrics()] == [
        "glowplug_flag_rollbacks_total"
    ]


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z]+)`", text))


def documented_phases() -> set[str]:
    api = (ROOT / "docs" / "api.md").read_text()
    row = next(line for line in api.splitlines() if line.startswith("| `coldStart.phases` |"))
    meaning = row.split("|")[2]
    return _backticked(meaning.split("The operator's histogram")[0])


def test_cold_start_phases_agree_between_docs_crd_and_status() -> None:
    logged = {phase for engine in ENGINES.values() for phase in engine.log_phases}
    assert documented_phases() == set(POD_PHASES) | set(WORKER_PHASES) | logged
    written = set(POD_PHASES) | set(WORKER_PHASES)
    crd = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
    status_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    described = status_schema["properties"]["coldStart"]["properties"]["phases"]["description"]
    named = written | logged
    assert {w for w in re.findall(r"[A-Za-z]+", described) if w in named} == named
    # status.py writes exactly these: a Ready pod with the worker's phases read.
    out = status(
        [ready_pod()],
        now=T0 + timedelta(minutes=2),
        worker_phases={"pod-1": dict.fromkeys(WORKER_PHASES, 1.0)},
    )
    assert set(out["coldStart"]["phases"]) == written


def test_the_glossarys_worker_phases_are_the_workers() -> None:
    glossary = (ROOT / "docs" / "architecture.md").read_text()
    line = next(li for li in glossary.split("\n- ") if li.startswith("**phase**"))
    phases_py = (ROOT / "worker/src/glowplug_worker/serve/startup/phases.py").read_text()
    timed = set(re.findall(r'state\.phase\("(\w+)"', phases_py))
    assert timed | {"download", "serve"} >= _backticked(line) - {"phase"}
    assert timed <= _backticked(line)


def test_the_dockerfiles_build_the_images_the_chart_runs() -> None:
    chart = yaml.safe_load((ROOT / "charts/glowplug/Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts/glowplug/values.yaml").read_text())
    version = chart["appVersion"]
    wanted = {
        "operator": [f"{values['image']['repository']}:{version}"],
        "worker": [
            f"{values['worker']['image']['repository']}:{version}",
            f"{values['prefetch']['image']['repository']}:{version}",
        ],
    }
    for part, images in wanted.items():
        text = (ROOT / part / "Dockerfile").read_text()
        assert re.findall(r"^#.* -t (\S+) ", text, re.M) == images, part


def test_queue_overflow_is_documented_as_the_workers_429() -> None:
    admission = (ROOT / "worker/src/glowplug_worker/serve/http/admission.py").read_text()
    assert "a full server answers 429" in admission
    api = (ROOT / "docs" / "api.md").read_text()
    row = next(line for line in api.splitlines() if line.startswith("| `maxQueue` |"))
    crd = (ROOT / "crds" / "modelserver.yaml").read_text()
    described = crd[crd.index("maxQueue:") :].split("maxModelLen")[0]
    for text in (row, described):
        assert "429" in text and "503" not in text, text
