"""What an index covers, as GeoJSON: the cells of its tiles and the gaps between them.

The viewer draws each tile as its 0.1-degree cell (centre +- 0.05 degrees),
the area whose pixels the mosaic rule takes from it (the catalog's
*footprint* is another thing: the tile's UTM rectangle unprojected). Each
zone-year is a bitmap of cells (:class:`~tessera_vz.core.cells.CellSet`):
the one the indexer recorded in the zone's repository (branch ``coverage``)
when its snapshot is the one this store reads (no tiles table is loaded: a global year's counts,
raster and gaps cost one small read per zone), else computed once from the
zone-year's ``tiles`` table (:meth:`TesseraStore.tiles`, cached on disk by
snapshot).

A *gap* of year Y is a 0.1-degree cell of a zone that has no tile of Y although
the index says one is expected there: either the cell is indexed in another
year of that zone (a tile missing from Y, e.g. one whose scales file was
missing upstream), or it lies between tiles of Y both along its row and along
its column (a hole inside the covered area). Cells outside the covered area
(oceans, places never indexed) are not gaps. Gaps are whole-array operations
on the bitmaps, never sets of cells.

A published index is read over a network: each zone costs a few round trips
that depend on one another (its repository info, then the snapshot of its
branch ``coverage``), while different zones' do not. So every zone is loaded
on threads, :data:`ZONE_THREADS` at a time (:meth:`Coverage.load`): sixty
zones at +20 ms wait for about four zones' worth, not sixty.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import icechunk as ic
import numpy as np
import zarr
from numpy.typing import NDArray

from tessera_vz.core import cells as cellmaps
from tessera_vz.core.cells import CellSet, cell_index
from tessera_vz.core.text import printable
from tessera_vz.reader import TesseraStore, TileNotFoundError
from tessera_vz.reader.versions import snapshot_to_read

log = logging.getLogger(__name__)

#: Half the side of a tile's cell, in degrees.
HALF_CELL = 0.05
GAP_REASONS = ("indexed in another year", "hole inside the covered area")
BBox = tuple[float, float, float, float]
#: Zones loaded at once (each mostly waits on round trips; Icechunk releases the GIL).
ZONE_THREADS = 16


def each_zone[T, R](work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[work(i) for i in items]`` on at most :data:`ZONE_THREADS` threads, in order."""
    if len(items) < 2:
        return [work(i) for i in items]
    with ThreadPoolExecutor(min(ZONE_THREADS, len(items)), "tessera-vz-coverage") as pool:
        return list(pool.map(work, items))


@dataclass(frozen=True)
class Cells:
    """Tiles (or gaps) of one year: integer cell indices, zones and names."""

    col: NDArray[np.int64]  # floor(lon * 10) of the cell
    row: NDArray[np.int64]  # floor(lat * 10) of the cell
    zone: NDArray[np.int64]
    reason: NDArray[np.str_] | None = None

    @property
    def lon(self) -> NDArray[np.float64]:
        """Cell-centre longitudes."""
        return np.asarray((self.col + 0.5) / 10.0, dtype=np.float64)

    @property
    def lat(self) -> NDArray[np.float64]:
        """Cell-centre latitudes."""
        return np.asarray((self.row + 0.5) / 10.0, dtype=np.float64)

    @property
    def name(self) -> list[str]:
        """Tile names (``grid_0.85_49.95``): a tile is named after its cell's centre."""
        return [_name(c, r) for c, r in zip(self.col.tolist(), self.row.tolist(), strict=True)]

    def __len__(self) -> int:
        return int(self.col.size)

    def within(self, bbox: BBox | None) -> NDArray[np.bool_]:
        """Which cells intersect ``bbox`` (all when ``None``)."""
        if bbox is None:
            return np.ones(len(self), dtype=bool)
        w, s, e, n = bbox
        lon, lat = self.lon, self.lat
        return (
            (lon + HALF_CELL > w) & (lon - HALF_CELL < e)
            & (lat + HALF_CELL > s) & (lat - HALF_CELL < n)
        )  # fmt: skip

    def take(self, keep: NDArray[np.bool_]) -> Cells:
        """The cells where ``keep`` is true."""
        reason = self.reason[keep] if self.reason is not None else None
        return Cells(self.col[keep], self.row[keep], self.zone[keep], reason)


def _cells_of(sets: list[tuple[CellSet, str | None]]) -> Cells:
    """Concatenate the cells of bitmaps (each with its gap reason, or ``None`` for tiles)."""
    cols, rows, zones, reasons = [], [], [], []
    for cs, reason in sets:
        c, r = cs.cells()
        cols.append(c)
        rows.append(r)
        zones.append(np.full(c.size, cs.zone, np.int64))
        reasons.append(np.full(c.size, reason or ""))
    if not cols:
        none = np.zeros(0, np.int64)
        return Cells(none, none, none, None)
    gap = any(reason is not None for _, reason in sets)
    return Cells(np.concatenate(cols), np.concatenate(rows), np.concatenate(zones),
                 np.concatenate(reasons) if gap else None)  # fmt: skip


