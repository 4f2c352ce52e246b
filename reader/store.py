"""Open an index and read from it: :func:`open_store` and :class:`TesseraStore`.

A :class:`TesseraStore` holds the zone repositories under one index root,
opened with only the virtual chunk containers the caller trusts. Tiles open
lazily through ``xr.open_zarr``; points, regions and zone mosaics read the
source files through the boundary (:mod:`.sources`), which checks every
answer against the index: authorised sources, exact ranges, the recorded
checksums. This module is the facade: it opens things and hands each reader
module (:mod:`.points`, :mod:`.mosaic`, :mod:`.zone`) the tables and byte
sources it needs, so none of them calls back into it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk as ic
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from zarr.core.sync import sync

from . import cache as table_cache
from .errors import ConfigurationError, SourceNotFoundError, TileNotFoundError
from .geometry import cell_centre, project, utm_zone
from .georef import grid_dataset
from .layout import BAND_COUNT, ZONE_LIST, branch_name, parse_zone_list, tile_name, zone_of_repo
from .mosaic import read_window
from .options import ReadOptions
from .points import Located, locate, read_located, years_list
from .ranges import DEFAULT_GAP, POINT_GAP, ZoneYear
from .repos import credentials, quiet_icechunk, read_config, storage_for, with_read_policy
from .s3 import s3_settings
from .sources import SourceFiles
from .table import read_table, refused_rows
from .values import dequantise, valid_scale
from .windows import MAX_PIXELS, TileRects, tile_rects, window_for_bbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileLocation:
    """Where a tile's pixel is: the tile row facts plus pixel row/col."""

    zone: int
    year: int
    name: str
    row: int
    col: int
    facts: dict[str, Any]


