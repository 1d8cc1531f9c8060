"""What `kubectl glowplug` prints, from a ModelServer and its Events as the API server returns
them: pure (objects in, text out), so it is tested without a cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from glowplug_operator.timestamps import parse_time

Obj = Mapping[str, Any]
# The cold start's phases in the order they happen (docs/api.md, status.coldStart.phases): the
# pod waits for a node, its images are pulled, its init container downloads, the worker starts;
# import, config, load and warmup are the worker's start seen from inside (during `start`).
SEQUENCE = ("schedule", "imagePull", "download", "start")
INSIDE_START = ("import", "config", "load", "warmup")
BAR_WIDTH = 40


def _download_in_worker(phases: Mapping[str, float], total: float | None) -> bool:
    """Whether `download` ran inside `start` (the worker's, with overlap-download). The pod-level
    phases after scheduling (imagePull, an init container's download, start) add up to the time
    from scheduling to Ready; a download that does not fit beside them ran inside `start`."""
    if total is None or "download" not in phases or "start" not in phases:
        return False
    pod_level = sum(phases.get(name, 0.0) for name in ("imagePull", "download", "start"))
    return pod_level > total + phases["download"] / 2


def age(when: str | None, now: datetime) -> str:
    """kubectl's short age: 45s, 3m, 2h, 4d."""
    at = parse_time(when) if when else None
    if at is None:
        return "-"
    seconds = max(0, int((now - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last one is not padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        (
            indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
        ).rstrip()
        for r in rows
    ]


def timeline(
    phases: Mapping[str, float], width: int = BAR_WIDTH, total: float | None = None
) -> list[tuple[str, float, str]]:
    """(phase, seconds, bar) per phase: each bar starts where its phase started, on a scale where
    the whole start is `width` characters. Phases outside the known order follow the last.
    `total` is coldStart.lastSeconds: with it, a worker's own download (overlap-download) is
    drawn inside `start`, beside `import`."""
    inside: tuple[str, ...] = INSIDE_START
    sequence: tuple[str, ...] = SEQUENCE
    if _download_in_worker(phases, total):
        inside, sequence = (
            ("download", *INSIDE_START),
            tuple(n for n in SEQUENCE if n != "download"),
        )
    spans: list[tuple[str, float, float]] = []
    clock = 0.0
    start_at: float | None = None
    for name in sequence:
        if name in phases:
            if name == "start":
                start_at = clock
            spans.append((name, clock, phases[name]))
            clock += phases[name]
    inner = start_at if start_at is not None else clock
    for name in inside:
        if name in phases:
            spans.append((name, inner, phases[name]))
            inner += phases[name] if name != "download" else 0.0  # import runs beside it
    end = max([clock, inner, *(s + d for _, s, d in spans)]) if spans else 0.0
    for name in sorted(set(phases) - set(SEQUENCE) - set(INSIDE_START)):
        spans.append((name, end, phases[name]))
        end += phases[name]
    scale = width / end if end > 0 else 0.0
    out = []
    for name, begin, seconds in spans:
        lead = min(round(begin * scale), width - 1)
        length = min(max(1, round(seconds * scale)), width - lead) if seconds > 0 else 0
        out.append((name, seconds, " " * lead + "█" * length))
    return out


def _conditions(ms: Obj, now: datetime) -> list[str]:
    conditions = (ms.get("status") or {}).get("conditions") or []
    created = parse_time(ms["metadata"].get("creationTimestamp"))
    rows = [("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")]
    for c in conditions:
        since = c.get("lastTransitionTime")
        at = parse_time(since)
        if at is not None and created is not None and at < created:
            since = None  # the CRD's default status (1970): no transition has happened
        rows.append(
            (
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                age(since, now),
                c.get("message", ""),
            )
        )
    return ["CONDITIONS", *table(rows)] if conditions else ["CONDITIONS  (none yet)"]


def _cold_start(ms: Obj) -> list[str]:
    cold = (ms.get("status") or {}).get("coldStart") or {}
    if not cold:
        return ["COLD START  (no pod has become Ready yet)"]
    lines = [f"COLD START  {cold.get('lastSeconds', 0):.1f}s from scheduling to Ready"]
    rows = [
        (name, f"{seconds:.1f}s", "|" + bar.ljust(BAR_WIDTH) + "|")
        for name, seconds, bar in timeline(cold.get("phases") or {}, total=cold.get("lastSeconds"))
    ]
    return lines + table(rows)


def _flags(ms: Obj, now: datetime) -> list[str]:
    states = (ms.get("status") or {}).get("optimizations") or []
    if not states:
        return ["FLAGS  (none)"]
    rows = [("NAME", "STATE", "REASON", "FAILED", "OK", "SINCE", "MESSAGE")]
    rows += [
        (
            s.get("name", ""),
            s.get("state", ""),
            s.get("reason", ""),
            str(s.get("failures", 0)),
            str(s.get("successes", 0)),
            age(s.get("lastTransitionTime"), now),
            s.get("message", ""),
        )
        for s in states
    ]
    effective = ", ".join((ms.get("status") or {}).get("effectiveOptimizations") or []) or "none"
    return ["FLAGS", *table(rows), f"  running now: {effective}"]


def _event_time(event: Obj) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def sorted_events(events: Sequence[Obj]) -> list[Obj]:
    return sorted(
        events, key=lambda e: parse_time(_event_time(e)) or datetime.min.replace(tzinfo=UTC)
    )


def _history(events: Sequence[Obj], now: datetime) -> list[str]:
    if not events:
        return ["HISTORY  (no Events; Events expire after an hour by default)"]
    rows = [("AGE", "TYPE", "REASON", "COUNT", "MESSAGE")]
    rows += [
        (
            age(_event_time(e), now),
            e.get("type", ""),
            e.get("reason", ""),
            str(e.get("count") or 1),
            e.get("message", ""),
        )
        for e in sorted_events(events)
    ]
    return ["HISTORY (Events)", *table(rows)]


def _heading(ms: Obj) -> list[str]:
    meta, status = ms.get("metadata") or {}, ms.get("status") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    lines = [
        f"ModelServer {meta.get('namespace', '')}/{meta.get('name', '')}  "
        f"replicas {status.get('replicaSummary', '-')}  "
        f"generation {generation} (status describes {observed if observed is not None else '-'})"
    ]
    if status.get("endpoint"):
        lines.append(f"endpoint {status['endpoint']}  (model name {meta.get('name', '')})")
    return lines


def status_text(ms: Obj, events: Sequence[Obj], now: datetime) -> str:
    """`kubectl glowplug status NAME`."""
    parts = [
        _heading(ms),
        _conditions(ms, now),
        _cold_start(ms),
        _flags(ms, now),
        _history(events, now),
    ]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def _starts(record: Obj) -> list[str]:
    rows = []
    for start in record.get("recent") or []:
        kind = start.get("kind", "")
        where = f"phase {start['phase']}" if start.get("phase") else ""
        blame = f"report blames {start['flag']}" if start.get("flag") else ""
        rows.append(
            (
                start.get("at", ""),
                kind,
                where or "-",
                blame or "-",
                start.get("error", "") if kind != "ready" else "",
            )
        )
    return table(rows, indent="      ")


def _sets(ms: Obj) -> list[str]:
    rollout = (ms.get("status") or {}).get("rollout") or {}
    lines = ["FLAG SETS TRIED (status.rollout: starts counted and the termination reports kept)"]
    for record in rollout.get("sets") or []:
        flags = ", ".join(record.get("flags") or []) or "no flags"
        ready = "reached Ready" if record.get("reachedReady") else "never Ready"
        lines.append(
            f"  [{flags}]  {record.get('starts', 0)} starts, {record.get('failures', 0)} failed,"
            f" {record.get('successes', 0)} ready; {ready}"
        )
        starts = _starts(record)
        if not starts and record.get("failures"):
            starts = [
                "      (each start's report is kept only while its set is in force; the flag's"
                " `why` above quotes the one that decided)"
            ]
        lines += starts
    if len(lines) == 1:
        lines.append("  (none yet)")
    bisection = rollout.get("bisection")
    if bisection:
        lines.append(
            f"  bisection step {bisection.get('step', 1)} ({bisection.get('mode', '')}): suspects "
            f"{', '.join(bisection.get('suspects') or [])}; off now: "
            f"{', '.join(bisection.get('off') or []) or 'none'}"
        )
    return lines


def explain_text(ms: Obj, events: Sequence[Obj], now: datetime) -> str:
    """`kubectl glowplug explain-rollback NAME`: each flag's decision and the evidence behind it
    (the failed starts with their reports' phase, blame and error; the Events that announced it)."""
    status = ms.get("status") or {}
    states = status.get("optimizations") or []
    decided = [s for s in states if s.get("state") != "Active" or s.get("failures")]
    ordered = sorted_events(events)
    parts = [_heading(ms)]
    if not decided:
        parts.append(["No flag has been rolled back, disabled or put on trial, and none failed."])
    for state in decided:
        name = state.get("name", "")
        block = [
            f"{name}: {state.get('state', '')} ({state.get('reason', '') or 'no reason'}) "
            f"{age(state.get('lastTransitionTime'), now)} ago",
            f"  why: {state.get('message', '') or '-'}",
            f"  counted: {state.get('failures', 0)} failed starts, "
            f"{state.get('successes', 0)} Ready starts with it on",
        ]
        mine = [e for e in ordered if _names_flag(str(e.get("message", "")), name)]
        if mine:
            block.append("  events:")
            block += table(
                [
                    (
                        age(_event_time(e), now),
                        e.get("type", ""),
                        e.get("reason", ""),
                        e.get("message", ""),
                    )
                    for e in mine
                ],
                indent="    ",
            )
        parts.append(block)
    parts.append(_sets(ms))
    others = [
        e
        for e in ordered
        if not any(_names_flag(str(e.get("message", "")), s.get("name", "")) for s in decided)
    ]
    if others:
        parts.append(_history(others, now))
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def _names_flag(message: str, flag: str) -> bool:
    words = message.replace(",", " ").replace(":", " ").replace(";", " ").split()
    return bool(flag) and flag in words
