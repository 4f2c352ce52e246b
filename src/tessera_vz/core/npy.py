"""Parse ``.npy`` headers from their first bytes, safely.

A ``.npy`` file starts with the magic ``\\x93NUMPY``, a two-byte version, a
header length (2 bytes in version 1.0, 4 bytes in 2.0 and 3.0), then a Python
literal dict with ``descr``, ``fortran_order`` and ``shape``. The data follows,
contiguous, at ``data_offset``. Knowing these facts is all an index needs, so
the parser reads nothing else and never evaluates, imports or unpickles.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import numpy as np

from tessera_vz.core.errors import NpyFormatError

MAGIC = b"\x93NUMPY"
#: Bytes to fetch first: enough for every header numpy writes for arrays of a
#: few dimensions (numpy pads headers to 64 bytes; TESSERA headers are 128).
PROBE_BYTES = 512
#: Largest header accepted. numpy's own ``np.load`` refuses headers over
#: 10,000 bytes by default for the same reason: a literal parser must be fed
#: bounded input.
MAX_HEADER_BYTES = 10_000
_PREAMBLE = {1: 10, 2: 12, 3: 12}


@dataclass(frozen=True)
class NpyHeader:
    """The facts of a ``.npy`` header that locate and describe its data."""

    version: tuple[int, int]
    dtype: np.dtype
    fortran_order: bool
    shape: tuple[int, ...]
    data_offset: int

    @property
    def nbytes(self) -> int:
        """Size of the data block, which must fit in the file."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_nbytes(self) -> int:
        """Bytes of one index along the first axis (a C-order "row")."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def header_length(prefix: bytes) -> int:
    """Total bytes (preamble + dict) of the header that ``prefix`` starts.

    Lets a caller that fetched :data:`PROBE_BYTES` know whether it must fetch
    more before calling :func:`parse_header`.
    """
    version = _version(prefix)
    size = _PREAMBLE[version[0]]
    if len(prefix) < size:
        raise NpyFormatError(
            f"npy header is truncated: expected at least {size} bytes of preamble, "
            f"found {len(prefix)}; the file is shorter than any .npy file can be"
        )
    width = 2 if version[0] == 1 else 4
    dict_len = int.from_bytes(prefix[8 : 8 + width], "little")
    if dict_len > MAX_HEADER_BYTES:
        raise NpyFormatError(
            f"npy header declares {dict_len} bytes of header dict, over the "
            f"{MAX_HEADER_BYTES}-byte limit; expected a small literal dict. "
            "The file is corrupt or not a plain .npy array"
        )
    return size + dict_len


def _version(prefix: bytes) -> tuple[int, int]:
    if prefix[:6] != MAGIC:
        raise NpyFormatError(
            f"not a .npy file: expected magic {MAGIC!r}, found {bytes(prefix[:6])!r}"
        )
    if len(prefix) < 8:
        raise NpyFormatError("npy header is truncated: no version bytes after the magic")
    major, minor = prefix[6], prefix[7]
    if major not in _PREAMBLE or minor != 0:
        raise NpyFormatError(
            f"unsupported .npy format version {major}.{minor}; expected 1.0, 2.0 or 3.0"
        )
    return (major, minor)


def _literal_dict(text: str) -> dict[str, object]:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise NpyFormatError(
            f"npy header is not a Python literal dict ({type(exc).__name__}); found {text[:80]!r}"
        ) from None
    if not isinstance(tree.body, ast.Dict):
        raise NpyFormatError(f"npy header must be a literal dict, found {text[:80]!r}")
    try:
        value = ast.literal_eval(tree.body)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as exc:
        raise NpyFormatError(
            f"npy header dict holds non-literal values ({type(exc).__name__}); found {text[:80]!r}"
        ) from None
    if not isinstance(value, dict):  # pragma: no cover - guarded by the ast check
        raise NpyFormatError(f"npy header must be a literal dict, found {text[:80]!r}")
    return value


def _dtype(descr: object) -> np.dtype:
    if not isinstance(descr, str):
        raise NpyFormatError(
            f"npy descr must be a simple dtype string such as '<f4', found {descr!r}; "
            "structured and object arrays cannot be mapped to Zarr chunks"
        )
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError) as exc:
        raise NpyFormatError(f"npy descr {descr!r} is not a numpy dtype: {exc}") from None
    if dtype.kind not in "biufc" or dtype.hasobject or dtype.itemsize == 0:
        raise NpyFormatError(
            f"npy dtype {descr!r} is not a fixed-size numeric type; only bool, integer, "
            "float and complex arrays can be read in place (object arrays would need "
            "unpickling, which is never done)"
        )
    if (dtype.kind == "f" and dtype.itemsize > 8) or (dtype.kind == "c" and dtype.itemsize > 16):
        raise NpyFormatError(
            f"npy dtype {descr!r} is numpy's platform-specific long double; it has no "
            "Zarr v3 data type and its bytes differ between machines, so it cannot be "
            "read in place. Re-save it as float64/complex128"
        )
    return dtype


def parse_header(prefix: bytes) -> NpyHeader:
    """Parse the header at the start of ``prefix``.

    ``prefix`` must hold at least :func:`header_length` bytes. Raises
    :class:`NpyFormatError` for anything that is not a plain C-order
    fixed-size numeric array, never a wrong description.
    """
    prefix = bytes(prefix)
    version = _version(prefix)
    total = header_length(prefix)
    if len(prefix) < total:
        raise NpyFormatError(
            f"npy header is truncated: declared {total} bytes, found {len(prefix)}"
        )
    raw = prefix[_PREAMBLE[version[0]] : total]
    encoding = "utf-8" if version[0] == 3 else "latin-1"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        raise NpyFormatError(
            f"npy header is not valid {encoding} text as version {version[0]}.0 requires"
        ) from None
    fields = _literal_dict(text)
    if set(fields) != {"descr", "fortran_order", "shape"}:
        raise NpyFormatError(
            "npy header must have exactly the keys descr, fortran_order and shape; "
            f"found {sorted(map(str, fields))}"
        )
    shape = fields["shape"]
    if not (
        isinstance(shape, tuple)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise NpyFormatError(f"npy shape must be a tuple of non-negative integers, found {shape!r}")
    fortran = fields["fortran_order"]
    if not isinstance(fortran, bool):
        raise NpyFormatError(f"npy fortran_order must be True or False, found {fortran!r}")
    if fortran and len(shape) > 1:
        raise NpyFormatError(
            "npy array is in Fortran order; rows are not contiguous, so it cannot be "
            "chunked by whole rows. Re-save it in C order (np.ascontiguousarray)"
        )
    return NpyHeader(
        version=version,
        dtype=_dtype(fields["descr"]),
        fortran_order=fortran,
        shape=shape,
        data_offset=total,
    )


def check_size(header: NpyHeader, size: int, *, what: str = "file") -> None:
    """Refuse a file too short for the data its header declares."""
    end = header.data_offset + header.nbytes
    if size < end:
        raise NpyFormatError(
            f"{what} is truncated: header declares {header.nbytes} data bytes from "
            f"offset {header.data_offset} (ending at {end}), but the file has {size} bytes"
        )