class TesseraStore:
    """The zone repositories of one index root.

    Parameters
    ----------
    root
        Local directory or ``s3://`` prefix holding ``utm{zz}.icechunk`` repos.
    zones
        Zone number -> location of its repository (see :func:`open_store`).
    options
        How to read: retry policy, trusted sources, S3 settings, extra CA
        (:class:`~tessera_vz.reader.options.ReadOptions`). The same options
        travel to the dask tasks of :meth:`open_zone`.
    """

    def __init__(
        self, root: str, zones: dict[int, str], options: ReadOptions | None = None
    ) -> None:
        self.root = root
        self.options = options if options is not None else ReadOptions()
        self._locations = zones
        self.options.trusted_ca()  # a missing CA file is a clear error now, not at first read
        self._repos: dict[int, Any] = {}
        self._sessions: dict[tuple[int, int], Any] = {}
        self._tables: dict[tuple[int, int], xr.Dataset] = {}
        self._broken: dict[tuple[int, int], dict[str, str]] = {}
        self._rects: dict[tuple[int, int], TileRects] = {}
        self._snapshots: dict[tuple[int, int], str] = {}
        self._files = SourceFiles(options=self.options)

    def __repr__(self) -> str:
        return f"TesseraStore({self.root!r}, zones={self.zones()})"

    # -- discovery ---------------------------------------------------------
    def zones(self) -> list[int]:
        """UTM zones that have a repository here."""
        return sorted(self._locations)

    def repo(self, zone: int) -> Any:
        """The Icechunk repository of a zone, opened with trusted containers only."""
        if zone not in self._locations:
            raise TileNotFoundError(
                f"no repository for UTM zone {zone} under {self.root}; zones here: {self.zones()}"
            )
        if zone not in self._repos:
            storage = storage_for(self._locations[zone], s3_options=self.options.s3)
            cfg = with_read_policy(
                read_config(ic.Repository.fetch_config(storage)), self.options.policy
            )
            wanted = list((cfg.virtual_chunk_containers or {}).keys())
            creds = credentials(
                wanted,
                allow_local_sources=self.options.allow_local_sources,
                allowed=self.options.allowed_sources,
                s3_options=self.options.s3,
            )
            for prefix in wanted:
                if prefix not in creds:
                    log.warning("not authorising source %s of zone %d", prefix, zone)
            self._files.allow(creds)
            if self.options.allowed_sources is not None:
                # Redirect targets the user authorised (a CDN behind the mirror).
                self._files.allow(self.options.allowed_sources)
            self._repos[zone] = ic.Repository.open(
                storage, config=cfg, authorize_virtual_chunk_access=creds or None
            )
        return self._repos[zone]

    def containers(self, zone: int) -> list[str]:
        """Source URL prefixes a zone's repository wants to read from."""
        storage = storage_for(self._locations[zone], s3_options=self.options.s3)
        cfg = ic.Repository.fetch_config(storage)
        return sorted((cfg.virtual_chunk_containers or {}).keys()) if cfg else []

    def source_files(self) -> SourceFiles:
        """Reader of the authorised source files (also the registry of what is authorised)."""
        return self._files

    @property
    def direct_reads(self) -> bool:
        """Whether pixels are read through tessera-vz's boundary (else through Icechunk)."""
        return self.options.direct_reads

    def years(self, zone: int | None = None) -> list[int]:
        """Years indexed in one zone, or in any zone."""
        zones = [zone] if zone is not None else self.zones()
        found: set[int] = set()
        for z in zones:
            found |= {int(b) for b in self.repo(z).list_branches() if b.isdigit()}
        return sorted(found)

    def session(self, zone: int, year: int) -> Any:
        """Read-only session on a zone's year branch (cached)."""
        key = (zone, int(year))
        if key not in self._sessions:
            repo = self.repo(zone)
            if branch_name(year) not in repo.list_branches():
                raise TileNotFoundError(
                    f"year {year} is not indexed in UTM zone {zone}; indexed years: "
                    f"{self.years(zone)}"
                )
            snapshot = repo.lookup_branch(branch_name(year))
            self._sessions[key] = repo.readonly_session(snapshot_id=snapshot)
            self._snapshots[key] = snapshot
        return self._sessions[key]

    def tiles(self, year: int, zone: int) -> xr.Dataset:
        """The year's tiles table of a zone (one row per tile).

        Loaded once per snapshot (and cached on disk), and checked: a tile
        whose record holds a value no indexer writes is remembered with the
        reason, and every read of it fails with that reason, unsent.
        """
        key = (zone, int(year))
        if key not in self._tables:
            store = self.session(zone, year).store
            snapshot = self._snapshots[key]
            table = table_cache.load(self._locations[zone], snapshot)
            if table is None:
                table = read_table(store)
                if table is None:
                    raise TileNotFoundError(f"zone {zone} year {year} has no tiles table")
                table_cache.save(self._locations[zone], snapshot, table)
            broken = refused_rows(table)
            for name, reason in list(broken.items())[:5]:
                log.warning("zone %d year %s: tile %s: %s", zone, year, name, reason)
            self._broken[key] = broken
            self._tables[key] = table
        return self._tables[key]

    def zone_year(self, zone: int, year: int) -> tuple[ZoneYear, TileRects]:
        """A zone-year's byte source and tile rectangles, as reads need them (cached)."""
        key = (zone, int(year))
        if key not in self._rects:
            self._rects[key] = tile_rects(self.tiles(year, zone))
        source = ZoneYear(
            zone, int(year), self._files, self.session(zone, year).store,
            self.options.direct_reads, self._broken[key],
        )  # fmt: skip
        return source, self._rects[key]

    def _table_or_none(self, year: int, zone: int) -> xr.Dataset | None:
        if zone not in self._locations:
            return None
        try:
            return self.tiles(year, zone)
        except TileNotFoundError:
            return None

    # -- tiles -------------------------------------------------------------
    def _tile(self, lon: float, lat: float, year: int) -> tuple[int, str, dict[str, Any]]:
        if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90 or abs(lon) > 180:
            raise ValueError(
                f"invalid coordinates lon={lon}, lat={lat}: expected -180 <= lon <= 180 and "
                "-90 <= lat <= 90"
            )
        clon, clat = (float(v) for v in cell_centre(lon, lat))
        zone = int(utm_zone(clon))
        name = tile_name(clon, clat)
        table = self.tiles(year, zone)
        if name not in table.indexes["tile"]:
            raise TileNotFoundError(
                f"no tile {name} (covering lon={lon}, lat={lat}) indexed for {year} in zone {zone}"
            )
        row = table.sel(tile=name)
        return zone, name, {str(k): row[k].item() for k in table.data_vars}

    def open_tile(self, lon: float, lat: float, year: int) -> xr.Dataset:
        """The tile covering a point, lazily, through ``xr.open_zarr``."""
        zone, name, _ = self._tile(lon, lat, year)
        return xr.open_zarr(
            self.session(zone, year).store, group=name, consolidated=False, zarr_format=3
        )

    def locate(self, lon: float, lat: float, year: int) -> TileLocation:
        """The tile and pixel (row, col) holding a point."""
        zone, name, facts = self._tile(lon, lat, year)
        e, n = project(lon, lat, int(facts["epsg"]))
        col = int(np.floor((float(e) - facts["left"]) / 10.0))
        row = int(np.floor((facts["top"] - float(n)) / 10.0))
        if not (0 <= row < facts["height"] and 0 <= col < facts["width"]):
            raise TileNotFoundError(
                f"lon={lon}, lat={lat} falls outside the pixels of tile {name} "
                f"(row {row}, col {col} of {facts['height']}x{facts['width']})"
            )
        return TileLocation(zone, int(year), name, row, col, facts)

    def locate_points(self, lons: ArrayLike, lats: ArrayLike, year: int) -> Located:
        """The tile and pixel of many points (``ok`` is False where there is none)."""
        return locate(functools.partial(self._table_or_none, year), lons, lats, year, self.root)

    def point(
        self,
        lon: float,
        lat: float,
        year: int | Sequence[int] | None = None,
        *,
        years: Sequence[int] | None = None,
    ) -> np.ndarray:
        """The dequantised embedding ``(bands,)`` of the pixel holding a point.

        NaN everywhere when the pixel's scale is invalid (no data). Reads only
        the pixel's bytes: ``bands`` embedding bytes and its scale, two ranged
        reads issued together (one round trip). With a list of years
        (``years=``), returns ``(time, bands)``, the years read concurrently.
        """
        ys, series = years_list(years if years is not None else _need_year(year))
        for y in ys:
            self.locate(lon, lat, y)  # a clear error for a point outside the index
        values = self._read_points([lon], [lat], ys, POINT_GAP)[:, 0]
        return values if series else values[0]

    def points(
        self,
        lons: ArrayLike,
        lats: ArrayLike,
        year: int | Sequence[int] | None = None,
        *,
        years: Sequence[int] | None = None,
        gap: int = POINT_GAP,
    ) -> np.ndarray:
        """Dequantised embeddings ``(N, bands)`` of many points, in their order.

        A point with no indexed tile (or NaN coordinates) or an invalid scale
        is a row of NaN. Points are grouped by file, nearby ranges merged
        (``gap`` bytes), and fetched concurrently. With a list of years the
        result is ``(time, N, bands)``.
        """
        ys, series = years_list(years if years is not None else _need_year(year))
        out = self._read_points(lons, lats, ys, gap)
        return out if series else out[0]

    def _read_points(
        self, lons: ArrayLike, lats: ArrayLike, ys: Sequence[int], gap: int
    ) -> np.ndarray:
        """``(time, N, bands)`` dequantised values of the points in each year."""
        located = [self.locate_points(lons, lats, y) for y in ys]

        async def read_all() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            reads = []
            for loc, y in zip(located, ys, strict=True):
                zones = np.unique(loc.zone[loc.ok]).tolist()
                sources = {z: self.zone_year(z, y)[0] for z in zones}
                reads.append(read_located(sources, loc, y, gap))
            return list(await asyncio.gather(*reads))

        out = []
        for emb, scale, ok in sync(read_all()):
            if emb.shape[1] == 0:
                out.append(np.full((ok.size, self._bands(ys)), np.nan, np.float32))
                continue
            values = dequantise(emb, scale)
            values[~ok] = np.nan
            out.append(values)
        return np.stack(out)

    def region(
        self,
        bbox: tuple[float, float, float, float],
        year: int | Sequence[int] | None = None,
        *,
        years: Sequence[int] | None = None,
        zone: int | None = None,
        dequantise: bool = True,
        gap: int = DEFAULT_GAP,
    ) -> xr.Dataset:
        """A lon/lat box as a mosaic on the 10 m lattice of one UTM zone.

        ``bbox`` is ``(west, south, east, north)`` in degrees; ``zone``
        defaults to the zone of its centre. Each pixel comes from the tile
        whose 0.1-degree cell holds its centre (else any covering tile of the
        zone); pixels no tile covers are NaN. Returns ``embeddings`` float32
        ``(y, x, band)`` dequantised, or raw int8 ``embeddings`` plus
        ``scales`` with ``dequantise=False``; a ``time`` axis with a list of
        years. Only the needed columns of each tile row are read.
        """
        ys, series = years_list(years if years is not None else _need_year(year))
        window = window_for_bbox(bbox, zone)
        if window.height * window.width > MAX_PIXELS:
            raise ValueError(
                f"bbox {bbox} covers {window.height} x {window.width} pixels, over the "
                f"{MAX_PIXELS}-pixel limit of an in-memory region; use open_zone(...).sel(...) "
                "to read larger areas lazily"
            )
        if window.zone not in self._locations:
            raise TileNotFoundError(
                f"no repository for UTM zone {window.zone} under {self.root}; zones: {self.zones()}"
            )
        parts = [self.zone_year(window.zone, y) for y in ys]

        async def read_all() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            return list(
                await asyncio.gather(*(read_window(src, window, r, gap) for src, r in parts))
            )

        results = sync(read_all())
        if not any(filled.any() for _, _, filled in results):
            raise TileNotFoundError(
                f"no indexed tile of zone {window.zone} covers bbox {bbox} in {ys}"
            )
        bands = results[0][0].shape[-1]
        lead = ("time",) if series else ()
        data_vars: dict[str, Any] = {}
        if dequantise:
            arrays = []
            for emb, scale, filled in results:
                values = _dequantise(emb, scale)
                values[~filled] = np.nan
                arrays.append(values)
            data_vars["embeddings"] = ((*lead, "y", "x", "band"), _stack(arrays, series))
        else:
            emb_out = _stack([r[0] for r in results], series)
            scale_out = _stack([r[1] for r in results], series)
            data_vars["embeddings"] = ((*lead, "y", "x", "band"), emb_out)
            sdims = ("y", "x") if scale_out.ndim == emb_out.ndim - 1 else ("y", "x", "band")
            data_vars["scales"] = ((*lead, *sdims), scale_out)
        ds = grid_dataset(window, data_vars, bands, {"tessera:bbox": list(map(float, bbox))})
        if series:
            ds = ds.assign_coords(time=("time", np.asarray(ys, dtype=np.int32)))
        else:
            ds.attrs["tessera:year"] = ys[0]
        return ds

    def open_zone(
        self, zone: int, year: int, *, dequantise: bool = True, chunks: dict[str, int] | None = None
    ) -> xr.Dataset:
        """The whole mosaic of a zone-year as a lazy, dask-backed Dataset.

        Same grid and rule as :meth:`region`, covering every indexed tile of
        the zone; chunks are one tile's size. Selections read only the
        selected pixels, and the graph runs on a ``dask.distributed`` cluster,
        whose workers reopen the index with this store's read options.
        """
        from .zone import zone_dataset

        if zone not in self._locations:
            raise TileNotFoundError(f"no repository for UTM zone {zone}; zones: {self.zones()}")
        _, rects = self.zone_year(int(zone), int(year))
        opener = functools.partial(reopen, self.root, self.options)
        return zone_dataset(
            opener, int(zone), int(year), rects, dequantise=dequantise, chunks=chunks
        )

    def _bands(self, years: Sequence[int]) -> int:
        for zone in self.zones():
            for y in years:
                table = self._table_or_none(y, zone)
                if table is not None and table.sizes["tile"]:
                    return int(table["bands"].values[0])
        return BAND_COUNT


