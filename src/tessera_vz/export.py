"""Write a region Dataset to a file: the one writer of ``region --out`` and the viewer.

``tessera-vz region --out FILE`` and the viewer's ``/api/region`` download both
call :func:`write_region`, so an improvement of the region outputs (formats,
metadata) reaches both at once; :func:`check_region_output` runs the same
format checks before anything is read.

GeoTIFFs are Cloud-Optimised GeoTIFFs written by GDAL's COG driver: tiled,
compressed, BigTIFF when needed, with overviews, a nodata value, one band per
embedding band named ``b000``..``b127``, the CRS and transform of the grid,
and the region's provenance (``tessera:*`` attributes) as GDAL metadata. The
COG driver only copies a finished dataset, so the pixels first go block by
block (rioxarray, dask-chunked, dequantised chunk by chunk) into a tiled
temporary GeoTIFF beside the output, which GDAL then copies into the COG
through a bounded block cache: memory holds the region's raw int8 pixels
plus a few blocks, never a float32 copy of the whole region.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from dask.callbacks import Callback

from tessera_vz.core.dataset import GEOTIFF_TAGS, geotiff_tags
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.files import atomic_path, hidden_beside, probe_writable
from tessera_vz.core.progress import Advance, ProgressStart, no_progress

log = logging.getLogger(__name__)

#: File suffixes :func:`write_region` understands, lower case.
REGION_SUFFIXES = ("zarr", "nc", "tif", "tiff")
GEOTIFF_SUFFIXES = ("tif", "tiff")
#: Pixels per side of a GeoTIFF tile, and of the chunks dequantised at a time
#: (256 x 256 x 128 float32 = 32 MiB).
BLOCK = 256
#: GDAL block cache while writing (MiB); measured: 16 to 256 MiB make no
#: difference to time or peak memory (tiles are read and written in order).
CACHE_MB = 64
#: zlib level and chunk side (pixels, all bands) of NetCDF output. Measured on
#: a 685 x 439 x 128 float32 region: level 4 compresses within 1 % of level 6
#: in half the time; 128-pixel chunks (8 MiB) wrote faster than 256 (32 MiB).
NC_LEVEL = 4
NC_BLOCK = 128
#: Nodata of raw int8 embeddings: symmetric int8 quantisation (values in
#: -127..127) never produces it; the scales say the same (invalid there).
RAW_NODATA = -128
#: Creation options of the COG driver. DEFLATE is read by every GDAL (QGIS,
#: ArcGIS, old builds); the predictor (floating point for float32) helps it.
#: No overviews: a subsampled embedding means little, a region (at most 16 M
#: pixels) displays without them, and building them for 128 pixel-interleaved
#: bands took 3x the time of the whole write (``gdaladdo`` adds them later).
COG_OPTIONS: dict[str, str] = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BLOCKSIZE": str(BLOCK),
    "BIGTIFF": "IF_SAFER",
    "OVERVIEWS": "NONE",
    "NUM_THREADS": "ALL_CPUS",
}


def region_format(path: str | Path) -> str:
    """The format of an output path by its suffix (``zarr``, ``nc`` or ``tif``), checked."""
    text = str(path)
    suffix = Path(text.rstrip("/")).suffix.lower().lstrip(".")
    if suffix not in REGION_SUFFIXES:
        found = f"'.{suffix}'" if suffix else "no suffix"
        raise ConfigurationError(
            f"--out must end in .tif (Cloud-Optimised GeoTIFF), .zarr or .nc; got {found} "
            f"in {text!r}"
        )
    return "tif" if suffix in GEOTIFF_SUFFIXES else suffix


def scales_path(path: str | Path) -> Path:
    """Where the scales of a raw GeoTIFF go: ``x.tif`` -> ``x_scales.tif``."""
    p = Path(path)
    return p.with_name(f"{p.stem}_scales{p.suffix}")


def check_region_output(
    path: str | Path, *, years: int = 1, raw: bool = False, overwrite: bool = False
) -> list[Path]:
    """Refuse, before anything is read, an output :func:`write_region` could not write.

    The suffix must be known, the format must hold the request (a GeoTIFF
    holds one year), the folder must exist and take a new file, and no file
    to be written may exist unless ``overwrite``. Returns the files that
    will be written (a raw GeoTIFF has its scales beside it).

    Raises
    ------
    ConfigurationError
        With a one-line message saying what was expected and what was found.
    """
    fmt = region_format(path)
    if fmt == "tif" and years > 1:
        raise ConfigurationError(
            f"a GeoTIFF holds one year, {years} were asked; pass one --year, or write "
            ".zarr or .nc (they keep a time axis)"
        )
    target = Path(str(path).rstrip("/"))
    check_writable_folder(target)
    files = [target, scales_path(target)] if fmt == "tif" and raw else [target]
    there = [f for f in files if f.exists()]
    if there and not overwrite:
        raise ConfigurationError(
            f"{str(there[0])!r} exists; pass --overwrite to replace it (or choose another --out)"
        )
    return files


def check_writable_folder(target: Path) -> None:
    """The folder of ``target`` exists and a file can be created in it (tried, then removed)."""
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigurationError(
            f"cannot write {str(target)!r}: the folder {str(folder)!r} {what}; create it first"
        )
    probe_writable(folder, str(target))
    if target.is_dir() and target.suffix.lower() not in (".zarr",):
        raise ConfigurationError(f"cannot write {str(target)!r}: a folder of that name exists")


def write_region(
    ds: xr.Dataset, path: str | Path, *, raw: bool = False, progress: ProgressStart = no_progress
) -> list[Path]:
    """Write ``ds`` (a ``TesseraStore.region`` result) to ``path``, by its suffix.

    ``ds`` may be dequantised (float32 ``embeddings``) or raw (int8
    ``embeddings`` plus ``scales``, from ``region(..., dequantise=False)``);
    a raw Dataset is dequantised chunk by chunk while it is written, unless
    ``raw=True`` asks for the int8 embeddings and their scales (so the file
    can be dequantised later: ``embeddings * scales``, NaN where a scale is
    not finite, > 0 and < 1).

    - ``.tif`` (``.tiff``): a Cloud-Optimised GeoTIFF, one year only. With
      ``raw=True``: int8 embeddings (nodata -128 where the pixel has no data)
      in ``path`` and float32 scales (nodata NaN; one band, or one per
      embedding band for per-band scales) in ``x_scales.tif`` beside it.
    - ``.zarr``: a Zarr v3 store; ``.nc``: NetCDF (list attributes joined with
      spaces). Both keep a time axis and carry the CRS as a CF grid mapping.

    ``progress`` (a ``start(label, total)``) is told of the blocks written.
    Returns the files written.

    Raises
    ------
    ConfigurationError
        For an unknown suffix, a multi-year GeoTIFF, ``raw=True`` on a
        dequantised Dataset, or rioxarray missing.
    """
    fmt = region_format(path)
    if raw and "scales" not in ds:
        raise ConfigurationError(
            "raw output needs a raw region: region(..., dequantise=False) holds the scales"
        )
    out = Path(str(path).rstrip("/"))
    blocks = int(np.prod([-(-ds.sizes[d] // BLOCK) for d in ("y", "x")]))
    steps = blocks * (ds.sizes.get("time", 1) if fmt != "tif" else 1) * (1 + (fmt == "tif" and raw))
    if fmt == "tif":
        with _Blocks(progress(f"writing {out.name}", steps)):
            written = _write_geotiff(ds, out, raw)
    else:
        data = ds if raw else dequantised(ds)
        # Like the COGs, written beside and renamed into place: never half a store or file.
        with (
            atomic_path(out, kind=f"partial.{fmt}") as tmp,
            _Blocks(progress(f"writing {out.name}", steps), per_task=True),
        ):
            if fmt == "zarr":
                _write_zarr(data, tmp)
            else:
                _write_netcdf(data, tmp)
        written = [out]
    log.debug("wrote region %s", ", ".join(map(str, written)))
    return written


def write_map(
    ds: xr.Dataset,
    name: str,
    path: str | Path,
    *,
    nodata: Any,
    band_names: tuple[str, ...] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """One variable of a map (``(y, x)`` or ``(y, x, band)``) as a COG, as regions are written.

    The map's ``tessera:*`` attributes (provenance, dataset) become GDAL
    metadata as a region's do, plus ``tags``; ``band_names`` name the bands
    (default: ``name``).
    """
    _need_rioxarray()
    da = ds[name]
    if "band" not in da.dims:
        da = da.expand_dims("band", axis=-1).assign_coords(band=[0])
    names = band_names or ((name,) if da.sizes["band"] == 1 else _names("b", da.sizes["band"]))
    out = Path(path)
    crs = ds["spatial_ref"].attrs["crs_wkt"]
    _cog(da.transpose("y", "x", "band"), out, crs, nodata, names, {**_tags(ds), **(tags or {})})
    return out


class _Blocks(Callback):  # type: ignore[misc]
    """Dask callback advancing a progress bar as blocks are written.

    A GeoTIFF is written window by window, one compute each (``per_task``
    off: one step per compute); Zarr and NetCDF compute once, and each
    storing task of a chunk is a step (``per_task``).
    """

    def __init__(self, advance: Advance, per_task: bool = False) -> None:
        super().__init__()
        self.advance, self.per_task = advance, per_task

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if self.per_task and isinstance(name, str) and name.startswith("store-"):
            self.advance(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if not self.per_task:
            self.advance(1)


def _write_zarr(data: xr.Dataset, tmp: Path) -> None:
    """Zarr v3 with consolidated metadata, so ``xr.open_zarr`` opens it without a warning.

    Zarr 3 warns that consolidated metadata is not yet in the v3 spec when
    writing it; every reader (zarr-python, xarray) uses it, so that warning
    is silenced here, once, where we chose it.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        data.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)


