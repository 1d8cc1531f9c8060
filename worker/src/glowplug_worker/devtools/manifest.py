"""Write the prefetch manifest of a model directory, so that any static HTTP server (nginx) can
serve it as an `http(s)://.../manifest.json` source: every file with its size and sha256."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from glowplug_worker.prefetch.httpsrc import MANIFEST_SCHEMA

NAME = "manifest.json"


def write_manifest(model_dir: Path, revision: str | None = None) -> Path:
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != NAME)
    entries = []
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        entries.append(
            {
                "path": path.relative_to(model_dir).as_posix(),
                "size": path.stat().st_size,
                "sha256": digest.hexdigest(),
            }
        )
    manifest: dict[str, object] = {"schema": MANIFEST_SCHEMA, "files": entries}
    if revision:
        manifest["revision"] = revision
    out = model_dir / NAME
    out.write_text(json.dumps(manifest, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glowplug_worker.devtools.manifest", description=__doc__
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--revision", help="a label recorded as the resolved revision")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(write_manifest(args.model_dir, args.revision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
