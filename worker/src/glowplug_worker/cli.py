"""`glowplug-worker`: one CLI, two commands. Each command's module is imported only when chosen,
so `prefetch` never pays for (or needs) torch."""

from __future__ import annotations

import sys

USAGE = """usage: glowplug-worker {prefetch,serve} [options]

  prefetch   fetch model weights into a shared volume (the pod's init container)
  serve      load the model and serve it over HTTP (the pod's worker container)

Run `glowplug-worker COMMAND --help` for a command's options."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "prefetch":
        from glowplug_worker.prefetch.cli import main as run
    elif command == "serve":
        from glowplug_worker.serve.cli import main as run
    else:
        print(f"glowplug-worker: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
