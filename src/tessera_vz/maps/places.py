"""Embeddings of places: a point gives its pixel, a polygon every pixel whose centre is inside.

Training tables (``classify``) and references (``similar``) are any table
``points`` accepts, with polygons as well as points
(:func:`~tessera_vz.reader.point_columns.points_input` with ``areas=True``).
Point rows are sampled by ``store.sample``, one pixel each. A polygon row is
read through the region reader (``store.region(area=…)``, on the grid it
builds: the 10 m lattice of the polygon's UTM zone, as the tiles are), so
its pixels hold exactly the values ``region`` gives for the same polygon.
A polygon gives at most ``max_pixels`` pixels (a field of 10 km² holds
100,000): beyond that, ``max_pixels`` of its inside pixels are drawn with a
fixed seed (the same pixels every run), and only the strips of rows holding
them are read; a warning says how many were left out.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from tessera_vz.core.errors import ConfigurationError, TileNotFoundError
from tessera_vz.maps.area import Area
from tessera_vz.maps.strips import strip_rows
from tessera_vz.reader.areas import area_mask
from tessera_vz.reader.point_columns import PointsInput
from tessera_vz.reader.samples import band_names

log = logging.getLogger(__name__)

#: Pixels a polygon contributes at most, by default (``--max-pixels-per-polygon``).
MAX_PIXELS_PER_POLYGON = 10_000
#: Largest grid (pixels of the polygon's box) tested for inside pixels: 25 M = 50 x 50 km.
MAX_POLYGON_GRID = 25_000_000


@dataclass
class PlaceEmbeddings:
    """Embeddings of places with data, the input row each came from, and what happened.

    ``counts``: point rows per ``sample`` status (``ok``, ``no tile``, ...),
    plus ``polygons`` (polygon rows), ``polygon pixels`` (pixels taken with
    data) and ``polygon pixels left out`` (inside pixels over the cap).
    """

    values: NDArray[np.float32]
    rows: NDArray[np.int64]
    counts: dict[str, int] = field(default_factory=dict)


def places_input(store: Any, places: Any, **where: Any) -> PointsInput:
    """``places`` as a :class:`PointsInput` whose polygon rows are kept (``areas=True``)."""
    if isinstance(places, PointsInput):
        return places
    return store.points_input(places, areas=True, **where)


def place_embeddings(
    store: Any,
    places: Any,
    year: int,
    *,
    rows: Sequence[int] | NDArray[np.int64] | None = None,
    max_pixels: int = MAX_PIXELS_PER_POLYGON,
    **where: Any,
) -> PlaceEmbeddings:
    """The embeddings in ``year`` of the points and polygons of ``places`` (only ``rows``).

    ``places`` is a :class:`PointsInput` or anything ``store.sample`` takes
    (``where``: its ``lon=``/``lat=``/``geometry=``/``crs=``). Samples come
    in input-row order, a polygon's pixels in grid order; places without
    data give none (counted in ``counts``).
    """
    if max_pixels < 1:
        raise ConfigurationError(f"max pixels per polygon must be at least 1, got {max_pixels}")
    inp = places_input(store, places, **where)
    take = np.arange(inp.size) if rows is None else np.asarray(rows, np.int64)
    shapes = inp.areas if inp.areas is not None else np.full(inp.size, None, object)
    is_area = np.array([shapes[i] is not None for i in take], bool)
    values: list[NDArray[np.float32]] = []
    source: list[NDArray[np.int64]] = []
    counts: Counter[str] = Counter()
    points = take[~is_area]
    if points.size:
        lon = pa.array(inp.lon[points], mask=inp.empty[points])
        lat = pa.array(inp.lat[points], mask=inp.empty[points])
        table = store.sample(pa.table({"lon": lon, "lat": lat}), year, lon="lon", lat="lat")
        status = np.asarray(table.column("status").to_pylist(), dtype=object).astype(str)
        counts.update(status.tolist())
        ok = np.flatnonzero(status == "ok")
        names = [n for n in band_names(256) if n in table.column_names]
        x = np.column_stack([table.column(n).to_numpy(zero_copy_only=False) for n in names])
        values.append(np.asarray(x[ok], np.float32))
        source.append(points[ok])
    for i in take[is_area]:
        v, left_out = polygon_pixels(store, shapes[i], inp.areas_crs, year, max_pixels,
                                     what=f"polygon in row {int(i)}")  # fmt: skip
        counts["polygons"] += 1
        counts["polygon pixels"] += v.shape[0]
        counts["polygon pixels left out"] += left_out
        values.append(v)
        source.append(np.full(v.shape[0], i, np.int64))
    keep = [k for k, v in enumerate(values) if v.shape[0]]
    x_all = np.concatenate([values[k] for k in keep]) if keep else np.zeros((0, 0), np.float32)
    rows_all = np.concatenate([source[k] for k in keep]) if keep else np.zeros(0, np.int64)
    order = np.argsort(rows_all, kind="stable")  # input order, a polygon's pixels together
    return PlaceEmbeddings(x_all[order], rows_all[order], {k: int(n) for k, n in counts.items()})


def polygon_pixels(
    store: Any, polygon: Any, crs: Any, year: int, max_pixels: int = MAX_PIXELS_PER_POLYGON,
    *, what: str = "the polygon", seed: int = 0,
) -> tuple[NDArray[np.float32], int]:  # fmt: skip
    """Embeddings ``(n, bands)`` of the polygon's pixels with data, and how many were left out.

    The pixels are those of ``store.region(None, year, area=polygon,
    area_crs=crs)`` whose centre lies inside the polygon and whose embedding
    is valid, in grid order; when more than ``max_pixels`` lie inside,
    ``max_pixels`` of them drawn with ``seed`` (the others are left out).
    """
    area = Area(polygon=polygon, polygon_crs=_crs(crs))
    grid, _ = area.grid()
    if grid.size > MAX_POLYGON_GRID:
        raise ConfigurationError(
            f"the {what} spans a grid of {grid.height:,} x {grid.width:,} pixels, over the "
            f"{MAX_POLYGON_GRID:,} a training area may cover; split it into smaller polygons"
        )
    inside = np.flatnonzero(area_mask(grid, polygon, area.polygon_crs))
    left_out = max(0, inside.size - max_pixels)
    if left_out:
        pick = np.random.default_rng(seed).choice(inside.size, max_pixels, replace=False)
        inside = inside[np.sort(pick)]
        log.warning(
            "the %s holds %d pixels; %d drawn at random (fixed seed), %d left out "
            "(raise --max-pixels-per-polygon to take more)",
            what, inside.size + left_out, max_pixels, left_out,
        )  # fmt: skip
    parts = []
    row_of = inside // grid.width
    for r0, r1 in strip_rows(grid):
        here = inside[(row_of >= r0) & (row_of < r1)]
        if not here.size:
            continue
        try:
            ds = store.region(area.box, year, rows=(r0, r1), **area.region_keywords())
        except TileNotFoundError:
            continue  # no tile under these rows: no data
        emb = ds["embeddings"].values
        parts.append(emb.reshape(-1, emb.shape[-1])[here - r0 * grid.width])
    if not parts:
        return np.zeros((0, 0), np.float32), left_out
    v = np.concatenate(parts)
    return np.asarray(v[~np.isnan(v).any(axis=1)], np.float32), left_out


def _crs(crs: Any) -> Any:
    """A points table's geometry CRS (``None``: lon/lat; PROJJSON) as the region reader takes."""
    if crs is None:
        return "EPSG:4326"
    if isinstance(crs, Mapping):
        from pyproj import CRS

        return CRS.from_json_dict(dict(crs))
    return crs
