"""Where a map is computed: a lon/lat bbox (given, or the bounds of a file's geometries).

A map covers the grid ``store.region`` returns for its bbox (the bbox
centre's UTM zone lattice by default, or a zone, a CRS and a resolution),
so a map and a region of the same bbox lie pixel on pixel.
``--region-file`` takes the bounds of every geometry in a GeoJSON or
GeoParquet file (in EPSG:4326, or the GeoParquet column's CRS).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera_vz.core.coords import check_bbox
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.reader.grids import Grid, grid_for_bbox

#: Suffixes ``--region-file`` reads.
REGION_FILES = (".geojson", ".json", ".parquet", ".geoparquet")


@dataclass(frozen=True)
class Area:
    """A lon/lat bbox and the grid options of ``store.region`` (zone, crs, resolution)."""

    bbox: tuple[float, float, float, float]
    zone: int | None = None
    crs: Any = None
    resolution: float | Sequence[float] | None = None

    def grid(self) -> tuple[Grid, str]:
        """The grid ``store.region(bbox, …)`` returns, and why (pure, no I/O)."""
        return grid_for_bbox(self.bbox, crs=self.crs, resolution=self.resolution, zone=self.zone)


def bbox_of_file(path: str | Path) -> tuple[float, float, float, float]:
    """The lon/lat bounds of every geometry of a GeoJSON or GeoParquet file.

    Raises
    ------
    ConfigurationError
        The file is missing, of another kind, unreadable or without geometry.
    """
    import shapely

    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"--region-file {str(path)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix not in REGION_FILES:
        raise ConfigurationError(
            f"--region-file must be GeoJSON (.geojson, .json) or GeoParquet (.parquet); "
            f"got {suffix or 'no suffix'} in {str(path)!r}"
        )
    try:
        if suffix in (".geojson", ".json"):
            geoms = shapely.from_geojson(p.read_text())
            crs = None
        else:
            geoms, crs = _geoparquet(p)
    except (OSError, ValueError, shapely.errors.GEOSException) as exc:
        raise ConfigurationError(f"cannot read --region-file {str(path)!r}: {exc}") from None
    bounds = shapely.total_bounds(geoms)
    if not all(map(float.__eq__, bounds, bounds)):  # NaN: no geometry
        raise ConfigurationError(f"--region-file {str(path)!r} holds no geometry")
    w, s, e, n = (float(v) for v in bounds)
    if crs is not None:
        from pyproj import CRS, Transformer

        tr = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)
        w, s, e, n = tr.transform_bounds(w, s, e, n)
    return check_bbox((w, s, e, n))


def _geoparquet(p: Path) -> tuple[Any, Any]:
    """The primary geometries of a GeoParquet file and their CRS (None: lon/lat)."""
    import pyarrow.parquet as pq
    import shapely

    table = pq.read_table(p)
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
    name = geo.get("primary_column", "geometry")
    if name not in table.column_names:
        raise ValueError(f"no geometry column {name!r} (columns: {', '.join(table.column_names)})")
    crs = geo.get("columns", {}).get(name, {}).get("crs")
    return shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False)), crs