def _write_netcdf(data: xr.Dataset, tmp: Path) -> None:
    """NetCDF-4 through h5netcdf: zlib-compressed (shuffle on), chunked by :data:`NC_BLOCK` pixels.

    List attributes are joined with spaces (NetCDF attributes are flat).
    """
    try:
        import h5netcdf  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "writing NetCDF (.nc) needs h5netcdf: pip install 'tessera-vz[geo]'"
        ) from None
    clean = data.copy()
    for key, value in clean.attrs.items():
        if isinstance(value, (list, tuple)):
            clean.attrs[key] = " ".join(str(v) for v in value)
    encoding = {}
    for name, var in clean.data_vars.items():
        if var.ndim < 2:
            continue  # spatial_ref: a scalar
        chunks = tuple(min(NC_BLOCK, n) if d in ("y", "x") else 1 if d == "time" else n
                       for d, n in var.sizes.items())  # fmt: skip
        encoding[name] = {"zlib": True, "complevel": NC_LEVEL, "shuffle": True,
                          "chunksizes": chunks}  # fmt: skip
    clean.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)


def valid(scales: xr.DataArray) -> xr.DataArray:
    """Where a scale is usable (:func:`~tessera_vz.core.quantisation.valid_scale`, lazily)."""
    finite: xr.DataArray = np.isfinite(scales)  # type: ignore[assignment]
    return finite & (scales > 0) & (scales < 1.0)


