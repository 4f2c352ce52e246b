"""Write a region Dataset to a file: the one writer of ``region --out`` and the viewer.

``tessera-vz region --out FILE`` and the viewer's ``/api/region`` download both
call :func:`write_region`, so an improvement of the region outputs (formats,
metadata) reaches both at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import xarray as xr

from tessera_vz.reader.errors import ConfigurationError

log = logging.getLogger(__name__)

#: File suffixes :func:`write_region` understands, lower case.
REGION_SUFFIXES = ("zarr", "nc", "tif", "tiff")


def write_region(ds: xr.Dataset, path: str | Path) -> None:
    """Write ``ds`` (a ``TesseraStore.region`` result) to ``path``, by its suffix.

    ``.zarr`` is a Zarr v3 store, ``.nc`` NetCDF (list attributes joined with
    spaces, as NetCDF attributes cannot hold lists of mixed types), ``.tif`` a
    GeoTIFF with one band per embedding band (one year only; needs rioxarray).

    Raises
    ------
    ConfigurationError
        For an unknown suffix, a multi-year GeoTIFF, or rioxarray missing.
    """
    out_path = str(path)
    suffix = out_path.rsplit(".", 1)[-1].lower()
    if suffix == "zarr":
        ds.to_zarr(out_path, mode="w", zarr_format=3, consolidated=False)
    elif suffix == "nc":
        clean = ds.copy()
        for key in ("spatial:transform", "spatial:shape", "tessera:bbox"):
            if key in clean.attrs:
                clean.attrs[key] = " ".join(str(v) for v in clean.attrs[key])
        clean.to_netcdf(out_path)
    elif suffix in ("tif", "tiff"):
        try:
            import rioxarray  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "writing GeoTIFF needs rioxarray: pip install 'tessera-vz[geo]'"
            ) from None
        if "time" in ds.dims:
            raise ConfigurationError("a GeoTIFF holds one year; pass a single --year or use .zarr")
        # The grid mapping's WKT holds any CRS (EPSG:4326, a UTM zone, one without a code).
        da = ds["embeddings"].transpose("band", "y", "x")
        if da.rio.crs is None:
            da = da.rio.write_crs(ds["spatial_ref"].attrs["crs_wkt"])
        da.rio.to_raster(out_path)
    else:
        raise ConfigurationError(f"--out must end in .zarr, .nc or .tif; got {out_path!r}")
    log.debug("wrote region %s", out_path)
