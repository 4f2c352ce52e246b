"""Write deliberately broken ``.npy`` files for the bad-input tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def raw_header(text: str, version: int = 1) -> bytes:
    """A .npy preamble + header dict text, padded to 64 bytes like numpy does."""
    body = text.encode("latin-1" if version < 3 else "utf-8")
    pre = 10 if version == 1 else 12
    pad = (-(pre + len(body) + 1)) % 64
    body = body + b" " * pad + b"\n"
    width = 2 if version == 1 else 4
    return b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(width, "little") + body


def write_with_header(path: Path, text: str, data: bytes, version: int = 1) -> None:
    path.write_bytes(raw_header(text, version) + data)


def truncate(path: Path, keep: int) -> None:
    with path.open("r+b") as f:
        f.truncate(keep)


def resave(path: Path, array: np.ndarray, *, fortran: bool = False) -> None:
    arr = np.asfortranarray(array) if fortran else np.ascontiguousarray(array)
    with path.open("wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0))