def dequantised(ds: xr.Dataset, chunk: int = BLOCK) -> xr.Dataset:
    """``ds`` with float32 ``embeddings``: as is if already dequantised, else lazily.

    A raw Dataset's embeddings and scales become dask arrays over the same
    memory (no copy), chunked ``chunk`` x ``chunk`` pixels with all bands,
    and ``embeddings * scales`` (NaN where the scale is invalid) is computed
    chunk by chunk as a writer asks for it: the same float32 products as
    :func:`~tessera_vz.core.quantisation.dequantise`, value for value.
    """
    if "scales" not in ds:
        return ds
    lazy = ds.chunk({"y": chunk, "x": chunk})
    scales = lazy["scales"]
    values = lazy["embeddings"].astype(np.float32) * xr.where(
        valid(scales), scales, np.float32(np.nan)
    ).astype(np.float32)
    values.attrs = dict(ds["embeddings"].attrs)
    values.encoding = {}
    out = lazy.drop_vars("scales").assign(embeddings=values.transpose(*ds["embeddings"].dims))
    return out


def _need_rioxarray() -> None:
    try:
        import rioxarray  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "writing GeoTIFF needs rioxarray: pip install 'tessera-vz[geo]'"
        ) from None


def _write_geotiff(ds: xr.Dataset, out: Path, raw: bool) -> list[Path]:
    _need_rioxarray()
    if "time" in ds.dims:
        raise ConfigurationError(
            f"a GeoTIFF holds one year, this region has {ds.sizes['time']}; write .zarr or .nc"
        )
    crs = ds["spatial_ref"].attrs["crs_wkt"]
    tags = _tags(ds)
    if not raw:
        values = dequantised(ds)["embeddings"]
        _cog(values, out, crs, np.float32(np.nan), _names("b", values.sizes["band"]), tags)
        return [out]
    lazy = ds.chunk({"y": BLOCK, "x": BLOCK})
    scales = lazy["scales"]
    ok = valid(scales)
    # No data (no tile, or an invalid scale) is RAW_NODATA in the int8 file;
    # the scales file keeps every scale as read (NaN where no tile covers).
    emb = lazy["embeddings"].where(ok, RAW_NODATA).astype(np.int8)
    _cog(emb, out, crs, np.int8(RAW_NODATA), _names("b", emb.sizes["band"]), tags)
    sfile = scales_path(out)
    if "band" in scales.dims:
        names = _names("scale_b", scales.sizes["band"])
        s = scales
    else:
        names = ("scale",)
        s = scales.expand_dims("band", axis=-1).assign_coords(band=[0])
    of = {**tags, "tessera_scales_of": out.name}
    _cog(s.astype(np.float32), sfile, crs, np.float32(np.nan), names, of)
    return [out, sfile]


