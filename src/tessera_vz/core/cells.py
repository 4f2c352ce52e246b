"""Which 0.1-degree cells a zone-year covers, as a small bitmap recorded beside the index.

A tile is named after its 0.1-degree cell (centre at odd multiples of 0.05
degrees), so what a zone-year covers is exactly a set of cells: a bitmap of
its bounding box of cells. A 30,000-tile zone-year (a global year holds
about 1.8 M tiles in 60 zones) is a few kB once packed and compressed, so
the viewer can count tiles, draw coverage and find gaps for the whole
archive without loading a single tiles table (each needs its year's
snapshot, megabytes per zone).

The indexer records one :class:`CellSet` per year in each repository, in
the root attributes (:data:`ATTRIBUTE`) of its branch :data:`BRANCH` (not a
year, so no reader takes it for one; not ``main``, whose content every new
year branch starts from), keyed by the snapshot it describes; a reader uses
a record only for the snapshot it reads. Records are untrusted input:
:func:`decode` checks every field and bounds the decompressed size before
inflating anything.
"""

from __future__ import annotations

import base64
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: The branch whose root group holds the records.
BRANCH = "coverage"
#: Root attribute on :data:`BRANCH`: ``{"version": 1, "years": {"2024": record, ...}}``.
ATTRIBUTE = "tessera:coverage"
VERSION = 1
#: Cell index ranges of the globe: ``floor(lon * 10)``, ``floor(lat * 10)``.
COLS = (-1800, 1800)
ROWS = (-900, 900)
#: Icechunk snapshot ids: 20 characters of Crockford base32.
_SNAPSHOT_RE = re.compile(r"^[0-9A-Z]{20}\Z")
#: A record's encoded bitmap may not be longer than this (a whole zone is 13.5 kB raw).
_MAX_TEXT = 1 << 20


@dataclass(frozen=True)
class CellSet:
    """The cells of one zone-year: ``mask[i, j]`` is cell ``(col0 + j, row0 + i)``."""

    zone: int
    year: int
    snapshot: str
    col0: int
    row0: int
    mask: NDArray[np.bool_]

    @property
    def tiles(self) -> int:
        """How many cells (tiles) are covered."""
        return int(np.count_nonzero(self.mask))

    def cells(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Column and row indices of the covered cells (row-major order)."""
        r, c = np.nonzero(self.mask)
        return c.astype(np.int64) + self.col0, r.astype(np.int64) + self.row0

    def bbox(self) -> tuple[float, float, float, float] | None:
        """``(west, south, east, north)`` of the covered cells' edges, ``None`` when empty."""
        if not self.mask.any():
            return None
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return (
            (self.col0 + cols[0]) / 10, (self.row0 + rows[0]) / 10,
            (self.col0 + cols[-1] + 1) / 10, (self.row0 + rows[-1] + 1) / 10,
        )  # fmt: skip


def cell_index(values: ArrayLike) -> NDArray[np.int64]:
    """Integer cell index of cell-centre coordinates (centres sit at (k + 0.5) / 10)."""
    return np.round(np.asarray(values, dtype=np.float64) * 10.0 - 0.5).astype(np.int64)


def cell_set(zone: int, year: int, snapshot: str, lon: ArrayLike, lat: ArrayLike) -> CellSet:
    """The :class:`CellSet` of tiles centred at ``lon``, ``lat`` (a tiles table's columns)."""
    cols, rows = cell_index(lon), cell_index(lat)
    if cols.size == 0:
        return CellSet(int(zone), int(year), snapshot, 0, 0, np.zeros((0, 0), bool))
    col0, row0 = int(cols.min()), int(rows.min())
    mask = np.zeros((int(rows.max()) - row0 + 1, int(cols.max()) - col0 + 1), dtype=bool)
    mask[rows - row0, cols - col0] = True
    return CellSet(int(zone), int(year), snapshot, col0, row0, mask)


def encode(cs: CellSet) -> dict[str, Any]:
    """A JSON record of ``cs`` (bits packed, zlib, base64)."""
    packed = np.packbits(cs.mask, axis=None).tobytes()
    return {
        "snapshot": cs.snapshot,
        "tiles": cs.tiles,
        "col0": cs.col0,
        "row0": cs.row0,
        "rows": int(cs.mask.shape[0]),
        "cols": int(cs.mask.shape[1]),
        "bits": base64.b64encode(zlib.compress(packed, 9)).decode("ascii"),
    }


def _int(doc: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{key} must be an integer in [{lo}, {hi}], found {value!r}")
    return value


def decode(doc: Any, zone: int, year: int) -> CellSet:
    """Check and decode one record; :class:`ValueError` naming what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError(f"a coverage record is an object, found {type(doc).__name__}")
    snapshot = doc.get("snapshot")
    if not isinstance(snapshot, str) or not _SNAPSHOT_RE.match(snapshot):
        raise ValueError(f"snapshot must be an Icechunk snapshot id, found {snapshot!r:.40}")
    col0 = _int(doc, "col0", *COLS)
    row0 = _int(doc, "row0", *ROWS)
    cols = _int(doc, "cols", 0, COLS[1] - col0)
    rows = _int(doc, "rows", 0, ROWS[1] - row0)
    tiles = _int(doc, "tiles", 0, rows * cols)
    bits = doc.get("bits")
    if not isinstance(bits, str) or len(bits) > _MAX_TEXT:
        raise ValueError("bits must be a base64 text of at most 1 MiB")
    size = (rows * cols + 7) // 8
    try:
        inflate = zlib.decompressobj()
        packed = inflate.decompress(base64.b64decode(bits, validate=True), size + 1)
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"bits are not base64 zlib data: {exc}") from None
    if len(packed) != size or inflate.unconsumed_tail:
        raise ValueError(f"bits hold {len(packed)}+ bytes, expected {size} for {rows}x{cols}")
    mask = np.unpackbits(np.frombuffer(packed, np.uint8), count=rows * cols).astype(bool)
    cs = CellSet(int(zone), int(year), snapshot, col0, row0, mask.reshape(rows, cols))
    if cs.tiles != tiles:
        raise ValueError(f"tiles says {tiles} but the bitmap holds {cs.tiles} cells")
    return cs