_dequantise = dequantise


def _stack(arrays: list[np.ndarray], series: bool) -> np.ndarray:
    return np.stack(arrays) if series else arrays[0]


_OPEN: dict[tuple[str, ReadOptions], TesseraStore] = {}
_OPEN_LOCK = threading.Lock()


def reopen(root: str, options: ReadOptions) -> TesseraStore:
    """The index at ``root`` opened with ``options``, once per process.

    What a lazy zone mosaic pickles: dask workers call it to open the
    index the way the caller did (same retries, timeouts, trusted
    sources), and reuse it for every task.
    """
    key = (root, options)
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = open_store(root, options=options)
        return _OPEN[key]


def _need_year(year: int | Sequence[int] | None) -> int | Sequence[int]:
    if year is None:
        raise TypeError("give year=… (an int or a list of years) or years=[…]")
    return year


def _published_zones(root: str, options: ReadOptions) -> dict[int, str]:
    """Zone -> repository URL of an index published on a web server, from its zone list."""
    base = root.rstrip("/") + "/"
    files = SourceFiles([base], options)
    url = base + ZONE_LIST
    try:
        data = sync(files.fetch(url, "reading the index's zone list", limit=1 << 20))
        repos = parse_zone_list(json.loads(data))
    except SourceNotFoundError:
        raise ConfigurationError(
            f"{url} not found: a published index needs its {ZONE_LIST} (any `tessera-vz index` "
            "run writes it at the --out root; copy the whole folder, zones.json included)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{url} is not a tessera-vz zone list: {exc}") from None
    if not repos:
        raise ConfigurationError(f"{url} lists no zone repositories")
    return {z: base + name for z, name in repos.items()}


