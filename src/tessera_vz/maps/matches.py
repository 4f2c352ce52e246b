"""The best pixels of a map as a GeoParquet table: ``similar --top K --matches FILE``.

One row per pixel, best first: its ``rank``, score, grid ``row``/``col``,
``x``/``y`` in the map's CRS, ``lon``/``lat`` and a WKB point in EPSG:4326
(GeoParquet 1.1 ``geo`` metadata, as points tables carry), and the map's
provenance in the schema metadata.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xarray as xr

from tessera_vz.core.geoparquet import geo_metadata
from tessera_vz.reader.grids import transformer
from tessera_vz.reader.samples import geometry_field, point_wkb, with_metadata


def top_matches(ds: xr.Dataset, name: str, k: int) -> pa.Table:
    """The ``k`` pixels of ``ds[name]`` (a 2-D map) with the highest values, best first.

    Ties keep grid order (row-major); NaN pixels are never matches.
    """
    flat = ds[name].values.ravel()
    idx = np.flatnonzero(np.isfinite(flat))
    if idx.size > k:
        # A stable sort of the negated scores: ties in grid order, whatever k.
        idx = idx[np.argsort(-flat[idx], kind="stable")[:k]]
    else:
        idx = idx[np.argsort(-flat[idx], kind="stable")]
    rows, cols = np.divmod(idx, ds.sizes["x"])
    x, y = ds["x"].values[cols], ds["y"].values[rows]
    crs = ds["spatial_ref"].attrs["crs_wkt"]
    lon, lat = (np.asarray(v, np.float64) for v in transformer(crs, "EPSG:4326").transform(x, y))
    ok = np.isfinite(lon) & np.isfinite(lat)
    table = pa.table({
        "rank": pa.array(np.arange(1, idx.size + 1, dtype=np.int32)),
        name: pa.array(flat[idx].astype(np.float32)),
        "row": pa.array(rows.astype(np.int32)), "col": pa.array(cols.astype(np.int32)),
        "x": pa.array(x), "y": pa.array(y), "lon": pa.array(lon), "lat": pa.array(lat),
    })  # fmt: skip
    table = table.append_column(geometry_field(), point_wkb(lon, lat, ok))
    bbox = None
    if ok.any():
        bbox = [float(lon[ok].min()), float(lat[ok].min()),
                float(lon[ok].max()), float(lat[ok].max())]  # fmt: skip
    provenance = {
        k: (" ".join(map(str, v)) if isinstance(v, list) else str(v))
        for k, v in ds.attrs.items() if k.startswith("tessera:")
    }  # fmt: skip
    return with_metadata(table, geo_metadata(["Point"], bbox), provenance)


def write_matches(table: pa.Table, path: str) -> None:
    """Write a matches table as GeoParquet, whole or not at all."""
    import pyarrow.parquet as pq

    from tessera_vz.core.files import atomic_path

    with atomic_path(path, kind="partial.parquet") as tmp:
        pq.write_table(table, tmp)
