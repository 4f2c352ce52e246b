"""Which tiles exist: the inventory, one row per tile, cut into (zone, year) units.

An inventory comes from an upstream ``manifest.parquet``
(:mod:`~tessera_vz.indexer.manifest`) or from listing a local or S3 tree
(:mod:`~tessera_vz.indexer.listing`). Either way it is an Arrow table of
:data:`INVENTORY_SCHEMA` plus the rows that were refused, each with its
reason, so a bad row never stops the run; :class:`TileSource` is one row as
a Python object, for the few tiles that are probed.

The inventory also keeps what it says about each file (size and modification
time or ETag, as the manifest or listing gives them: ``emb_listed`` and
``scales_listed``). The index records those facts when it indexes a tile, and
a re-run compares them, inventory with inventory, to probe only the tiles
that are new or changed (see :mod:`~tessera_vz.indexer.sync`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tessera_vz.core.geometry import utm_zone
from tessera_vz.core.layout import source_paths

#: One row per tile. ``emb_listed``/``scales_listed``: the inventory's facts
#: about each file (``size=…;mtime=…`` from a manifest, ``size=…;etag=…`` or
#: ``size=…;modified=…`` from a listing), null when it gives none.
INVENTORY_SCHEMA = pa.schema(
    [
        ("year", pa.int32()),
        ("name", pa.string()),
        ("lon", pa.float64()),
        ("lat", pa.float64()),
        ("zone", pa.int16()),
        ("emb_listed", pa.string()),
        ("scales_listed", pa.string()),
    ]
)


@dataclass(frozen=True)
class TileSource:
    """One tile of one year as found in the inventory.

    ``emb_listed``/``scales_listed`` are the inventory's facts about the two
    files ("" when it gives none); the index records them with the tile.
    """

    year: int
    name: str
    lon: float
    lat: float
    emb_path: str
    scales_path: str
    emb_listed: str = ""
    scales_listed: str = ""

    @property
    def zone(self) -> int:
        return int(utm_zone(self.lon))


def wanted(year: int, lon: float, years: set[int] | None, zones: set[int] | None) -> bool:
    """Whether a tile of ``year`` at ``lon`` passes the year and zone filters (None: all)."""
    return (years is None or year in years) and (zones is None or int(utm_zone(lon)) in zones)


def wanted_mask(t: pa.Table, years: set[int] | None, zones: set[int] | None) -> pa.Array:
    """:func:`wanted` over a whole table with ``year`` and ``zone`` columns."""
    ok = pa.array(np.ones(t.num_rows, dtype=bool))
    if years is not None:
        ok = pc.and_(ok, pc.is_in(t.column("year"), value_set=pa.array(sorted(years), pa.int32())))
    if zones is not None:
        ok = pc.and_(ok, pc.is_in(t.column("zone"), value_set=pa.array(sorted(zones), pa.int16())))
    return ok


def table_of(rows: Sequence[tuple[int, str, float, float, str, str]]) -> pa.Table:
    """An inventory table of (year, name, lon, lat, emb facts, scales facts) tuples."""
    if not rows:
        return INVENTORY_SCHEMA.empty_table()
    year, name, lon, lat, emb, sca = zip(*rows, strict=True)
    return pa.table(
        {
            "year": pa.array(year, pa.int32()),
            "name": pa.array(name, pa.string()),
            "lon": pa.array(lon, pa.float64()),
            "lat": pa.array(lat, pa.float64()),
            "zone": pa.array(utm_zone(np.asarray(lon, dtype=np.float64)).astype(np.int16)),
            "emb_listed": pa.array([e or None for e in emb], pa.string()),
            "scales_listed": pa.array([s or None for s in sca], pa.string()),
        },
        schema=INVENTORY_SCHEMA,
    )


def inventory_table(tiles: Iterable[TileSource]) -> pa.Table:
    """An inventory table of tile sources (their facts, if any, included)."""
    return table_of([(t.year, t.name, t.lon, t.lat, t.emb_listed, t.scales_listed) for t in tiles])


def tile_sources(table: pa.Table) -> list[TileSource]:
    """The rows of an inventory table as :class:`TileSource` (only rows that need them)."""
    cols = {c: table.column(c).to_pylist() for c in INVENTORY_SCHEMA.names}
    out = []
    for year, name, lon, lat, emb, sca in zip(
        cols["year"], cols["name"], cols["lon"], cols["lat"],
        cols["emb_listed"], cols["scales_listed"], strict=True,
    ):  # fmt: skip
        emb_path, sca_path = source_paths(year, name)
        out.append(TileSource(year, name, lon, lat, emb_path, sca_path, emb or "", sca or ""))
    return out


class Units(Mapping[tuple[int, int], pa.Table]):
    """An inventory's (zone, year) units, each taken from the inventory when asked for.

    Units are processed one at a time, so taking each unit's rows on demand
    keeps memory at one inventory instead of a sorted copy of it beside the
    original (0.46 GB for a whole-archive manifest).
    """

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        zone = table.column("zone").to_numpy().astype(np.int64)
        year = table.column("year").to_numpy().astype(np.int64)
        key = zone * 10_000 + year
        order = np.argsort(key, kind="stable")
        cut = np.flatnonzero(np.diff(key[order]) != 0) + 1
        bounds = [0, *cut.tolist(), table.num_rows] if table.num_rows else []
        self._rows = {
            (int(zone[order[a]]), int(year[order[a]])): order[a:b]
            for a, b in itertools.pairwise(bounds)
        }

    def only(self, keys: Iterable[tuple[int, int]]) -> Units:
        """The same inventory restricted to the units ``keys`` (no rows copied)."""
        view = Units.__new__(Units)
        view._table = self._table
        view._rows = {k: self._rows[k] for k in keys}
        return view

    def __getitem__(self, key: tuple[int, int]) -> pa.Table:
        return self._table.take(pa.array(self._rows[key]))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def split_units(table: pa.Table) -> Units:
    """The inventory cut into its (zone, year) units (see :class:`Units`)."""
    return Units(table)