def _discover(root: str, options: ReadOptions) -> dict[int, str]:
    parts = urlsplit(root)
    s3_options = options.s3
    if parts.scheme in ("http", "https"):
        return _published_zones(root, options)
    if parts.scheme == "s3":
        import obstore

        store = s3_settings(s3_options).obstore(root.rstrip("/") + "/")
        try:
            listed = obstore.list_with_delimiter(store, None)
        except Exception as exc:  # obstore raises its own hierarchy
            raise ConfigurationError(
                f"cannot list index {root!r}: {str(exc).strip().splitlines()[0]}. Check the "
                "bucket, the endpoint (--s3-endpoint, AWS_ENDPOINT_URL) and credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or --anonymous for a public bucket)"
            ) from None
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"]]
        base = root.rstrip("/")
    else:
        path = Path(parts.path if parts.scheme == "file" else root).expanduser()
        if not path.is_dir():
            raise ConfigurationError(
                f"index {root!r} is not a directory; expected the --out of `tessera-vz index`"
            )
        names = os.listdir(path)
        base = str(path.resolve())
    zones = {z: f"{base}/{n}" for n in names if (z := zone_of_repo(n)) is not None}
    if not zones:
        raise ConfigurationError(
            f"no zone repositories (utm??.icechunk) under {root!r}; run `tessera-vz index` first"
        )
    return zones


