"""Reading safetensors files without the safetensors library: headers, validation, and the
byte ranges of each tensor. Used by `fast-load`; pure Python plus `os.pread`.

Format: 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data;
offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER_BYTES = 100 << 20
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class CheckpointError(ValueError):
    """The checkpoint files are missing, unreadable or corrupt; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    path: Path
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int  # absolute offset in the file
    nbytes: int


def read_header(path: Path) -> list[TensorEntry]:
    """Parse and validate one file's header; raise `CheckpointError` naming what is wrong."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header (declares {n} header "
                    f"bytes in a {size}-byte file); re-download the weights"
                )
            text = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read weights: {exc}") from exc
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (not JSON: {exc}); re-download the weights"
        ) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    base = 8 + n
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from exc
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != nbytes or begin < 0 or base + end > size:
            raise CheckpointError(
                f"{path}: tensor {name!r} lies outside the file or has the "
                "wrong size (truncated download?)"
            )
        entries.append(TensorEntry(name, path, dtype, shape, base + begin, nbytes))
    return entries


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory: the shards named by
    `model.safetensors.index.json`, else `model.safetensors`, else every `*.safetensors`."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: unreadable shard index: {exc}") from exc
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{model_dir}: shards named in the index are missing: {', '.join(missing)}"
            )
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(model_dir.glob("*.safetensors"))


def pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill `view` from `fd` at `offset`; a short file is a `CheckpointError`."""
    done, total = 0, len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(f"unexpected end of file at byte {offset + done}")
        done += n
