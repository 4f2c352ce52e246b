"""``tiles.parquet``: one GeoParquet row per indexed tile-year.

The row is what a GIS tool, DuckDB or geopandas needs to find tiles without
opening a repository: where the tile is (centre, UTM rectangle, footprint in
EPSG:4326), what it is (zone, EPSG, size, bands), where its bytes are (source
URLs, sizes, checksums) and which version of the index said so (repository,
branch, tag, snapshot id). The schema is fixed here, so files written by
different runs concatenate row group by row group (see
:mod:`.incremental`).

GeoParquet 1.1 metadata (:func:`~tessera_vz.core.geoparquet.geo_metadata`)
declares a ``bbox`` covering column so readers can prune row groups by
bounding box without decoding geometries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
import shapely.geometry
import xarray as xr

from tessera_vz.catalog.footprints import (
    footprint_rings,
    polygons_wkb,
    split_antimeridian,
    stac_bbox,
    utm_bounds,
)
from tessera_vz.core.dataset import DATASET_KEYS
from tessera_vz.core.geoparquet import BBOX_FIELDS, geo_metadata
from tessera_vz.core.urls import join

SCHEMA = pa.schema(
    [
        ("tile", pa.string()),
        ("year", pa.int16()),
        ("zone", pa.int8()),
        ("epsg", pa.int32()),
        ("lon", pa.float64()),
        ("lat", pa.float64()),
        ("utm_left", pa.float64()),
        ("utm_bottom", pa.float64()),
        ("utm_right", pa.float64()),
        ("utm_top", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("bands", pa.int16()),
        ("emb_url", pa.string()),
        ("scales_url", pa.string()),
        ("emb_size", pa.int64()),
        ("scales_size", pa.int64()),
        ("emb_checksum", pa.string()),
        ("scales_checksum", pa.string()),
        ("repo", pa.string()),
        ("branch", pa.string()),
        ("tag", pa.string()),
        ("snapshot", pa.string()),
        ("geometry", pa.binary()),
        (
            "bbox",
            pa.struct([(k, pa.float64()) for k in BBOX_FIELDS]),
        ),
    ]
)


@dataclass(frozen=True)
class UnitVersion:
    """One (zone, year) of an index as one snapshot: the key of incremental runs.

    ``tag`` is the immutable ``{year}-v{n}`` tag pointing at ``snapshot``
    (``None`` if no tag does); ``repo`` is where a client opens the zone's
    repository; ``containers`` the source URL prefixes it must authorise.
    """

    zone: int
    year: int
    snapshot: str
    tag: str | None
    repo: str
    containers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return unit_key(self.zone, self.year)

    @property
    def branch(self) -> str:
        return str(self.year)


def unit_key(zone: int, year: int) -> str:
    """``"31/2024"``: how a unit is named in the state file and reports."""
    return f"{int(zone)}/{int(year)}"


@dataclass
class UnitRows:
    """The rows of one unit: the Arrow table plus what the file metadata needs."""

    table: pa.Table
    bbox: list[float] | None
    geometry_types: list[str]
    #: The dataset attributes of the tiles table (every key, ``None`` if absent).
    dataset: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def geometries(self) -> np.ndarray:
        """The footprints as shapely geometries (built from the WKB column when asked for)."""
        return shapely.from_wkb(self.table["geometry"].to_numpy(zero_copy_only=False))

    def stac_bboxes(self) -> np.ndarray:
        """``(N, 4)`` STAC ``bbox`` of each footprint: its envelope (the ``bbox`` column), or
        ``west > east`` for those split at the antimeridian (a few tiles of zones 1 and 60)."""
        box = self.table["bbox"].combine_chunks()
        env = np.stack([box.field(k).to_numpy() for k in BBOX_FIELDS], axis=1)
        across = np.flatnonzero((env[:, 0] <= -180.0 + 1e-9) & (env[:, 2] >= 180.0 - 1e-9))
        for i in across.tolist():
            env[i] = stac_bbox(self.geometries[i])
        return env

    def geojson(self) -> list[dict[str, Any]]:
        """The footprints as GeoJSON geometry dicts (single-ring polygons from one array)."""
        geoms = self.geometries
        out: list[dict[str, Any]] = [{} for _ in range(len(geoms))]
        poly = np.flatnonzero(shapely.get_type_id(geoms) == 3)
        counts = shapely.get_num_coordinates(geoms[poly])
        same = counts == (counts.max() if counts.size else 0)
        simple = poly[(shapely.get_num_interior_rings(geoms[poly]) == 0) & same]
        if simple.size:
            rings = shapely.get_coordinates(geoms[simple]).reshape(simple.size, -1, 2).tolist()
            for i, ring in zip(simple.tolist(), rings, strict=True):
                out[i] = {"type": "Polygon", "coordinates": [ring]}
        for i in np.setdiff1d(np.arange(len(geoms)), simple).tolist():
            out[i] = shapely.geometry.mapping(geoms[i])
        return out

    def slice(self, start: int, stop: int) -> UnitRows:
        """Rows ``start`` to ``stop`` (the same unit)."""
        part = self.table.slice(start, stop - start)
        return UnitRows(part, self.bbox, self.geometry_types, self.dataset)


def unit_rows(tiles: xr.Dataset, unit: UnitVersion) -> UnitRows:
    """Rows of ``tiles.parquet`` for one unit's tiles table (sorted by tile name).

    Every column is built in bulk: the footprints' WKB is written by numpy
    from their rings (:func:`~.footprints.polygons_wkb`); only the few tiles
    crossing the antimeridian become shapely geometries, to be split.
    """
    names = np.asarray(tiles["tile"].values).astype(str)
    order = np.argsort(names, kind="stable")
    names = names[order]

    def col(name: str) -> np.ndarray:
        return np.asarray(tiles[name].values)[order]

    n = names.size
    bounds = utm_bounds(col("left"), col("top"), col("height"), col("width"))
    lon = col("lon").astype(np.float64)
    geometry, env, types = _footprint_column(*footprint_rings(col("epsg"), bounds, lon))
    sources = col("source").astype(str)
    data: dict[str, Any] = {
        "tile": names,
        "year": np.full(n, unit.year, np.int16),
        "zone": col("zone").astype(np.int8),
        "epsg": col("epsg").astype(np.int32),
        "lon": lon,
        "lat": col("lat").astype(np.float64),
        "utm_left": bounds[:, 0],
        "utm_bottom": bounds[:, 1],
        "utm_right": bounds[:, 2],
        "utm_top": bounds[:, 3],
        "height": col("height").astype(np.int32),
        "width": col("width").astype(np.int32),
        "bands": col("bands").astype(np.int16),
        "emb_url": join_many(sources, col("emb_path").astype(str)),
        "scales_url": join_many(sources, col("scales_path").astype(str)),
        "emb_size": col("emb_size").astype(np.int64),
        "scales_size": col("scales_size").astype(np.int64),
        "emb_checksum": col("emb_checksum").astype(str),
        "scales_checksum": col("scales_checksum").astype(str),
        "repo": _repeat(unit.repo, n),
        "branch": _repeat(unit.branch, n),
        "tag": _repeat(unit.tag, n),
        "snapshot": _repeat(unit.snapshot, n),
        "geometry": geometry,
        "bbox": pa.StructArray.from_arrays(
            [pa.array(env[:, i]) for i in range(4)], names=list(BBOX_FIELDS)
        ),
    }
    arrays = {k: v if k == "bbox" else pa.array(v, type=SCHEMA.field(k).type)
              for k, v in data.items()}  # fmt: skip
    return UnitRows(
        table=pa.table(arrays, schema=SCHEMA),
        bbox=_envelope(env) if n else None,
        geometry_types=sorted(_TYPE_NAMES[i] for i in types),
        dataset={k: tiles.attrs.get(k) for k in DATASET_KEYS},
    )


def _repeat(value: str | None, n: int) -> pa.Array:
    """``value`` ``n`` times as a string column (one value, taken ``n`` times)."""
    return pa.array([value], type=pa.string()).take(np.zeros(n, dtype=np.int64))


def _footprint_column(
    rings: np.ndarray, crossing: np.ndarray
) -> tuple[pa.Array, np.ndarray, set[int]]:
    """The footprints' WKB, their ``(N, 4)`` envelopes and geometry type ids.

    Counter-clockwise polygons straight from the rings (which are built
    counter-clockwise and keep that through the conformal unprojection);
    rings crossing the antimeridian are split (MultiPolygons) and oriented
    by shapely, a few tiles of zones 1 and 60.
    """
    wkb = polygons_wkb(rings)
    env = np.stack([rings[:, :, 0].min(axis=1), rings[:, :, 1].min(axis=1),
                    rings[:, :, 0].max(axis=1), rings[:, :, 1].max(axis=1)], axis=1)  # fmt: skip
    types = {3} if not crossing.all() else set()
    odd = np.flatnonzero(crossing)
    if odd.size == 0:
        return wkb, env, types
    split = np.array([split_antimeridian(shapely.polygons(rings[i])) for i in odd], dtype=object)
    split = shapely.orient_polygons(split, exterior_cw=False)
    env[odd] = shapely.bounds(split)
    types |= set(shapely.get_type_id(split).tolist())
    mask = np.zeros(len(wkb), dtype=bool)
    mask[odd] = True
    wkb = pc.replace_with_mask(
        wkb, pa.array(mask), pa.array(shapely.to_wkb(split, output_dimension=2), pa.binary())
    )
    return wkb, env, types


_TYPE_NAMES = {3: "Polygon", 6: "MultiPolygon"}

#: A path :func:`~tessera_vz.core.urls.join` leaves as it is: unreserved
#: characters only, no empty, ``.`` or ``..`` segment.
_PLAIN = r"^(?:[A-Za-z0-9_~-]|\.(?:[A-Za-z0-9_~-]|\.[A-Za-z0-9_~.-]))[A-Za-z0-9_.~-]*"
_PLAIN_PATH = f"{_PLAIN}(?:/{_PLAIN[1:]})*$"


def join_many(roots: np.ndarray, rels: np.ndarray) -> pa.Array:
    """``[join(r, p) for r, p in zip(roots, rels)]``, in bulk (a global year is 3.6 M URLs).

    Paths made of unreserved characters, as every indexer writes them, are
    joined with one Arrow call; any other path goes through
    :func:`~tessera_vz.core.urls.join` itself (which encodes it, or refuses it).
    """
    rel = pa.array(rels, type=pa.string())
    base = pc.utf8_rtrim(pa.array(roots, type=pa.string()), characters="/")
    out = pc.binary_join_element_wise(base, rel, "/")
    odd = np.flatnonzero(~pc.match_substring_regex(rel, _PLAIN_PATH).to_numpy(zero_copy_only=False))
    if odd.size == 0:
        return out
    urls = out.to_numpy(zero_copy_only=False).astype(object)
    for i in odd.tolist():
        urls[i] = join(str(roots[i]), str(rels[i]))
    return pa.array(urls, type=pa.string())


def _envelope(bounds: np.ndarray) -> list[float]:
    """``[xmin, ymin, xmax, ymax]`` of ``(N, 4)`` bounds."""
    return [float(bounds[:, 0].min()), float(bounds[:, 1].min()),
            float(bounds[:, 2].max()), float(bounds[:, 3].max())]  # fmt: skip


def merge_bbox(boxes: Sequence[Sequence[float] | None]) -> list[float] | None:
    """Union of ``[xmin, ymin, xmax, ymax]`` boxes (``None`` entries ignored)."""
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    arr = np.asarray(real, dtype=np.float64)
    return [float(arr[:, 0].min()), float(arr[:, 1].min()),
            float(arr[:, 2].max()), float(arr[:, 3].max())]  # fmt: skip


def schema_with_geo(geometry_types: Sequence[str], bbox: Sequence[float] | None) -> pa.Schema:
    """:data:`SCHEMA` carrying the ``geo`` metadata of the whole file.

    Footprints are counter-clockwise polygons, and each row's ``bbox``
    column is declared as their covering so readers can prune row groups.
    """
    geo = geo_metadata(geometry_types, bbox, counterclockwise=True, covering="bbox")
    return SCHEMA.with_metadata({"geo": json.dumps(geo)})