def open_store(
    path: str,
    *,
    options: ReadOptions | None = None,
    allow_local_sources: bool = False,
    allowed_sources: Iterable[str] | None = None,
    s3_options: dict[str, Any] | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    direct_reads: bool = True,
    ca_file: str | None = None,
) -> TesseraStore:
    """Open the index written by ``tessera-vz index --out PATH``.

    Give either ``options`` (a :class:`~tessera_vz.reader.options.ReadOptions`)
    or its fields as keywords: ``retries`` and ``timeout`` (seconds per
    attempt) bound every source read, ``allow_local_sources`` /
    ``allowed_sources`` say which sources may be read, ``s3_options`` how to
    reach S3, ``ca_file`` an extra CA to trust for HTTPS, and
    ``direct_reads=False`` sends pixel reads through Icechunk instead of
    tessera-vz's checked reader.
    """
    if options is None:
        options = ReadOptions.of(
            retries=retries, timeout=timeout, allow_local_sources=allow_local_sources,
            allowed_sources=allowed_sources, s3_options=s3_options, direct_reads=direct_reads,
            ca_file=ca_file,
        )  # fmt: skip
    elif (allow_local_sources, allowed_sources, s3_options, retries, timeout, ca_file) != (
        False, None, None, None, None, None
    ) or not direct_reads:  # fmt: skip
        raise ConfigurationError(
            "give either options=ReadOptions(...) or its fields as keywords, not both"
        )
    quiet_icechunk()
    zones = _discover(path, options)
    return TesseraStore(path, zones, options)


__all__ = ["TesseraStore", "dequantise", "open_store", "reopen", "valid_scale"]
