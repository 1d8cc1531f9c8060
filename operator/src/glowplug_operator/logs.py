"""The operator's log: one handler on stderr, text for people or JSON for log pipelines
(GLOWPLUG_LOG_FORMAT). Decision lines carry the ModelServer as `extra` fields, so a JSON line has
`namespace`, `name` and `reason` of its own."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
# Attributes every LogRecord has; what a call adds with `extra=` is the rest.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# At INFO these say what every event handler did and every HTTP request: too much for an
# operator's own log, whose INFO lines are its decisions (DEBUG shows them all).
_CHATTY = ("kopf.objects", "kopf.activities.probe", "httpx", "httpx2", "urllib3")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extra fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, fmt: LogFormat, stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one for `fmt` at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)  # library warnings are log lines too (JSON ones in json)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