def _intersects(cs: CellSet, bbox: BBox | None) -> bool:
    box = cs.bbox()
    if box is None:
        return False
    if bbox is None:
        return True
    return box[0] < bbox[2] and box[2] > bbox[0] and box[1] < bbox[3] and box[3] > bbox[1]


class Coverage:
    """Tile cells and gaps of every indexed year, each zone-year found once.

    The store serves one snapshot per (zone, year) for its whole life, so
    the answers never go stale while the server runs. ``table_reads`` counts
    the tiles tables loaded because no record matched (what the tests watch).
    """

    def __init__(self, store: TesseraStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._zone_years: dict[int, list[int]] | None = None
        self._recorded: dict[int, dict[str, Any]] = {}
        self._sets: dict[tuple[int, int], CellSet] = {}
        self._gaps: dict[int, list[tuple[CellSet, str]]] = {}
        self.table_reads = 0
        #: One :meth:`load` at a time: a second caller waits for the first's work.
        self._loading = threading.Lock()
        self._loaded = False

    def zone_years(self) -> dict[int, list[int]]:
        """Years indexed in each zone."""
        with self._lock:
            if self._zone_years is not None:
                return self._zone_years
        zones = self.store.zones()
        found = dict(zip(zones, each_zone(self.store.years, zones), strict=True))
        with self._lock:
            if self._zone_years is None:
                self._zone_years = found
            return self._zone_years

    def load(self) -> None:
        """Find every zone-year's cells, the zones concurrently (module docstring).

        Per zone, one after the other: its years (the repository info), its
        records (the snapshot of branch ``coverage``), each year's bitmap.
        Done once: the viewer starts it when it starts, and ``/api/info``
        waits for it (or does it, if that failed).
        """
        with self._loading:
            if self._loaded:
                return
            years = self.zone_years()

            def zone_sets(zone: int) -> None:
                for year in years[zone]:
                    self.cell_set(zone, year)

            each_zone(zone_sets, sorted(years))
            self._loaded = True

    def years(self) -> list[int]:
        """Every year indexed in some zone."""
        return sorted({y for ys in self.zone_years().values() for y in ys})

    def _records(self, zone: int) -> dict[str, Any]:
        """The cell records of the zone's branch ``coverage`` (untrusted; decoded on use)."""
        if zone not in self._recorded:
            doc = None
            try:
                repo = self.store.repo(zone)
                if cellmaps.BRANCH in repo.list_branches():
                    store = repo.readonly_session(branch=cellmaps.BRANCH).store
                    root = zarr.open_group(store, mode="r", zarr_format=3)
                    doc = root.attrs.get(cellmaps.ATTRIBUTE)
            except (KeyError, ValueError, ic.IcechunkError, FileNotFoundError):
                doc = None
            ok = isinstance(doc, dict) and doc.get("version") == cellmaps.VERSION
            years = doc.get("years") if ok else None  # type: ignore[union-attr]
            self._recorded[zone] = years if isinstance(years, dict) else {}
        return self._recorded[zone]

    def cell_set(self, zone: int, year: int) -> CellSet | None:
        """The cells of a zone-year (``None`` if the zone has not indexed the year)."""
        key = (int(zone), int(year))
        with self._lock:
            if key in self._sets:
                return self._sets[key]
        if year not in self.zone_years().get(zone, []):
            return None
        repo = self.store.repo(zone)
        snapshot = snapshot_to_read(repo, self.store.versions, zone, year, self.store.root)[0]
        found = None
        record = self._records(zone).get(str(year))
        if record is not None:
            try:
                found = cellmaps.decode(record, zone, year)
            except ValueError as exc:
                log.warning("zone %d year %d: coverage record refused: %s", zone, year,
                            printable(str(exc)))  # fmt: skip
        if found is None or found.snapshot != snapshot:
            try:
                table = self.store.tiles(year, zone)
            except TileNotFoundError:
                return None
            with self._lock:
                self.table_reads += 1
            found = cellmaps.cell_set(zone, year, snapshot, table["lon"].values,
                                      table["lat"].values)  # fmt: skip
        with self._lock:
            self._sets[key] = found
        return found

    def sets(self, year: int) -> list[CellSet]:
        """Every zone's cells of ``year`` (raises if no zone has the year)."""
        year = int(year)
        if year not in self.years():
            raise TileNotFoundError(f"year {year} is not indexed; indexed years: {self.years()}")
        found = each_zone(lambda z: self.cell_set(z, year), self.store.zones())
        return [cs for cs in found if cs is not None]

    def count(self, year: int) -> int:
        """How many tiles ``year`` has, every zone."""
        return sum(cs.tiles for cs in self.sets(year))

    def tiles(self, year: int, bbox: BBox | None = None) -> Cells:
        """The indexed tiles of ``year`` intersecting ``bbox`` (all when ``None``)."""
        cells = _cells_of([(cs, None) for cs in self.sets(year) if _intersects(cs, bbox)])
        return cells if bbox is None else cells.take(cells.within(bbox))

    def gap_sets(self, year: int) -> list[tuple[CellSet, str]]:
        """Per zone, bitmaps of the cells expected but missing in ``year``, with the reason."""
        year = int(year)
        mine = {cs.zone: cs for cs in self.sets(year)}
        with self._lock:
            if year in self._gaps:
                return self._gaps[year]
        out: list[tuple[CellSet, str]] = []
        for zone, years in self.zone_years().items():
            others = [cs for y in years if y != year and (cs := self.cell_set(zone, y))]
            present = mine.get(zone)
            for mask, reason in zip(_gap_masks(present, others), GAP_REASONS, strict=True):
                if mask is not None and mask.mask.any():
                    out.append((mask, reason))
        with self._lock:
            self._gaps[year] = out
        return out

    def gap_count(self, year: int) -> int:
        """How many gaps ``year`` has, every zone."""
        return sum(cs.tiles for cs, _ in self.gap_sets(year))

    def gaps(self, year: int, bbox: BBox | None = None) -> Cells:
        """Cells expected but missing in ``year`` intersecting ``bbox`` (module docstring)."""
        cells = _cells_of([(cs, r) for cs, r in self.gap_sets(year) if _intersects(cs, bbox)])
        return cells if bbox is None else cells.take(cells.within(bbox))

    def bounds(self) -> list[float] | None:
        """``[west, south, east, north]`` of every indexed tile of every year."""
        boxes = [b for y in self.years() for cs in self.sets(y) if (b := cs.bbox()) is not None]
        if not boxes:
            return None
        edges = np.array(boxes)
        lo, hi = edges[:, :2].min(axis=0), edges[:, 2:].max(axis=0)
        return [round(float(v), 2) for v in (*lo, *hi)]


def _frame(sets: list[CellSet]) -> tuple[int, int, int, int]:
    """``(col0, row0, cols, rows)`` of the union of the bitmaps' boxes."""
    col0 = min(cs.col0 for cs in sets)
    row0 = min(cs.row0 for cs in sets)
    col1 = max(cs.col0 + cs.mask.shape[1] for cs in sets)
    row1 = max(cs.row0 + cs.mask.shape[0] for cs in sets)
    return col0, row0, col1 - col0, row1 - row0


def _placed(cs: CellSet | None, frame: tuple[int, int, int, int]) -> NDArray[np.bool_]:
    col0, row0, cols, rows = frame
    out = np.zeros((rows, cols), dtype=bool)
    if cs is not None and cs.mask.size:
        r, c = cs.row0 - row0, cs.col0 - col0
        out[r : r + cs.mask.shape[0], c : c + cs.mask.shape[1]] = cs.mask
    return out


def _between(mask: NDArray[np.bool_], axis: int) -> NDArray[np.bool_]:
    """Cells with a set cell on both sides along ``axis``."""
    before = np.maximum.accumulate(mask, axis=axis)
    after = np.flip(np.maximum.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
    return np.asarray(before & after)


def _gap_masks(
    present: CellSet | None, others: list[CellSet]
) -> tuple[CellSet | None, CellSet | None]:
    """(cells indexed in another year only, holes enclosed by ``present``), as bitmaps."""
    sets = [cs for cs in (present, *others) if cs is not None and cs.mask.size]
    if not sets:
        return None, None
    frame = _frame(sets)
    p = _placed(present, frame)
    other = np.zeros_like(p)
    for cs in others:
        other |= _placed(cs, frame)
    enclosed = _between(p, 0) & _between(p, 1) & ~p & ~other
    zone, year = sets[0].zone, present.year if present is not None else 0
    return (
        CellSet(zone, year, "", frame[0], frame[1], other & ~p),
        CellSet(zone, year, "", frame[0], frame[1], enclosed),
    )


def _name(col: int, row: int) -> str:
    return f"grid_{(col + 0.5) / 10:.2f}_{(row + 0.5) / 10:.2f}"


def feature_collection(cells: Cells, year: int, bbox: BBox | None) -> dict[str, Any]:
    """GeoJSON FeatureCollection of ``cells`` intersecting ``bbox``: one cell polygon each."""
    keep = cells.take(cells.within(bbox))
    features = []
    for i, name in enumerate(keep.name):
        c, r = int(keep.col[i]), int(keep.row[i])
        w, s, e, n = c / 10, r / 10, (c + 1) / 10, (r + 1) / 10
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        props: dict[str, Any] = {"tile": name, "zone": int(keep.zone[i]), "year": int(year)}
        if keep.reason is not None:
            props["reason"] = str(keep.reason[i])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[round(x, 2), round(y, 2)]
                                                                 for x, y in ring]]},
                "properties": props,
            }
        )  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


__all__ = ["Cells", "Coverage", "cell_index", "feature_collection"]
