"""`kubectl glowplug status|retry|explain-rollback NAME`: reads through the `kubectl` it runs
under (the same kubeconfig, context and namespace flags), so it needs no client of its own."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from glowplug_operator.contract import GROUP, KIND, PLURAL, RETRY_ANNOTATION
from glowplug_operator.kubectl.render import explain_text, status_text


class PluginError(Exception):
    """A failure to show the user as `kubectl glowplug: ...`, exit status 1."""


class Kubectl:
    def __init__(self, options: argparse.Namespace) -> None:
        self.base = [os.environ.get("KUBECTL", "kubectl")]
        for flag in ("kubeconfig", "context", "namespace"):
            value = getattr(options, flag)
            if value:
                self.base.append(f"--{flag}={value}")

    def run(self, *args: str) -> str:
        try:
            done = subprocess.run(
                [*self.base, *args], capture_output=True, text=True, timeout=60, check=False
            )
        except FileNotFoundError as error:
            raise PluginError(f"{self.base[0]} not found: put kubectl on PATH") from error
        if done.returncode != 0:
            raise PluginError(done.stderr.strip() or f"kubectl {' '.join(args)} failed")
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json"))

    def modelserver(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("get", f"{PLURAL}.{GROUP}", name)
        return found

    def events(self, ms: dict[str, Any]) -> list[dict[str, Any]]:
        uid = ms["metadata"]["uid"]
        selector = f"involvedObject.kind={KIND},involvedObject.uid={uid}"
        items: list[dict[str, Any]] = self.json("get", "events", "--field-selector", selector)[
            "items"
        ]
        return items


def retry_value(ms: dict[str, Any], flags: Sequence[str]) -> tuple[str, list[str]]:
    """The annotation value asking for a retry of `flags` (all rolled-back and disabled ones
    when empty), and those flags. The operator honours each distinct value once: a value equal
    to the present one is written in another order or with a repeated name, same meaning."""
    states = {
        s.get("name"): s.get("state") for s in (ms.get("status") or {}).get("optimizations") or []
    }
    if not flags:
        flags = [n for n, st in states.items() if st in ("RolledBack", "Disabled") and n]
        if not flags:
            raise PluginError("no flag is RolledBack or Disabled: nothing to retry")
    unknown = [f for f in flags if f not in states]
    if unknown:
        raise PluginError(
            f"{', '.join(unknown)}: not a flag of this ModelServer "
            f"(flags: {', '.join(n for n in states if n) or 'none'})"
        )
    value = ",".join(flags)
    current = ((ms.get("metadata") or {}).get("annotations") or {}).get(RETRY_ANNOTATION)
    if value == current:
        value = ",".join(reversed(flags)) if len(flags) > 1 else f"{value},{value}"
    return value, list(flags)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """kubectl's connection flags before or after the command (`-n ml status x`, `status x -n
    ml`), as kubectl users type them."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-n", "--namespace", default=argparse.SUPPRESS)
    flags.add_argument("--context", default=argparse.SUPPRESS)
    flags.add_argument("--kubeconfig", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="kubectl glowplug", description="Look into glowplug ModelServers.", parents=[flags]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "status", help="conditions, cold-start timeline, flags and their history", parents=[flags]
    ).add_argument("name")
    retry = commands.add_parser(
        "retry",
        help="ask the operator to try rolled-back flags again (all of them by default)",
        parents=[flags],
    )
    retry.add_argument("name")
    retry.add_argument("flags", nargs="*", metavar="FLAG")
    commands.add_parser(
        "explain-rollback", help="the evidence behind each flag decision", parents=[flags]
    ).add_argument("name")
    options = parser.parse_args(argv)
    for name in ("namespace", "context", "kubeconfig"):
        if not hasattr(options, name):
            setattr(options, name, None)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    kubectl = Kubectl(options)
    now = datetime.now(UTC)
    try:
        ms = kubectl.modelserver(options.name)
        if options.command == "status":
            sys.stdout.write(status_text(ms, kubectl.events(ms), now))
        elif options.command == "explain-rollback":
            sys.stdout.write(explain_text(ms, kubectl.events(ms), now))
        else:
            value, flags = retry_value(ms, options.flags)
            kubectl.run(
                "annotate",
                f"{PLURAL}.{GROUP}",
                options.name,
                f"{RETRY_ANNOTATION}={value}",
                "--overwrite",
            )
            print(
                f"asked to retry {', '.join(flags)} ({RETRY_ANNOTATION}={value}); "
                f"watch with: kubectl glowplug status {options.name}"
            )
    except PluginError as error:
        print(f"kubectl glowplug: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
