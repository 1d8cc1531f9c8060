"""When a new ModelServer's first status is written: at once when it has something to say, else
once its pods are Ready or the wait is over, so that a quick start is one status write, not two.
Meanwhile the API server shows the CRD's default status (Ready Unknown, observedGeneration 0:
in progress for kstatus and Argo CD)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from glowplug_operator.controller.store import Key
from glowplug_operator.rollback import Decision
from glowplug_operator.status import condition


@dataclass
class FirstStatusWait:
    seconds: float  # settings.first_status_wait_seconds; 0 writes every first status at once
    # By ModelServer: its uid (a name used again is a new ModelServer) and until when it waits.
    due: dict[Key, tuple[str, datetime]] = field(default_factory=dict)

    def left(
        self,
        key: Key,
        body: Mapping[str, Any],
        status: Mapping[str, Any],
        decision: Decision,
        now: datetime,
    ) -> float | None:
        """Seconds the status computed for `body` may still wait, or None: write it now. It
        waits only while the operator has written no status yet and this one would say nothing
        but "starting" (no decision, nothing Degraded)."""
        previous = body.get("status") or {}
        ready = condition(status, "Ready") or {}
        if (
            self.seconds <= 0
            or previous.get("observedGeneration")  # the operator has written a status already
            or ready.get("reason") != "Starting"
            or decision.events
            or decision.degraded
        ):
            self.due.pop(key, None)
            return None
        uid = body["metadata"]["uid"]
        seen_uid, due = self.due.get(key, ("", now))
        if seen_uid != uid:
            due = now + timedelta(seconds=self.seconds)
            self.due[key] = (uid, due)
        remaining = (due - now).total_seconds()
        if remaining <= 0:
            self.due.pop(key, None)
            return None
        return remaining

    def forget(self, key: Key) -> None:
        self.due.pop(key, None)
