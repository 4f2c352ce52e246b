"""Mosaics on the 10 m lattice of one UTM zone, read byte-exactly from tiles.

A zone pixel takes its value from the tile whose 0.1-degree cell contains the
pixel centre; where that tile is absent (not indexed, or the centre lies
outside its rectangle), from any tile of the zone that covers it. Southern
tiles join the northern grid with northings minus 10,000,000 m, as upstream
readers do. For every tile row a window touches, only the needed columns are
read, and neighbouring ranges are coalesced into larger requests.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray
from pyproj import CRS

from .errors import TileNotFoundError
from .geometry import FALSE_NORTHING, PIXEL, project, unproject, utm_zone
from .layout import EMBEDDINGS, SCALES
from .ranges import DEFAULT_GAP, coalesce, fetch

if TYPE_CHECKING:
    from .store import TesseraStore

#: Largest window ``region`` assembles in memory (pixels); larger areas go
#: through :meth:`TesseraStore.open_zone`, which reads lazily per chunk.
MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class Window:
    """A north-up window of whole pixels on a zone's northern 10 m lattice."""

    zone: int
    left: float
    top: float
    height: int
    width: int

    @property
    def epsg(self) -> int:
        return 32600 + self.zone

    def centres(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Northings (descending) and eastings of the pixel centres."""
        y = self.top - PIXEL * np.arange(self.height, dtype=np.float64) - PIXEL / 2
        x = self.left + PIXEL * np.arange(self.width, dtype=np.float64) + PIXEL / 2
        return y.astype(np.float64), x.astype(np.float64)

    def sub(self, rows: slice, cols: slice) -> Window:
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        return Window(self.zone, self.left + PIXEL * c0, self.top - PIXEL * r0,
                      max(0, r1 - r0), max(0, c1 - c0))  # fmt: skip


def check_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Validate ``(west, south, east, north)`` in degrees."""
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(
            f"bbox must be four numbers (west, south, east, north); got {bbox!r}"
        ) from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise ValueError(f"bbox has non-finite values: {bbox!r}")
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ValueError(
            f"bbox {bbox!r} must satisfy -180 <= west < east <= 180 and -90 <= south < north <= 90"
        )
    return w, s, e, n


def window_for_bbox(bbox: tuple[float, float, float, float], zone: int | None = None) -> Window:
    """The smallest lattice window of ``zone`` covering a lon/lat box."""
    w, s, e, n = check_bbox(bbox)
    z = int(utm_zone((w + e) / 2)) if zone is None else int(zone)
    t = np.linspace(0.0, 1.0, 65)
    lons = np.concatenate([w + (e - w) * t, np.full(65, e), e - (e - w) * t, np.full(65, w)])
    lats = np.concatenate([np.full(65, s), s + (n - s) * t, np.full(65, n), n - (n - s) * t])
    x, y = project(lons, lats, 32600 + z)
    left = math.floor(float(x.min()) / PIXEL) * PIXEL
    top = math.ceil(float(y.max()) / PIXEL) * PIXEL
    right = math.ceil(float(x.max()) / PIXEL) * PIXEL
    bottom = math.floor(float(y.min()) / PIXEL) * PIXEL
    return Window(z, left, top, round((top - bottom) / PIXEL), round((right - left) / PIXEL))


def _cell_id(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.int64]:
    return (np.floor(lon * 10 + 1e-9).astype(np.int64) + 1800) * 4000 + (
        np.floor(lat * 10 + 1e-9).astype(np.int64) + 900
    )


@dataclass
class TileRects:
    """Tile rectangles of a zone-year on the northern lattice."""

    names: NDArray[np.str_]
    left: NDArray[np.float64]
    top: NDArray[np.float64]
    height: NDArray[np.int64]
    width: NDArray[np.int64]
    cell: NDArray[np.int64]
    facts: dict[str, NDArray[Any]]


def tile_rects(ts: TesseraStore, zone: int, year: int) -> TileRects:
    """Every tile of a zone-year as a rectangle on the zone's northern grid."""
    table = ts.tiles(year, zone)
    south = table["epsg"].values >= 32700
    top = table["top"].values - np.where(south, FALSE_NORTHING, 0.0)
    return TileRects(
        names=table["tile"].values.astype(str),
        left=table["left"].values.astype(np.float64),
        top=top.astype(np.float64),
        height=table["height"].values.astype(np.int64),
        width=table["width"].values.astype(np.int64),
        cell=_cell_id(table["lon"].values, table["lat"].values),
        facts={str(k): table[k].values for k in table.data_vars},
    )


def extent(rects: TileRects, zone: int) -> Window:
    """The window covering every tile of a zone-year."""
    if rects.names.size == 0:
        raise TileNotFoundError(f"zone {zone} has no tiles")
    left = float(rects.left.min())
    top = float(rects.top.max())
    right = float((rects.left + PIXEL * rects.width).max())
    bottom = float((rects.top - PIXEL * rects.height).min())
    return Window(zone, left, top, round((top - bottom) / PIXEL), round((right - left) / PIXEL))


def ownership(window: Window, rects: TileRects) -> NDArray[np.int64]:
    """Index of the tile each window pixel is read from, or -1 (no data)."""
    h, w = window.height, window.width
    owner = np.full((h, w), -1, dtype=np.int64)
    if h == 0 or w == 0 or rects.names.size == 0:
        return owner
    right = rects.left + PIXEL * rects.width
    bottom = rects.top - PIXEL * rects.height
    cand = np.flatnonzero(
        (rects.left < window.left + PIXEL * w) & (right > window.left)
        & (rects.top > window.top - PIXEL * h) & (bottom < window.top)
    )  # fmt: skip
    if cand.size == 0:
        return owner
    y, x = window.centres()
    xx, yy = np.meshgrid(x, y)
    lon, lat = unproject(xx, yy, window.epsg)
    cells = _cell_id(lon, lat)
    order = np.argsort(rects.cell[cand])
    sorted_cells = rects.cell[cand][order]
    pos = np.clip(np.searchsorted(sorted_cells, cells), 0, sorted_cells.size - 1)
    match = sorted_cells[pos] == cells
    owner[match] = cand[order][pos[match]]
    # The owner must actually cover the pixel; otherwise fall back below.
    o = np.where(owner >= 0, owner, 0)
    covered = (xx > rects.left[o]) & (xx < right[o]) & (yy < rects.top[o]) & (yy > bottom[o])
    owner[~covered] = -1
    for t in cand:
        free = owner < 0
        if not free.any():
            break
        inside = (
            free & (xx > rects.left[t]) & (xx < right[t]) & (yy < rects.top[t]) & (yy > bottom[t])
        )
        owner[inside] = t
    return owner


async def read_window(
    ts: TesseraStore,
    zone: int,
    year: int,
    window: Window,
    rects: TileRects | None = None,
    gap: int = DEFAULT_GAP,
) -> tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_]]:
    """Raw embeddings ``(h, w, B)``, scales ``(h, w)`` or ``(h, w, B)``, and the filled mask."""
    rects = rects if rects is not None else tile_rects(ts, zone, year)
    owner = ownership(window, rects)
    bands = np.unique(rects.facts["bands"]) if rects.names.size else np.array([128])
    if bands.size != 1:
        raise ValueError(f"tiles of zone {zone} hold different band counts {bands.tolist()}")
    b = int(bands[0])
    per_band = bool(rects.names.size) and int(rects.facts["scales_ndim"].max()) == 3
    emb = np.zeros((window.height, window.width, b), np.int8)
    scale = np.full((window.height, window.width, b) if per_band else (window.height, window.width),
                    np.nan, np.float32)  # fmt: skip
    used = np.unique(owner[owner >= 0])
    e_keys: list[str] = []
    s_keys: list[str] = []
    e_start: list[int] = []
    s_start: list[int] = []
    spans: list[tuple[int, int, int, int]] = []  # window row, window col0, ncols, tile
    s_item = 4 * (b if per_band else 1)
    for t in (int(u) for u in used):
        name = str(rects.names[t])
        f = {k: v[t] for k, v in rects.facts.items()}
        k_e, k_s, width = int(f["emb_chunk_rows"]), int(f["scales_chunk_rows"]), int(f["width"])
        s_tail = "/0/0" if int(f["scales_ndim"]) == 3 else "/0"
        row0 = int(np.rint((rects.top[t] - window.top) / PIXEL))  # tile row of window row 0
        col0 = int(np.rint((window.left - rects.left[t]) / PIXEL))  # tile col of window col 0
        mine = owner == t
        rows = np.flatnonzero(mine.any(axis=1))
        for wr in rows:
            cols = np.flatnonzero(mine[wr])
            c_lo, c_hi = int(cols[0]), int(cols[-1]) + 1
            tr, tc = int(wr) + row0, c_lo + col0
            n = c_hi - c_lo
            e_keys.append(f"{name}/{EMBEDDINGS}/c/{tr // k_e}/0/0")
            e_start.append(((tr % k_e) * width + tc) * b)
            s_keys.append(f"{name}/{SCALES}/c/{tr // k_s}{s_tail}")
            s_start.append(((tr % k_s) * width + tc) * s_item)
            spans.append((int(wr), c_lo, n, int(t)))
    if not spans:
        return emb, scale, owner >= 0
    e_s = np.asarray(e_start, np.int64)
    s_s = np.asarray(s_start, np.int64)
    lengths = np.asarray([sp[2] for sp in spans], np.int64)
    store = ts.session(zone, year).store
    what = f"reading a {window.height}x{window.width} window of zone {zone} ({year})"
    e_plan = coalesce(e_keys, e_s, e_s + lengths * b, gap)
    s_plan = coalesce(s_keys, s_s, s_s + lengths * s_item, gap)
    e_blobs, s_blobs = await asyncio.gather(fetch(store, e_plan, what), fetch(store, s_plan, what))
    descr = np.dtype(str(rects.facts["scales_descr"][used[0]]))
    for i, (w_row, c_lo, n, tile) in enumerate(spans):
        eb = e_blobs[int(e_plan.request[i])]
        eo = int(e_plan.offset[i])
        row_e = np.frombuffer(eb, np.int8, count=n * b, offset=eo).reshape(n, b)
        sb = s_blobs[int(s_plan.request[i])]
        so = int(s_plan.offset[i])
        row_s = np.frombuffer(sb, descr, count=n * s_item // 4, offset=so).astype(np.float32)
        mask = owner[w_row, c_lo : c_lo + n] == tile
        emb[w_row, c_lo : c_lo + n][mask] = row_e[mask]
        if per_band:
            scale[w_row, c_lo : c_lo + n][mask] = row_s.reshape(n, b)[mask]
        else:
            scale[w_row, c_lo : c_lo + n][mask] = row_s[mask]
    return emb, scale, owner >= 0


def spatial_ref(epsg: int, window: Window) -> xr.DataArray:
    """CF/GDAL grid-mapping variable, so rioxarray and GDAL know the CRS."""
    crs = CRS.from_epsg(epsg)
    transform = f"{window.left} {PIXEL} 0 {window.top} 0 {-PIXEL}"
    attrs = {**crs.to_cf(), "spatial_ref": crs.to_wkt(), "GeoTransform": transform}
    return xr.DataArray(np.int32(0), attrs=attrs)


def window_dataset(
    window: Window,
    emb: NDArray[Any],
    scale: NDArray[Any] | None,
    bands: int,
    extra_attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap window arrays as a georeferenced Dataset (``embeddings`` [+ ``scales``])."""
    y, x = window.centres()
    lead = ("time",) if emb.ndim == 4 else ()
    data_vars: dict[str, Any] = {
        EMBEDDINGS: ((*lead, "y", "x", "band"), emb, {"grid_mapping": "spatial_ref"})
    }
    if scale is not None:
        sdims = (*lead, "y", "x") if scale.ndim == emb.ndim - 1 else (*lead, "y", "x", "band")
        data_vars[SCALES] = (sdims, scale, {"grid_mapping": "spatial_ref"})
    ds = xr.Dataset(
        data_vars,
        coords={"y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
                "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
                "band": np.arange(bands, dtype=np.int16),
                "spatial_ref": spatial_ref(window.epsg, window)},
        attrs={"proj:code": f"EPSG:{window.epsg}",
               "spatial:transform": [PIXEL, 0.0, window.left, 0.0, -PIXEL, window.top],
               "spatial:shape": [window.height, window.width],
               "tessera:zone": window.zone, **(extra_attrs or {})},
    )  # fmt: skip
    return ds
