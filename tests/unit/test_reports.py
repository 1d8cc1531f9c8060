"""The termination report: the operator's reader against the worker's real writer."""

from __future__ import annotations

import json

import pytest
from glowplug_operator.rollback.reports import FLAG_PHASES, PHASES, parse_report, phase_of_flag
from glowplug_worker.report import MAX_BYTES, DownloadSummary, ErrorInfo, TerminationReport

# Written by the worker's own writer: the contract test between the two sides.
WRITTEN = [
    pytest.param(
        TerminationReport(
            command="serve",
            outcome="failed",
            phase="load",
            optimizations=["fast-load", "hf-offline"],
            error=ErrorInfo(type="SafetensorError", message="Error while deserializing header"),
            phases={"import": 5.9123, "config": 0.2},
        ),
        id="serve-failed-in-load",
    ),
    pytest.param(
        TerminationReport(
            command="serve",
            outcome="failed",
            phase="import",
            optimizations=["background-import"],
            flag="background-import",
            error=ErrorInfo(type="ImportError", message="partially initialized module"),
        ),
        id="serve-blames-a-flag-itself",
    ),
    pytest.param(
        TerminationReport(
            command="prefetch",
            outcome="succeeded",
            phases={"download": 41.0},
            download=DownloadSummary(
                bytes=7_200_000_000,
                files=4,
                seconds=41.0,
                throughput_bytes_per_second=1.7e8,
                reused=False,
            ),
        ),
        id="prefetch-succeeded-with-download",
    ),
    pytest.param(
        TerminationReport(command="serve", outcome="succeeded", phases={"warmup": 0.4}),
        id="serve-succeeded-no-error",
    ),
]


@pytest.mark.parametrize("written", WRITTEN)
def test_every_report_the_worker_writes_parses(written: TerminationReport) -> None:
    report = parse_report(written.to_json())
    assert report is not None
    assert report.command == written.command
    assert report.outcome == written.outcome
    assert report.phase == written.phase
    assert report.flag == written.flag
    assert report.optimizations == tuple(written.optimizations)
    assert dict(report.phases) == {k: round(v, 3) for k, v in written.phases.items()}
    if written.error is None:
        assert report.error is None
    else:
        assert report.error is not None
        assert (report.error.type, report.error.message) == (
            written.error.type,
            written.error.message,
        )
    if written.download is None:
        assert report.download is None
    else:
        assert report.download is not None
        assert report.download.bytes == written.download.bytes
        assert report.download.reused == written.download.reused
    assert report.failed == (written.outcome == "failed")


def test_a_report_truncated_by_the_writer_to_fit_4096_bytes_still_parses() -> None:
    written = TerminationReport(
        command="serve",
        outcome="failed",
        phase="import",
        optimizations=["background-import", "slim-imports"],
        error=ErrorInfo(type="RuntimeError", message="é" * 5000),
    )
    text = written.to_json()
    assert len(text.encode()) <= MAX_BYTES
    report = parse_report(text)
    assert report is not None and report.error is not None
    assert report.error.type == "RuntimeError"
    assert report.error.message.endswith("...")
    assert report.phase == "import"


NOT_A_REPORT = [
    pytest.param(None, id="no-message"),
    pytest.param("", id="empty"),
    pytest.param(
        "Traceback (most recent call last):\n  File ...", id="plain-text-from-other-image"
    ),
    pytest.param(
        '{"schema":"glowplug.dev/termination-report/v1","command":"serve","outc', id="cut"
    ),
    pytest.param(
        '{"schema":"glowplug.dev/termination-report/v2","command":"serve","outcome":"failed"}',
        id="another-schema-version",
    ),
    pytest.param('{"command":"serve","outcome":"failed"}', id="no-schema"),
    pytest.param("[1, 2, 3]", id="json-but-not-an-object"),
    pytest.param(
        '{"schema":"glowplug.dev/termination-report/v1","command":"train","outcome":"failed"}',
        id="unknown-command",
    ),
    pytest.param(
        '{"schema":"glowplug.dev/termination-report/v1","command":"serve","outcome":"maybe"}',
        id="unknown-outcome",
    ),
    pytest.param("{" * 100_000, id="deeply-nested-garbage"),
    pytest.param("\x00\xff\xfe binary", id="binary"),
]


@pytest.mark.parametrize("message", NOT_A_REPORT)
def test_anything_that_is_not_a_v1_report_is_none(message: str | None) -> None:
    assert parse_report(message) is None


def test_badly_typed_optional_fields_are_dropped_not_fatal() -> None:
    body = {
        "schema": "glowplug.dev/termination-report/v1",
        "command": "serve",
        "outcome": "failed",
        "phase": 3,
        "optimizations": ["fast-load", 7],
        "flag": ["x"],
        "error": "boom",
        "phases": {"import": "fast", "load": 1.5, "config": float("nan")},
        "download": {"bytes": "many"},
    }
    report = parse_report(json.dumps(body) + "\n")
    assert report is not None
    assert (report.phase, report.flag, report.error, report.download) == (None, None, None, None)
    assert report.optimizations == ("fast-load",)
    assert dict(report.phases) == {"load": 1.5}


@pytest.mark.parametrize(
    ("flag", "phase"),
    [
        ("prefetch-page-cache", "download"),
        ("prefetch-weights", "import"),
        ("background-import", "import"),
        ("slim-imports", "import"),
        ("hf-offline", "config"),
        ("fast-load", "load"),
        ("my-vllm-forkserver", None),
    ],
)
def test_flag_phases_follow_the_workers_mapping(flag: str, phase: str | None) -> None:
    assert phase_of_flag(flag) == phase


def test_every_mapped_phase_is_a_phase_the_worker_reports() -> None:
    assert set(FLAG_PHASES.values()) <= set(PHASES)
