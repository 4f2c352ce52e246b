"""Which tiles the simulated global year holds, and their shapes.

Upstream covers every 0.1-degree cell between 56 S and 72 N whose area has
land. Here a cell is on land when its centre is, by the ``global-land-mask``
package (a 1 km GLOBE-derived mask, the ``bench`` extra): about 1.45 M
cells, against upstream's ~1.8 M that count coastal cells too. ``--cells N``
takes N of them in a fixed pseudo-random order (a seeded permutation), so a
small world is spread over the whole globe in proportion to land (about 50
UTM zones at N = 2,000) and a bigger one contains every smaller one.

A world is plain arrays (:class:`World`), saved as one ``.npz`` that the
tile server loads: tile ``i`` has the key :func:`cell_key` of its centre,
the real geometry rule's height and width (:func:`~tessera_vz.core.geometry.tile_grids`),
its zone, a last-modified second and a generation. The generation is the
content formula's seed: a tile "re-uploaded" by a sync benchmark gets
generation 1, a new mtime and other values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.geometry import tile_grids, utm_zone
from tessera_vz.core.layout import tile_name

#: Latitudes of upstream coverage (cell centres strictly between these).
SOUTH, NORTH = -56.0, 72.0
#: Seed of the order in which ``--cells N`` takes land cells.
ORDER_SEED = 23
#: Last-modified time of generation 0 (each tile adds a few hours, by its index).
BASE_MTIME = int(dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp())
#: Seconds a new generation adds to a tile's last-modified time.
GENERATION_STEP = 30 * 86400


def cell_key(lon_i: NDArray[np.int64] | int, lat_i: NDArray[np.int64] | int) -> NDArray[np.int64]:
    """One sortable integer per cell from its centre in hundredths of a degree."""
    return (np.asarray(lon_i, dtype=np.int64) + 18000) * 20000 + (
        np.asarray(lat_i, dtype=np.int64) + 9000
    )


def land_cells() -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(lon_i, lat_i)`` of every cell between 56 S and 72 N whose centre is on land."""
    try:
        from global_land_mask import globe
    except ImportError:
        raise ImportError(
            "the simulated world needs the land mask of `global-land-mask`: "
            "pip install 'tessera-vz[bench]' (make bench installs it)"
        ) from None
    lat_i = np.arange(int(SOUTH * 10), int(NORTH * 10), dtype=np.int64) * 10 + 5
    lon_i = np.arange(-1800, 1800, dtype=np.int64) * 10 + 5
    la, lo = np.meshgrid(lat_i, lon_i, indexing="ij")
    land = globe.is_land(la / 100.0, lo / 100.0)
    return lo[land], la[land]


@dataclass(frozen=True)
class World:
    """One simulated year: parallel arrays, one element per tile, sorted by :func:`cell_key`."""

    year: int
    key: NDArray[np.int64]
    lon_i: NDArray[np.int64]
    lat_i: NDArray[np.int64]
    height: NDArray[np.int64]
    width: NDArray[np.int64]
    zone: NDArray[np.int64]
    mtime: NDArray[np.int64]
    generation: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.key.size)

    @property
    def lon(self) -> NDArray[np.float64]:
        return self.lon_i / 100.0

    @property
    def lat(self) -> NDArray[np.float64]:
        return self.lat_i / 100.0

    def names(self) -> list[str]:
        """Upstream tile names, in order."""
        return [tile_name(a / 100, b / 100) for a, b in zip(self.lon_i, self.lat_i, strict=True)]

    def find(self, lon_i: NDArray[np.int64], lat_i: NDArray[np.int64]) -> NDArray[np.int64]:
        """Index of each cell's tile, or -1 where the world has none."""
        k = cell_key(lon_i, lat_i)
        at = np.clip(np.searchsorted(self.key, k), 0, max(len(self) - 1, 0))
        hit = (self.key[at] == k) if len(self) else np.zeros(k.shape, bool)
        return np.where(hit, at, -1)

    def changed(self, every: int) -> World:
        """This world with every ``every``-th tile in a new generation (new mtime, new values)."""
        gen = self.generation.copy()
        gen[::every] += 1
        mtime = self.mtime + (gen - self.generation) * GENERATION_STEP
        return replace(self, generation=gen, mtime=mtime)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, year=self.year, **{f: getattr(self, f) for f in _ARRAYS})
        return path

    @classmethod
    def load(cls, path: str | Path) -> World:
        with np.load(path) as z:
            return cls(year=int(z["year"]), **{f: z[f].astype(np.int64) for f in _ARRAYS})


_ARRAYS = ("key", "lon_i", "lat_i", "height", "width", "zone", "mtime", "generation")


def make_world(
    cells: int | None,
    year: int = 2024,
    *,
    include: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None,
) -> World:
    """The first ``cells`` land cells in the fixed order (all with ``None``), plus ``include``.

    ``include`` adds given cells (e.g. a strip across three zones that a
    region benchmark reads) whether or not the order picked them; cells
    off land are dropped from it too.
    """
    lon_i, lat_i = land_cells()
    order = np.random.default_rng(ORDER_SEED).permutation(lon_i.size)
    take = order if cells is None else order[: int(cells)]
    keys = cell_key(lon_i[take], lat_i[take])
    if include is not None:
        land = np.isin(cell_key(*include), cell_key(lon_i, lat_i))
        keys = np.union1d(keys, cell_key(include[0][land], include[1][land]))
    return world_of(keys, year)


def world_of(keys: NDArray[np.int64], year: int = 2024) -> World:
    """The world of exactly these cells (:func:`cell_key` values), land or not."""
    keys = np.unique(np.asarray(keys, dtype=np.int64))
    lo = keys // 20000 - 18000
    la = keys % 20000 - 9000
    grids = tile_grids(lo / 100.0, la / 100.0)
    n = keys.size
    return World(
        year=int(year),
        key=keys,
        lon_i=lo,
        lat_i=la,
        height=np.asarray(grids.height, dtype=np.int64),
        width=np.asarray(grids.width, dtype=np.int64),
        zone=np.asarray(utm_zone(lo / 100.0), dtype=np.int64),
        mtime=BASE_MTIME + (np.arange(n, dtype=np.int64) * 7919) % 36_000,
        generation=np.zeros(n, dtype=np.int64),
    )