def _names(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:03d}" for i in range(count))


def _tags(ds: xr.Dataset) -> dict[str, str]:
    """The region's ``tessera:*`` attributes as GDAL metadata: provenance travels with the file.

    The dataset is also written under geotessera's tag names
    (``TESSERA_DATASET_VERSION``, ``TESSERA_DATASET_VARIANT``, …;
    :func:`~tessera_vz.core.dataset.geotiff_tags`), so upstream's tools read it.

    GDAL splits a metadata item at its first ``:`` or ``=``, so
    ``tessera:versions`` is written ``tessera_versions``.
    """
    tags = geotiff_tags(ds.attrs)  # the dataset under upstream's tag names
    for key, value in ds.attrs.items():
        if not key.startswith("tessera:") or key in GEOTIFF_TAGS:
            # proj:/spatial: attributes are the file's CRS and transform; GDAL's
            # metadata names ignore case, so the dataset is written once, upstream's way.
            continue
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        tags[key.replace(":", "_")] = str(value)
    return tags


def _cog(
    da: xr.DataArray,
    out: Path,
    crs: str,
    nodata: Any,
    names: tuple[str, ...],
    tags: dict[str, str],
) -> None:
    """One (y, x, band) DataArray as a COG: blocks into a tiled temporary GeoTIFF, then copy."""
    import rasterio
    import rasterio.shutil

    grid = da.transpose("band", "y", "x").chunk({"band": -1, "y": BLOCK, "x": BLOCK})
    grid = grid.drop_vars([c for c in grid.coords if c not in ("x", "y", "spatial_ref")])
    grid.attrs = {"long_name": names}
    grid.encoding = {}
    grid = grid.rio.write_crs(crs).rio.write_nodata(nodata, encoded=False)
    blocks = hidden_beside(out, "blocks.tif")  # a step only, deleted whatever happens
    try:
        # A reader never sees half a file: the COG is renamed into place once complete.
        with atomic_path(out, kind="cog.tif") as cog, rasterio.Env(GDAL_CACHEMAX=CACHE_MB):
            # windowed: one tile of the temporary file at a time, each the
            # compute of exactly one dask chunk (chunks match the tiles).
            grid.rio.to_raster(
                blocks, driver="GTiff", tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                interleave="pixel", BIGTIFF="IF_SAFER", windowed=True, tags=tags,
            )  # fmt: skip
            rasterio.shutil.copy(blocks, cog, driver="COG", **COG_OPTIONS)
    finally:
        blocks.unlink(missing_ok=True)
