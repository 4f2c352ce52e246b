"""The bytes of every file of the simulated world, computed for any range.

A tile's two files are genuine ``.npy`` v1.0 files (numpy's own header
writer) whose data is :func:`~tessera_vz.mirror.tree.embedding_values` and
:func:`~tessera_vz.mirror.tree.scale_values`, the formulas of every other
synthetic tree, evaluated at the tile's *content year* ``year + 1000 *
generation``: a tile re-uploaded (generation 1) holds other values, so a
reader still served the old bytes, or an index still pointing at them, is
caught. Nothing is stored: any byte range of a 100 MB file is computed from
the flat element indices it covers, so any read of the world can be checked
against :func:`expected_values`.
"""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.quantisation import dequantise
from tessera_vz.mirror.tree import embedding_values, scale_values

BANDS = 128
#: Content year step per generation (changes every term of both formulas mod 251 and 97).
GENERATION_YEARS = 1000
EMB_DTYPE = np.dtype(np.int8)
SCALE_DTYPE = np.dtype(np.float32)


def content_year(year: int, generation: int) -> int:
    """The ``year`` argument of the formulas for a tile of this generation."""
    return int(year) + GENERATION_YEARS * int(generation)


@lru_cache(maxsize=4096)
def header(kind: str, height: int, width: int) -> bytes:
    """The ``.npy`` v1.0 header of a tile's embeddings (``kind="emb"``) or scales file."""
    dtype, shape = (
        (EMB_DTYPE, (height, width, BANDS)) if kind == "emb" else (SCALE_DTYPE, (height, width))
    )
    buf = BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def file_size(kind: str, height: int, width: int) -> int:
    """Length of the file in bytes."""
    per_pixel = BANDS * EMB_DTYPE.itemsize if kind == "emb" else SCALE_DTYPE.itemsize
    return len(header(kind, height, width)) + height * width * per_pixel


def _data(kind: str, year: int, lon: float, lat: float, width: int, start: int, stop: int) -> bytes:
    """Data bytes ``[start, stop)`` (counted from the end of the header)."""
    if stop <= start:
        return b""
    if kind == "emb":
        flat = np.arange(start, stop, dtype=np.int64)
        band = flat % BANDS
        pixel = flat // BANDS
        return embedding_values(year, lon, lat, pixel // width, pixel % width, band).tobytes()
    size = SCALE_DTYPE.itemsize
    first, last = start // size, -(-stop // size)
    pixel = np.arange(first, last, dtype=np.int64)
    values = scale_values(year, lon, lat, pixel // width, pixel % width)
    return values.tobytes()[start - first * size : stop - first * size]


def read_range(
    kind: str, year: int, lon: float, lat: float, height: int, width: int, start: int, stop: int
) -> bytes:
    """Bytes ``[start, stop)`` of a tile file (``year`` is the content year)."""
    head = header(kind, height, width)
    stop = min(stop, file_size(kind, height, width))
    out = head[start:stop] if start < len(head) else b""
    data = _data(kind, year, lon, lat, width, max(start - len(head), 0), stop - len(head))
    return out + data


def expected_values(
    year: int, lon: float, lat: float, rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.float32]:
    """Dequantised embeddings ``(N, 128)`` a reader must return at these pixels of a tile.

    ``year`` is the content year. NaN where the scale is no-data, by the
    reader's own rule (:func:`~tessera_vz.core.quantisation.dequantise`).
    """
    rows = np.asarray(rows, dtype=np.int64)[:, None]
    cols = np.asarray(cols, dtype=np.int64)[:, None]
    emb = embedding_values(year, lon, lat, rows, cols, np.arange(BANDS)[None, :])
    return dequantise(emb, scale_values(year, lon, lat, rows[:, 0], cols[:, 0]))
