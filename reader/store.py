"""Open an index and read from it: :func:`open_store` and :class:`TesseraStore`.

A :class:`TesseraStore` holds the zone repositories under one index root,
opened with only the virtual chunk containers the caller trusts. Tiles open
lazily through ``xr.open_zarr``; points are read as byte ranges of virtual
chunks through the Icechunk store, and reads spanning many rows as merged
ranges of the source files (:mod:`.ranges`), so checksums and container
authorisation apply to every byte either way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk as ic
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from . import cache as table_cache
from .errors import (
    ConfigurationError,
    SourceUnavailableError,
    TileNotFoundError,
    translate_error,
)
from .geometry import cell_centre, project, utm_zone
from .layout import (
    BAND_COUNT,
    EMBEDDINGS,
    SCALES,
    branch_name,
    chunk_key,
    repo_name,
    tile_name,
    zone_of_repo,
)
from .mosaic import (
    MAX_PIXELS,
    TileRects,
    read_window,
    tile_rects,
    window_dataset,
    window_for_bbox,
)
from .points import locate, read_located, years_list
from .ranges import DEFAULT_GAP, POINT_GAP
from .repos import (
    READ_RETRIES,
    READ_TIMEOUT,
    credentials,
    quiet_icechunk,
    read_config,
    storage_for,
    with_read_policy,
)
from .s3 import s3_settings
from .sources import SourceFiles
from .table import read_table

log = logging.getLogger(__name__)


def dequantise(emb: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``emb * scale`` as float32, NaN where the scale is invalid (public name)."""
    return dequantise_values(emb, scale)


