"""The operator's log lines as a log pipeline or a person reads them (glowplug_operator.logs)."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
from glowplug_operator.logs import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    logging.getLogger("httpx2").setLevel(logging.NOTSET)


def decision(logger: logging.Logger) -> None:
    logger.info(
        "modelserver %s/%s: %s: %s",
        "ml",
        "llama",
        "OptimizationRolledBack",
        "rolled back flag fast-load",
        extra={"namespace": "ml", "modelserver": "llama", "reason": "OptimizationRolledBack"},
    )


def test_json_lines_carry_the_modelserver_as_fields(restore_logging: None) -> None:
    out = io.StringIO()
    configure("INFO", "json", out)
    decision(logging.getLogger("glowplug_operator.controller.reconciler"))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("glowplug").exception("reconcile of ml/llama failed")
    warnings.warn("a library warning", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["message"] == (
        "modelserver ml/llama: OptimizationRolledBack: rolled back flag fast-load"
    )
    assert (lines[0]["level"], lines[0]["namespace"], lines[0]["modelserver"]) == (
        "INFO",
        "ml",
        "llama",
    )
    assert lines[0]["reason"] == "OptimizationRolledBack"
    assert "RuntimeError: boom" in lines[1]["exception"]
    assert "a library warning" in lines[2]["message"]  # every line is JSON


def test_text_lines_and_quiet_http_clients_at_info(restore_logging: None) -> None:
    out = io.StringIO()
    configure("INFO", "text", out)
    decision(logging.getLogger("glowplug_operator.controller.reconciler"))
    logging.getLogger("httpx2").info("HTTP Request: GET https://api/ 200 OK")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(
        "INFO glowplug_operator.controller.reconciler: "
        "modelserver ml/llama: OptimizationRolledBack: rolled back flag fast-load"
    )


def test_debug_shows_the_http_requests(restore_logging: None) -> None:
    out = io.StringIO()
    configure("DEBUG", "text", out)
    logging.getLogger("httpx2").info("HTTP Request: GET https://api/ 200 OK")
    assert "HTTP Request" in out.getvalue()
