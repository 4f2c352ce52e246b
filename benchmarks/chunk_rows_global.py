"""Chunk rows the layout's rule gives over the heights of the real global grid.

Every 0.1-degree cell between 56 S and 72 N (all cells, no land mask), its
tile height H and width W from :func:`tessera_vz.core.geometry.tile_grids`,
and the rows per virtual chunk :func:`tessera_vz.core.layout.chunk_rows`
gives embeddings (``W x 128`` bytes a row) within the 1 MiB budget. Prints a
markdown table of the distribution (for ``benchmarks/RESULTS.md``).
``python benchmarks/chunk_rows_global.py`` (a few seconds).
"""

from __future__ import annotations

import sys

import numpy as np

from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import BAND_COUNT, CHUNK_BUDGET, chunk_rows


def heights() -> tuple[np.ndarray, np.ndarray]:
    """``H`` and ``W`` of every cell centre (odd multiples of 0.05) in 56 S .. 72 N."""
    lons = np.round(np.arange(-179.95, 180, 0.1), 2)
    lats = np.round(np.arange(-55.95, 72, 0.1), 2)
    lon, lat = (a.ravel() for a in np.meshgrid(lons, lats))
    g = tile_grids(lon, lat)
    return np.asarray(g.height, np.int64), np.asarray(g.width, np.int64)


def main() -> int:
    h, w = heights()
    pairs, count = np.unique(np.stack([h, w]), axis=1, return_counts=True)
    k = np.array([chunk_rows(int(a), int(b) * BAND_COUNT, CHUNK_BUDGET) for a, b in pairs.T])
    best = CHUNK_BUDGET // (pairs[1] * BAND_COUNT)  # rows a budget-sized chunk would hold
    n = int(count.sum())
    print(f"{n:,} cells; H from {h.min()} to {h.max()}, W from {w.min()} to {w.max()}")
    print("| chunk rows | cells | share | chunks per tile (median) |")
    print("| --- | --- | --- | --- |")
    for value in np.unique(k):
        m = k == value
        cells = int(count[m].sum())
        chunks = np.repeat(pairs[0][m] // value, count[m])
        print(f"| {value} | {cells:,} | {cells / n:.1%} | {int(np.median(chunks))} |")
    fits = np.repeat(k == best, count).mean()
    print(f"\nrows a 1 MiB chunk could hold: {int(best.min())}-{int(best.max())}; "
          f"the divisor rule reaches it for {fits:.1%} of cells")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