def valid_scale(scale: np.ndarray) -> np.ndarray:
    """Where a scale is usable: finite, > 0 and < 1 (else the pixel has no data)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(scale) & (scale > 0) & (scale < 1.0)


def dequantise_values(emb: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``emb * scale`` as float32, NaN where the scale is invalid.

    ``scale`` is per pixel (broadcast over the band axis) or per band.
    """
    s = np.asarray(scale, dtype=np.float32)
    if s.ndim == emb.ndim - 1:
        s = s[..., None]
    ok = valid_scale(s)
    with np.errstate(invalid="ignore", over="ignore"):
        out = emb.astype(np.float32) * np.where(ok, s, np.float32(np.nan))
    return out.astype(np.float32)


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
    allow_local_sources
        Authorise ``file://`` containers (local tile trees). Off by default so
        that opening someone else's repo never reads local files.
    allowed_sources
        Explicit allow-list of source URL prefixes; when given, only these
        containers are authorised.
    retries, timeout
        Retries (with backoff) of a failed source read and the limit in
        seconds of each attempt, so a flaky or stalled mirror fails with
        :class:`SourceUnavailableError` in bounded time instead of hanging.
    direct_reads
        Let windows and clustered points read merged row ranges straight from
        the authorised source files (checksums sent as preconditions) when
        that needs fewer requests than one per virtual chunk; ``False``
        sends every read through the Icechunk store.
    """

    def __init__(
        self,
        root: str,
        zones: dict[int, str],
        *,
        allow_local_sources: bool = False,
        allowed_sources: Iterable[str] | None = None,
        s3_options: dict[str, Any] | None = None,
        retries: int = READ_RETRIES,
        timeout: float = READ_TIMEOUT,
        direct_reads: bool = True,
    ) -> None:
        self.root = root
        self._retries, self._timeout = retries, timeout
        with_read_policy(read_config(), retries=retries, timeout=timeout)  # validate early
        self._locations = zones
        self._allow_local = allow_local_sources
        self._allowed = list(allowed_sources) if allowed_sources is not None else None
        self._s3 = dict(s3_options or {})
        self._repos: dict[int, Any] = {}
        self._sessions: dict[tuple[int, int], Any] = {}
        self._tables: dict[tuple[int, int], xr.Dataset] = {}
        self._rects: dict[tuple[int, int], TileRects] = {}
        self._snapshots: dict[tuple[int, int], str] = {}
        self._direct = direct_reads
        self._files = SourceFiles(s3_options=self._s3, retries=retries, timeout=timeout)

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
            storage = storage_for(self._locations[zone], s3_options=self._s3)
            cfg = with_read_policy(
                read_config(ic.Repository.fetch_config(storage)),
                retries=self._retries,
                timeout=self._timeout,
            )
            wanted = list((cfg.virtual_chunk_containers or {}).keys())
            creds = credentials(
                wanted,
                allow_local_sources=self._allow_local,
                allowed=self._allowed,
                s3_options=self._s3,
            )
            for prefix in wanted:
                if prefix not in creds:
                    log.warning("not authorising source %s of zone %d", prefix, zone)
            self._files.allow(creds)
            self._repos[zone] = ic.Repository.open(
                storage, config=cfg, authorize_virtual_chunk_access=creds or None
            )
        return self._repos[zone]

    def containers(self, zone: int) -> list[str]:
        """Source URL prefixes a zone's repository wants to read from."""
        cfg = ic.Repository.fetch_config(storage_for(self._locations[zone], s3_options=self._s3))
        return sorted((cfg.virtual_chunk_containers or {}).keys()) if cfg else []

    def source_files(self) -> SourceFiles:
        """Reader of the authorised source files (also the registry of what is authorised)."""
        return self._files

    @property
    def direct_reads(self) -> bool:
        """Whether merged row ranges may be read straight from the source files."""
        return self._direct

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
        """The year's tiles table of a zone (one row per tile)."""
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
            self._tables[key] = table
        return self._tables[key]

    def _tile_rects(self, zone: int, year: int) -> TileRects:
        """The tiles table as rectangles on the zone grid, built once like the table."""
        key = (zone, int(year))
        if key not in self._rects:
            self._rects[key] = tile_rects(self, zone, year)
        return self._rects[key]

    # -- tiles -------------------------------------------------------------
    def _tile(self, lon: float, lat: float, year: int) -> tuple[int, str, dict[str, Any]]:
        if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90 or abs(lon) > 180:
            raise ValueError(f"invalid coordinates lon={lon}, lat={lat}")
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
        reads issued together. With a list of years (``years=``), returns
        ``(time, bands)``, the years read concurrently from their branches.
        """
        ys, series = years_list(years if years is not None else _need_year(year))
        locs = [self.locate(lon, lat, y) for y in ys]

        async def read_all() -> list[tuple[np.ndarray, np.ndarray]]:
            return list(await asyncio.gather(*(self._read_pixel(loc) for loc in locs)))

        values = [dequantise(e[None, :], s[None, ...])[0] for e, s in sync(read_all())]
        return np.stack(values) if series else values[0]

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
        is a row of NaN. Points are grouped by chunk, nearby ranges merged
        (``gap`` bytes), and fetched concurrently. With a list of years the
        result is ``(time, N, bands)``.
        """
        ys, series = years_list(years if years is not None else _need_year(year))
        located = [locate(self, lons, lats, y) for y in ys]

        async def read_all() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            return list(
                await asyncio.gather(
                    *(read_located(self, loc, y, gap) for loc, y in zip(located, ys, strict=True))
                )
            )

        out = []
        for emb, scale, ok in sync(read_all()):
            if emb.shape[1] == 0:
                out.append(np.full((ok.size, self._bands(ys)), np.nan, np.float32))
                continue
            values = dequantise(emb, scale)
            values[~ok] = np.nan
            out.append(values)
        return np.stack(out) if series else out[0]

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
        rects = [self._tile_rects(window.zone, y) for y in ys]

        async def read_all() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            return list(
                await asyncio.gather(
                    *(read_window(self, window.zone, y, window, r, gap)
                      for y, r in zip(ys, rects, strict=True))
                )
            )  # fmt: skip

        results = sync(read_all())
        if not any(filled.any() for _, _, filled in results):
            raise TileNotFoundError(
                f"no indexed tile of zone {window.zone} covers bbox {bbox} in {ys}"
            )
        bands = results[0][0].shape[-1]
        if dequantise:
            arrays = []
            for emb, scale, filled in results:
                values = dequantise_values(emb, scale)
                values[~filled] = np.nan
                arrays.append(values)
            emb_out, scale_out = (np.stack(arrays) if series else arrays[0]), None
        else:
            emb_out = np.stack([r[0] for r in results]) if series else results[0][0]
            scale_out = np.stack([r[1] for r in results]) if series else results[0][1]
        ds = window_dataset(window, emb_out, scale_out, bands,
                            {"tessera:bbox": list(map(float, bbox))})  # fmt: skip
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
        selected pixels, and the graph runs on a ``dask.distributed`` cluster.
        """
        from .zone import zone_dataset

        if zone not in self._locations:
            raise TileNotFoundError(f"no repository for UTM zone {zone}; zones: {self.zones()}")
        return zone_dataset(self, int(zone), int(year), dequantise=dequantise, chunks=chunks)

    def _bands(self, years: Sequence[int]) -> int:
        for zone in self.zones():
            for y in years:
                try:
                    table = self.tiles(y, zone)
                except TileNotFoundError:
                    continue
                if table.sizes["tile"]:
                    return int(table["bands"].values[0])
        return BAND_COUNT

    async def _read_pixel(self, loc: TileLocation) -> tuple[np.ndarray, np.ndarray]:
        f = loc.facts
        width, bands = int(f["width"]), int(f["bands"])
        k_e, k_s = int(f["emb_chunk_rows"]), int(f["scales_chunk_rows"])
        per_band = int(f["scales_ndim"]) == 3
        e_start = ((loc.row % k_e) * width + loc.col) * bands
        s_item = 4 * (bands if per_band else 1)
        s_start = ((loc.row % k_s) * width + loc.col) * s_item
        e_key = chunk_key(f"{loc.name}/{EMBEDDINGS}", (loc.row // k_e, 0, 0))
        s_idx = (loc.row // k_s, 0, 0) if per_band else (loc.row // k_s, 0)
        s_key = chunk_key(f"{loc.name}/{SCALES}", s_idx)
        store = self.session(loc.zone, loc.year).store
        proto = default_buffer_prototype()
        try:
            eb, sb = await asyncio.gather(
                store.get(e_key, proto, byte_range=RangeByteRequest(e_start, e_start + bands)),
                store.get(s_key, proto, byte_range=RangeByteRequest(s_start, s_start + s_item)),
            )
        except Exception as exc:
            raise translate_error(
                exc, f"reading {loc.name} ({loc.year}) from {f['source']}"
            ) from None
        if eb is None or sb is None:
            raise SourceUnavailableError(
                f"tile {loc.name} ({loc.year}) has no chunk at row {loc.row}"
            )
        emb = np.frombuffer(eb.to_bytes(), dtype=np.int8)
        scale = np.frombuffer(sb.to_bytes(), dtype=np.dtype(str(f["scales_descr"])))
        return emb, scale.astype(np.float32)


def _need_year(year: int | Sequence[int] | None) -> int | Sequence[int]:
    if year is None:
        raise TypeError("give year=… (an int or a list of years) or years=[…]")
    return year


def _discover(root: str, s3_options: dict[str, Any] | None = None) -> dict[int, str]:
    parts = urlsplit(root)
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
    allow_local_sources: bool = False,
    allowed_sources: Iterable[str] | None = None,
    s3_options: dict[str, Any] | None = None,
    retries: int = READ_RETRIES,
    timeout: float = READ_TIMEOUT,
    direct_reads: bool = True,
) -> TesseraStore:
    """Open the index written by ``tessera-vz index --out PATH``.

    ``retries`` and ``timeout`` (seconds per attempt) bound every source read;
    ``direct_reads`` lets merged row ranges bypass per-chunk fetches; see
    :class:`TesseraStore`.
    """
    quiet_icechunk()
    zones = _discover(path, s3_options)
    return TesseraStore(
        path,
        zones,
        allow_local_sources=allow_local_sources,
        allowed_sources=allowed_sources,
        s3_options=s3_options,
        retries=retries,
        timeout=timeout,
        direct_reads=direct_reads,
    )


__all__ = ["TesseraStore", "dequantise", "open_store", "repo_name", "valid_scale"]
