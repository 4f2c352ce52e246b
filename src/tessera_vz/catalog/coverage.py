"""``coverage.png``: which 0.1-degree cells are indexed, one map per year.

Every tile is exactly one 0.1-degree cell, so a year's coverage is a boolean
raster of 3600 x 1800 cells drawn with ``imshow``, cropped to the indexed
area plus a margin: exact at any number of tiles (420,000 a year draw as
fast as ten). Land and coastlines come from the Natural Earth layer shipped
in the package (:mod:`tessera_vz.core.coastline`), so no basemap is
downloaded; UTM zone edges are drawn for orientation.

The PNG carries a ``tessera:panels`` text chunk: for each year the pixel
box of its map and the lon/lat extent it shows, so a program (or a test) can
find where any cell is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from tessera_vz.core.files import atomic_path

#: Colour of an indexed cell, of the map background (the sea), of land and of coastlines.
TILE_COLOUR = "#1f77b4"
BACKGROUND = "#f2f2f2"
LAND_COLOUR = "#d9d4c7"
COAST_COLOUR = "#5a5a5a"
PANELS_KEY = "tessera:panels"
CELL = 0.1
#: Columns of a map's raster at most (a map is ~390 pixels wide): wider
#: coverage is pooled, so every indexed cell stays visible.
MAX_COLS = 300


def _extent(lon: np.ndarray, lat: np.ndarray) -> tuple[float, float, float, float]:
    """Map extent: the cells' box plus a margin (a fifth of its size, at least two cells).

    Edges fall on whole cells (the raster's grid). A 0.6-degree dataset
    gets a map about a degree wide, not a continent.
    """
    if lon.size == 0:
        return -180.0, -90.0, 180.0, 90.0
    w, e = lon.min() - CELL / 2, lon.max() + CELL / 2
    s, n = lat.min() - CELL / 2, lat.max() + CELL / 2
    pad = max(2 * CELL, 0.2 * max(e - w, n - s))
    w, e = w - pad, e + pad
    s, n = s - pad, n + pad
    # Keep the map's aspect within 1:3 (tall) .. 3:1 (wide), so a north-south
    # strip of tiles does not become a sliver of a picture.
    grow_w = max(0.0, (n - s) / 1.2 - (e - w)) / 2
    grow_h = max(0.0, (e - w) / 3.0 - (n - s)) / 2
    # Up to 2 degrees beyond the globe's edges, so a tile at +/-180 is not hidden by the frame.
    w, e = max(-182.0, _cells(w - grow_w, math.floor)), min(182.0, _cells(e + grow_w, math.ceil))
    s, n = max(-92.0, _cells(s - grow_h, math.floor)), min(92.0, _cells(n + grow_h, math.ceil))
    return float(w), float(s), float(e), float(n)


def _cells(value: float, rounding: Any) -> float:
    """``value`` rounded to a whole number of cells (``math.floor`` or ``math.ceil``)."""
    return round(rounding(round(value / CELL, 6)) * CELL, 6)


def _draw_land(ax: Any, extent: Sequence[float]) -> None:
    """Land (filled) and its coastline under the tiles, from the shipped Natural Earth layer."""
    from matplotlib.collections import LineCollection, PolyCollection

    from tessera_vz.core.coastline import land_polygons

    # The globe's edges bound the land too, and are no coast.
    w, s, e, n = (
        max(extent[0], -180.0),
        max(extent[1], -90.0),
        min(extent[2], 180.0),
        min(extent[3], 90.0),
    )
    polygons = land_polygons((w, s, e, n))
    shells = [np.asarray(p.exterior.coords) for p in polygons]
    holes = [np.asarray(r.coords) for p in polygons for r in p.interiors]
    ax.add_collection(PolyCollection(shells, facecolors=LAND_COLOUR, edgecolors="none", zorder=0))
    ax.add_collection(PolyCollection(holes, facecolors=BACKGROUND, edgecolors="none", zorder=0))
    # The outline minus the clip rectangle's own edges: only real coasts get a line.
    lines = []
    for ring in shells + holes:
        on_frame = (
            np.isclose(ring[:, 0], w) | np.isclose(ring[:, 0], e)
            | np.isclose(ring[:, 1], s) | np.isclose(ring[:, 1], n)
        )  # fmt: skip
        keep = ~(on_frame[:-1] & on_frame[1:])  # a segment along the frame is no coast
        for a, b in zip(ring[:-1][keep], ring[1:][keep], strict=True):
            lines.append((a, b))
    ax.add_collection(LineCollection(lines, colors=COAST_COLOUR, linewidths=0.6, zorder=1))


def _grid(lon: np.ndarray, lat: np.ndarray, extent: Sequence[float]) -> np.ndarray:
    """Boolean raster of the extent at 0.1 degrees, row 0 at the north edge."""
    w, s, e, n = extent
    cols, rows = round((e - w) / CELL), round((n - s) / CELL)
    grid = np.zeros((rows, cols), dtype=bool)
    c = np.floor((lon - w) / CELL + 1e-9).astype(np.int64)
    r = np.floor((n - lat) / CELL + 1e-9).astype(np.int64)
    ok = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
    grid[r[ok], c[ok]] = True
    return grid


def _pool(grid: np.ndarray, max_cols: int) -> tuple[np.ndarray, int]:
    """Any-of pooling to at most ``max_cols`` columns, so no cell vanishes when drawn small.

    Returns the pooled grid and how many cells one of its pixels spans (it
    is padded at its east and south edges to a whole number of pixels).
    """
    f = max(1, math.ceil(grid.shape[1] / max_cols))
    if f == 1:
        return grid, 1
    rows, cols = math.ceil(grid.shape[0] / f) * f, math.ceil(grid.shape[1] / f) * f
    padded = np.zeros((rows, cols), dtype=bool)
    padded[: grid.shape[0], : grid.shape[1]] = grid
    return padded.reshape(rows // f, f, cols // f, f).any(axis=(1, 3)), f


def _dilate(grid: np.ndarray) -> np.ndarray:
    """Grow every set pixel into its 3 x 3 neighbourhood."""
    out = grid.copy()
    out[1:, :] |= grid[:-1, :]
    out[:-1, :] |= grid[1:, :]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def render(path: Path, lon: ArrayLike, lat: ArrayLike, year: ArrayLike) -> dict[str, Any]:
    """Draw the coverage of tiles centred at ``lon``/``lat`` per ``year`` into a PNG.

    Returns the panel description written into the PNG's ``tessera:panels``
    text chunk.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    year_a = np.asarray(year, dtype=np.int64)
    years = sorted({int(y) for y in year_a.tolist()}) or [0]
    extent = _extent(lon_a, lat_a)
    w, s, e, n = extent
    ncols = min(3, len(years))
    nrows = math.ceil(len(years) / ncols)
    aspect = (n - s) / max(e - w, 1e-9)
    panel_w = 4.5
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_w * ncols, panel_w * aspect * nrows + 0.9 * nrows),
        squeeze=False, dpi=100,
    )  # fmt: skip
    cmap = ListedColormap([BACKGROUND, TILE_COLOUR])
    panels = []
    for k, ax in enumerate(axes.ravel()):
        if k >= len(years):
            ax.set_visible(False)
            continue
        y = years[k]
        sel = year_a == y
        grid, factor = _pool(_grid(lon_a[sel], lat_a[sel], extent), max_cols=MAX_COLS)
        if grid.shape[1] > MAX_COLS // 3:
            grid = _dilate(grid)  # a lone cell would otherwise be a 1-pixel speck
        f = CELL * factor
        shown = (w, w + f * grid.shape[1], n - f * grid.shape[0], n)  # a pooled grid is padded
        ax.set_facecolor(BACKGROUND)
        _draw_land(ax, extent)
        # Cells not indexed are transparent, so land and coasts show through them.
        ax.imshow(np.ma.masked_where(~grid, grid), extent=shown, origin="upper", cmap=cmap,
                  vmin=0, vmax=1, interpolation="nearest", aspect="equal", zorder=2)  # fmt: skip
        if e - w <= 120.0:  # zone edges help at regional scale, clutter a world map
            for edge in np.arange(-180.0, 181.0, 6.0):
                if w < edge < e:
                    ax.axvline(edge, color="#999999", linewidth=0.5, zorder=3)
        ax.set_xlim(w, e)
        ax.set_ylim(s, n)
        ax.set_title(f"{y}: {int(sel.sum())} tiles" if y else "no tiles indexed", fontsize=10)
        ax.set_xlabel("longitude", fontsize=8)
        ax.set_ylabel("latitude", fontsize=8)
        ax.tick_params(labelsize=7)
        panels.append({"year": y, "ax": ax})
    title = "tessera-vz: indexed 0.1° tiles per year"
    fig.suptitle(title + (" (grey lines: UTM zone edges)" if e - w <= 120.0 else ""), fontsize=11)
    fig.tight_layout()
    fig.canvas.draw()
    height = fig.canvas.get_width_height()[1]
    described = []
    for p in panels:
        bb = p["ax"].get_window_extent()
        # Figure pixels have their origin at the bottom; PNG rows count from the top.
        described.append(
            {"year": p["year"], "extent": [w, s, e, n],
             "pixels": [bb.x0, height - bb.y1, bb.x1, height - bb.y0]}
        )  # fmt: skip
    doc = {"panels": described}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={PANELS_KEY: json.dumps(doc)})
    finally:
        plt.close(fig)
    return doc
