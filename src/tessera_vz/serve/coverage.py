"""What an index covers, as GeoJSON: the cells of its tiles and the gaps between them.

The viewer draws each tile as its 0.1-degree cell (centre +- 0.05 degrees),
the area whose pixels the mosaic rule takes from it (the catalog's
*footprint* is another thing: the tile's UTM rectangle unprojected). Cells
are drawn from the per-year ``tiles`` tables (:meth:`TesseraStore.tiles`), never by opening tile
groups, so a year of a whole zone costs one table read.

A *gap* of year Y is a 0.1-degree cell of a zone that has no tile of Y although
the index says one is expected there: either the cell is indexed in another
year of that zone (a tile missing from Y, e.g. one whose scales file was
missing upstream), or it lies between tiles of Y both along its row and along
its column (a hole inside the covered area). Cells outside the covered area
(oceans, places never indexed) are not gaps.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.reader import TesseraStore, TileNotFoundError

log = logging.getLogger(__name__)

#: Half the side of a tile's cell, in degrees.
HALF_CELL = 0.05


@dataclass(frozen=True)
class Cells:
    """Tiles (or gaps) of one year: integer cell indices, zones and names."""

    col: NDArray[np.int64]  # floor(lon * 10) of the cell
    row: NDArray[np.int64]  # floor(lat * 10) of the cell
    zone: NDArray[np.int64]
    name: NDArray[np.str_]
    reason: NDArray[np.str_] | None = None

    @property
    def lon(self) -> NDArray[np.float64]:
        """Cell-centre longitudes."""
        return np.asarray((self.col + 0.5) / 10.0, dtype=np.float64)

    @property
    def lat(self) -> NDArray[np.float64]:
        """Cell-centre latitudes."""
        return np.asarray((self.row + 0.5) / 10.0, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.col.size)

    def within(self, bbox: tuple[float, float, float, float] | None) -> NDArray[np.bool_]:
        """Which cells intersect ``bbox`` (all when ``None``)."""
        if bbox is None:
            return np.ones(len(self), dtype=bool)
        w, s, e, n = bbox
        lon, lat = self.lon, self.lat
        return (
            (lon + HALF_CELL > w) & (lon - HALF_CELL < e)
            & (lat + HALF_CELL > s) & (lat - HALF_CELL < n)
        )  # fmt: skip


def _cell_index(values: NDArray[np.float64]) -> NDArray[np.int64]:
    """Integer cell index of cell-centre coordinates (centres sit at (k + 0.5) / 10)."""
    return np.round(np.asarray(values, dtype=np.float64) * 10.0 - 0.5).astype(np.int64)


def _empty() -> Cells:
    none = np.zeros(0, np.int64)
    return Cells(none, none, none, np.zeros(0, dtype=str), np.zeros(0, dtype=str))


class Coverage:
    """Tile cells and gaps of every indexed year, computed once per year.

    The store serves one snapshot per (zone, year) for its whole life, so
    the answers never go stale while the server runs.
    """

    def __init__(self, store: TesseraStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._tiles: dict[int, Cells] = {}
        self._gaps: dict[int, Cells] = {}
        self._zone_years: dict[int, list[int]] | None = None

    def zone_years(self) -> dict[int, list[int]]:
        """Years indexed in each zone."""
        with self._lock:
            if self._zone_years is None:
                self._zone_years = {z: self.store.years(z) for z in self.store.zones()}
            return self._zone_years

    def years(self) -> list[int]:
        """Every year indexed in some zone."""
        return sorted({y for ys in self.zone_years().values() for y in ys})

    def _zone_tiles(self, zone: int, year: int) -> tuple[NDArray[np.int64], ...] | None:
        if year not in self.zone_years().get(zone, []):
            return None
        try:
            table = self.store.tiles(year, zone)
        except TileNotFoundError:
            return None
        return (
            _cell_index(table["lon"].values),
            _cell_index(table["lat"].values),
            np.asarray(table["tile"].values, dtype=str),
        )  # type: ignore[return-value]

    def tiles(self, year: int) -> Cells:
        """The indexed tiles of ``year``, every zone (raises if no zone has the year)."""
        year = int(year)
        if year not in self.years():
            raise TileNotFoundError(f"year {year} is not indexed; indexed years: {self.years()}")
        with self._lock:
            cached = self._tiles.get(year)
        if cached is not None:
            return cached
        cols, rows, zones, names = [], [], [], []
        for zone in self.store.zones():
            found = self._zone_tiles(zone, year)
            if found is None:
                continue
            c, r, n = found
            cols.append(c)
            rows.append(r)
            zones.append(np.full(c.size, zone, np.int64))
            names.append(n)
        cells = (
            Cells(np.concatenate(cols), np.concatenate(rows), np.concatenate(zones),
                  np.concatenate(names))
            if cols else _empty()
        )  # fmt: skip
        with self._lock:
            self._tiles[year] = cells
        return cells

    def gaps(self, year: int) -> Cells:
        """Cells expected but missing in ``year`` (see the module docstring)."""
        year = int(year)
        tiles = self.tiles(year)
        with self._lock:
            cached = self._gaps.get(year)
        if cached is not None:
            return cached
        parts: list[Cells] = []
        for zone, years in self.zone_years().items():
            mine = tiles.zone == zone
            present = set(zip(tiles.col[mine].tolist(), tiles.row[mine].tolist(), strict=True))
            other: set[tuple[int, int]] = set()
            for y in years:
                if y != year and (found := self._zone_tiles(zone, y)) is not None:
                    other |= set(zip(found[0].tolist(), found[1].tolist(), strict=True))
            missing_other = sorted(other - present)
            enclosed = sorted(_enclosed(tiles.col[mine], tiles.row[mine]) - present - other)
            for cells, reason in ((missing_other, "indexed in another year"),
                                  (enclosed, "hole inside the covered area")):  # fmt: skip
                if not cells:
                    continue
                c = np.array([p[0] for p in cells], np.int64)
                r = np.array([p[1] for p in cells], np.int64)
                parts.append(
                    Cells(c, r, np.full(c.size, zone, np.int64),
                          np.array([_name(ci, ri) for ci, ri in cells], dtype=str),
                          np.full(c.size, reason))
                )  # fmt: skip
        gaps = (
            Cells(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("col", "row", "zone", "name", "reason")))
            if parts else _empty()
        )  # fmt: skip
        with self._lock:
            self._gaps[year] = gaps
        log.debug("year %d: %d tiles, %d gaps", year, len(tiles), len(gaps))
        return gaps

    def bounds(self) -> list[float] | None:
        """``[west, south, east, north]`` of every indexed tile of every year."""
        boxes = []
        for year in self.years():
            t = self.tiles(year)
            if len(t):
                boxes.append((t.lon.min(), t.lat.min(), t.lon.max(), t.lat.max()))
        if not boxes:
            return None
        b = np.array(boxes)
        lo = b[:, :2].min(axis=0) - HALF_CELL
        hi = b[:, 2:].max(axis=0) + HALF_CELL
        return [round(float(v), 2) for v in (*lo, *hi)]


def _name(col: int, row: int) -> str:
    return f"grid_{(col + 0.5) / 10:.2f}_{(row + 0.5) / 10:.2f}"


def _enclosed(cols: NDArray[np.int64], rows: NDArray[np.int64]) -> set[tuple[int, int]]:
    """Cells lying between present cells both along their row and along their column."""
    if cols.size == 0:
        return set()
    row_lo: dict[int, int] = {}
    row_hi: dict[int, int] = {}
    col_lo: dict[int, int] = {}
    col_hi: dict[int, int] = {}
    for c, r in zip(cols.tolist(), rows.tolist(), strict=True):
        row_lo[r] = min(row_lo.get(r, c), c)
        row_hi[r] = max(row_hi.get(r, c), c)
        col_lo[c] = min(col_lo.get(c, r), r)
        col_hi[c] = max(col_hi.get(c, r), r)
    out = set()
    for r, lo in row_lo.items():
        for c in range(lo + 1, row_hi[r]):
            if c in col_lo and col_lo[c] < r < col_hi[c]:
                out.add((c, r))
    return out


def feature_collection(
    cells: Cells, year: int, bbox: tuple[float, float, float, float] | None
) -> dict[str, Any]:
    """GeoJSON FeatureCollection of ``cells`` intersecting ``bbox``: one cell polygon each."""
    keep = np.flatnonzero(cells.within(bbox))
    features = []
    for i in keep.tolist():
        c, r = int(cells.col[i]), int(cells.row[i])
        w, s, e, n = c / 10, r / 10, (c + 1) / 10, (r + 1) / 10
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        props: dict[str, Any] = {
            "tile": str(cells.name[i]),
            "zone": int(cells.zone[i]),
            "year": int(year),
        }
        if cells.reason is not None:
            props["reason"] = str(cells.reason[i])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[round(x, 2), round(y, 2)]
                                                                 for x, y in ring]]},
                "properties": props,
            }
        )  # fmt: skip
    return {"type": "FeatureCollection", "features": features}
