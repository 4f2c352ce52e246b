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
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk as ic
import numpy as np
import pyarrow as pa
import xarray as xr
from numpy.typing import ArrayLike
from zarr.core.sync import sync

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import (
    ConfigurationError,
    SourceNotFoundError,
    TileNotFoundError,
    VersionNotFoundError,
)
from tessera_vz.core.geometry import cell_centre, project, utm_zone
from tessera_vz.core.layout import (
    BAND_COUNT,
    ZONE_LIST,
    branch_name,
    parse_tag,
    parse_zone_list,
    tile_name,
)
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.quantisation import dequantise, valid_scale
from tessera_vz.core.repos import (
    credentials,
    quiet_icechunk,
    read_config,
    repositories,
    storage_for,
    with_read_policy,
)
from tessera_vz.core.table import TileLookup, read_table, refused_rows
from tessera_vz.reader import table_cache as table_cache
from tessera_vz.reader.georef import grid_dataset
from tessera_vz.reader.grids import grid_for_bbox
from tessera_vz.reader.points import (
    Located,
    locate,
    point_status,
    read_isolated,
    read_located,
    valid_coordinates,
    years_list,
)
from tessera_vz.reader.ranges import DEFAULT_GAP, POINT_GAP, ZoneYear
from tessera_vz.reader.regions import read_grid
from tessera_vz.reader.resample import Sampler
from tessera_vz.reader.samples import (
    PointsInput,
    YearSample,
    batch_table,
    empty_table,
    geo_metadata,
    points_input,
    with_metadata,
)
from tessera_vz.reader.versions import Pins, Versions, pins, token
from tessera_vz.reader.windows import MAX_PIXELS, TileRects, tile_rects

log = logging.getLogger(__name__)

#: Points read at a time by :meth:`TesseraStore.sample` (values of a batch:
#: 100,000 x 128 float32 = 51 MB per year).
SAMPLE_BATCH = 100_000


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
        (:class:`~tessera_vz.core.options.ReadOptions`). The same options
        travel to the dask tasks of :meth:`open_zone`.
    versions
        Which snapshot of each zone-year to read: tags such as ``"2024-v1"``
        (see :mod:`~tessera_vz.reader.versions`); unpinned years read their
        branch. Everything the store returns reads the pinned snapshots.
    """

    def __init__(
        self,
        root: str,
        zones: dict[int, str],
        options: ReadOptions | None = None,
        versions: Versions = None,
    ) -> None:
        self.root = root
        self.options = options if options is not None else ReadOptions()
        self.versions: Pins = pins(versions)
        self._locations = zones
        self._repos: dict[int, Any] = {}
        self._sessions: dict[tuple[int, int], Any] = {}
        self._tables: dict[tuple[int, int], xr.Dataset] = {}
        self._lookups: dict[tuple[int, int], TileLookup] = {}
        self._broken: dict[tuple[int, int], dict[str, str]] = {}
        self._rects: dict[tuple[int, int], TileRects] = {}
        self._snapshots: dict[tuple[int, int], str] = {}
        #: The tag of each snapshot read (None: none points at it), found lazily.
        self._tags: dict[tuple[int, int], str | None] = {}
        # Checks the CA file too: a missing one is a clear error now, not at first read.
        self._files = SourceFiles(options=self.options)

    def __repr__(self) -> str:
        pinned = f", versions={' '.join(self.versions.tokens())!r}" if self.versions else ""
        return f"TesseraStore({self.root!r}, zones={self.zones()}{pinned})"

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
                    log.info("not authorising source %s of zone %d", prefix, zone)
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
        """Read-only session on a zone-year's snapshot: the pinned one, else its branch (cached)."""
        key = (zone, int(year))
        if key not in self._sessions:
            repo = self.repo(zone)
            snapshot = self._snapshot_to_read(repo, zone, key[1])
            try:
                self._sessions[key] = repo.readonly_session(snapshot_id=snapshot)
            except Exception as exc:  # icechunk raises its own error types
                if self.versions.snapshot(zone, key[1]) is None:
                    raise
                raise VersionNotFoundError(
                    f"snapshot {snapshot} (pinned for {year}) cannot be opened in UTM zone "
                    f"{zone} of {self.root}: {str(exc).strip().splitlines()[0]}"
                ) from None
            self._snapshots[key] = snapshot
        return self._sessions[key]

    def _snapshot_to_read(self, repo: Any, zone: int, year: int) -> str:
        """The snapshot id pinned for a zone-year, or its tag's, or its branch's head."""
        snapshot = self.versions.snapshot(zone, year)
        if snapshot is not None:
            return snapshot
        tag = self.versions.tag(zone, year)
        tags = repo.list_tags() if tag is not None else set()
        if tag is not None and tag in tags:
            self._tags[(zone, year)] = tag
            return str(repo.lookup_tag(tag))
        if branch_name(year) not in repo.list_branches():
            raise TileNotFoundError(
                f"year {year} is not indexed in UTM zone {zone}; indexed years: {self.years(zone)}"
            )
        if tag is not None:
            same = sorted((t for t in tags if (p := parse_tag(t)) and p[0] == year),
                          key=lambda t: parse_tag(t) or (0, 0))  # fmt: skip
            raise VersionNotFoundError(
                f"tag {tag} does not exist in UTM zone {zone} of {self.root}; its tags of "
                f"{year}: {', '.join(same) or 'none'}. Tags are numbered per zone: pin this zone "
                f"with utm{zone:02d}/<tag> (`tessera-vz info` lists them)"
            )
        return str(repo.lookup_branch(branch_name(year)))

    def version(self, zone: int, year: int) -> tuple[str | None, str]:
        """The tag (``None`` if no tag points at it) and snapshot id a zone-year is read at."""
        key = (zone, int(year))
        self.session(zone, year)
        if key not in self._tags:
            repo = self.repo(zone)
            mine = [(p[1], t) for t in repo.list_tags() if (p := parse_tag(t)) and p[0] == key[1]]
            self._tags[key] = next(
                (t for _, t in sorted(mine, reverse=True)
                 if repo.lookup_tag(t) == self._snapshots[key]),
                None,
            )  # fmt: skip
        return self._tags[key], self._snapshots[key]

    def provenance(self, keys: Iterable[tuple[int, int]]) -> dict[str, str]:
        """``tessera:versions`` and ``tessera:snapshots`` attributes of what was read.

        Space-separated tokens (``utm31/2024-v2``; ``utm31/2024@SNAPSHOT``),
        one per zone-year; either attribute passed back as ``versions=`` to
        :func:`open_store` reads the same snapshots again.
        """
        read = sorted({(int(z), int(y)) for z, y in keys})
        found = [(z, y, *self.version(z, y)) for z, y in read]
        return {
            "tessera:versions": " ".join(token(z, y, tag, snap) for z, y, tag, snap in found),
            "tessera:snapshots": " ".join(f"utm{z:02d}/{y}@{snap}" for z, y, _, snap in found),
        }

    def tiles(self, year: int, zone: int) -> xr.Dataset:
        """The year's tiles table of a zone (one row per tile), with the version read."""
        return self._table(year, zone).assign_attrs(self.provenance([(zone, year)]))

    def _table(self, year: int, zone: int) -> xr.Dataset:
        """The year's tiles table of a zone, as reads use it.

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
            self._lookups[key] = TileLookup(table)
            self._tables[key] = table
        return self._tables[key]

    def _lookup(self, year: int, zone: int) -> TileLookup:
        """The year's tiles table of a zone as NumPy columns (see :class:`TileLookup`)."""
        self._table(year, zone)
        return self._lookups[(zone, int(year))]

    def zone_year(self, zone: int, year: int) -> tuple[ZoneYear, TileRects]:
        """A zone-year's byte source and tile rectangles, as windows need them (cached)."""
        key = (zone, int(year))
        if key not in self._rects:
            self._rects[key] = tile_rects(self._table(year, zone))
        return self._source(zone, year), self._rects[key]

    def _source(self, zone: int, year: int) -> ZoneYear:
        """A zone-year's byte source alone: what point reads need (no tile rectangles)."""
        self._table(year, zone)  # loads and checks the table: the refused tiles
        return ZoneYear(
            zone, int(year), self._files, self.session(zone, year).store,
            self.options.direct_reads, self._broken[(zone, int(year))],
        )  # fmt: skip

    def _table_or_none(self, year: int, zone: int) -> TileLookup | None:
        if zone not in self._locations:
            return None
        try:
            return self._lookup(year, zone)
        except VersionNotFoundError:
            raise
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
        facts = self._lookup(year, zone).row(name)
        if facts is None:
            raise TileNotFoundError(
                f"no tile {name} (covering lon={lon}, lat={lat}) indexed for {year} in zone {zone}"
            )
        return zone, name, facts

    def open_tile(self, lon: float, lat: float, year: int) -> xr.Dataset:
        """The tile covering a point, lazily, through ``xr.open_zarr`` (version in its attrs)."""
        zone, name, _ = self._tile(lon, lat, year)
        ds = xr.open_zarr(
            self.session(zone, year).store, group=name, consolidated=False, zarr_format=3
        )
        return ds.assign_attrs(self.provenance([(zone, year)]))

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
        located = [self.locate_points([lon], [lat], y) for y in ys]
        for loc, y in zip(located, ys, strict=True):
            if not loc.ok[0]:
                self.locate(lon, lat, y)  # raises the precise reason
        values = self._read_located(located, ys, POINT_GAP)[:, 0]
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
        return self._read_located([self.locate_points(lons, lats, y) for y in ys], ys, gap)

    def _read_located(self, located: list[Located], ys: Sequence[int], gap: int) -> np.ndarray:
        """``(time, N, bands)`` dequantised values of located points, the years concurrently."""

        async def read_all() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            reads = []
            for loc, y in zip(located, ys, strict=True):
                zones = np.unique(loc.zone[loc.ok]).tolist()
                sources = {z: self._source(z, y) for z in zones}
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

    def sample(
        self,
        points: Any,
        years: int | Sequence[int],
        *,
        lon: str | None = None,
        lat: str | None = None,
        geometry: str | None = None,
        crs: Any = None,
        batch_size: int = SAMPLE_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> pa.Table:
        """Points as a training table: one row per input row and year, every input column kept.

        ``points`` is a ``pyarrow.Table`` or a pandas / geopandas DataFrame
        (see :func:`~tessera_vz.reader.samples.points_input` for where the
        coordinates come from: ``lon``/``lat`` columns, by default named
        ``lon``/``longitude`` and ``lat``/``latitude``, or a point
        ``geometry`` column in ``crs``). Each row gains ``point_id`` (its input
        row), ``year``, ``status`` (``ok``, ``no tile``, ``no data`` for an
        invalid scale, ``invalid coordinate``, ``empty`` for a missing
        coordinate, ``error`` when its tile's source failed), the ``tile``,
        ``row`` and ``col`` read, the dequantised bands ``b000``.. (null unless
        ``ok``) and a ``geometry`` (WKB point, EPSG:4326). Coordinates outside
        lon [-180, 180] / lat [-90, 90] are never read. The schema carries
        GeoParquet 1.1 ``geo`` metadata and the provenance
        (``tessera:versions``, ``tessera:snapshots``), so
        ``pyarrow.parquet.write_table(t, "x.parquet")`` writes GeoParquet.

        Points are read ``batch_size`` at a time (every year of a batch
        concurrently); ``progress(n)`` is called after each batch. For
        tables too big for one result, :meth:`sample_batches` yields the
        batches.
        """
        inp = self.points_input(points, lon=lon, lat=lat, geometry=geometry, crs=crs)
        provenance = self.sample_provenance(inp, years)
        parts = list(self.sample_batches(inp, years, batch_size=batch_size, progress=progress))
        table = pa.concat_tables(parts) if parts else self.empty_sample(inp, years)
        return with_metadata(table, geo_metadata(inp), provenance)

    def points_input(self, points: Any, **where: Any) -> PointsInput:
        """The coordinates and kept columns of ``points`` (:func:`.samples.points_input`)."""
        return points_input(points, **where)

    def sample_batches(
        self,
        inp: PointsInput,
        years: int | Sequence[int],
        *,
        batch_size: int = SAMPLE_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[pa.Table]:
        """The rows of :meth:`sample`, batch by batch (without the file metadata).

        ``inp`` comes from :meth:`points_input`; :meth:`sample_provenance`
        gives the metadata to write with the batches.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        ys, _ = years_list(years)
        bands = self._bands(ys)
        for start in range(0, inp.size, batch_size):
            stop = min(start + batch_size, inp.size)
            lon, lat = inp.lon[start:stop], inp.lat[start:stop]
            empty = inp.empty[start:stop]

            # Tables are loaded (sync) before the reads of every year run together.
            plans = [self._sample_plan(lon, lat, empty, y) for y in ys]

            async def read_years(plans: list[Any] = plans) -> list[YearSample]:
                return list(await asyncio.gather(*(self._sample_year(*p) for p in plans)))

            samples = sync(read_years())
            yield batch_table(inp, start, stop, samples, bands)
            if progress is not None:
                progress(stop - start)

    def empty_sample(self, inp: PointsInput, years: int | Sequence[int]) -> pa.Table:
        """A table of :meth:`sample`'s columns and no rows (for input without points)."""
        return empty_table(inp, self._bands(years_list(years)[0]))

    def sample_provenance(self, inp: PointsInput, years: int | Sequence[int]) -> dict[str, str]:
        """Provenance of a sampled table: the versions it reads, the index, the years.

        Known before any pixel is read: the zone-years are those of the
        points' cells in which the year is indexed (each one's tiles table
        says where the points are, or that no tile is), so a pinned version
        that does not exist fails here, and a writer can put the provenance
        in the file's schema up front.
        """
        ys, _ = years_list(years)
        valid = valid_coordinates(inp.lon, inp.lat) & ~inp.empty
        clon, _ = cell_centre(inp.lon[valid], inp.lat[valid])
        zones = np.unique(utm_zone(clon)).tolist() if valid.any() else []
        read = [(z, y) for y in ys for z in zones if self._table_or_none(y, z) is not None]
        return {
            **self.provenance(read),
            "tessera:store": self.root,
            "tessera:years": " ".join(map(str, ys)),
        }

    def _sample_plan(
        self,
        lon: np.ndarray,
        lat: np.ndarray,
        empty: np.ndarray,
        year: int,
    ) -> tuple[Located, dict[int, ZoneYear], np.ndarray, np.ndarray, int]:
        """Locate one year of a batch: where each point is, and the byte sources to read."""
        valid = valid_coordinates(lon, lat) & ~empty
        loc = locate(functools.partial(self._table_or_none, year), np.where(valid, lon, np.nan),
                     np.where(valid, lat, np.nan), year, self.root, strict=False)  # fmt: skip
        located = np.unique(loc.zone[loc.ok]).tolist()
        sources = {z: self._source(z, year) for z in located}
        return loc, sources, empty, valid_coordinates(lon, lat), int(year)

    async def _sample_year(
        self,
        loc: Located,
        sources: dict[int, ZoneYear],
        empty: np.ndarray,
        valid: np.ndarray,
        year: int,
    ) -> YearSample:
        """Read one located year of a batch, and say why each point has a value or not."""
        n = loc.ok.size
        values = np.full((n, 0), np.nan, np.float32)
        failed = np.zeros(n, bool)
        if loc.ok.any():
            emb, scale, found, broken = await read_isolated(sources, loc, year, POINT_GAP)
            for name, reason in broken.items():
                log.warning("year %d: tile %s could not be read: %s", year, name, reason)
            failed = loc.ok & ~found
            if emb.shape[1]:
                values = _dequantise(emb, scale)
                values[~found] = np.nan
        has = np.isfinite(values).any(axis=1) if values.shape[1] else np.zeros(n, bool)
        status = point_status(empty, valid, loc.ok, has, failed)
        return YearSample(year, status, loc.tile, loc.row, loc.col, loc.ok, values)

    def region(
        self,
        bbox: tuple[float, float, float, float],
        year: int | Sequence[int] | None = None,
        *,
        years: Sequence[int] | None = None,
        zone: int | None = None,
        crs: Any = None,
        resolution: float | Sequence[float] | None = None,
        dequantise: bool = True,
        gap: int = DEFAULT_GAP,
    ) -> xr.Dataset:
        """A lon/lat box on one grid, read from every zone it reaches.

        ``bbox`` is ``(west, south, east, north)`` in degrees. The grid is,
        by default, the 10 m lattice of the UTM zone holding the bbox centre
        (``zone`` picks another zone's lattice); ``crs`` (``"EPSG:4326"``,
        any EPSG code or CRS pyproj reads) gives that CRS's grid, and
        ``resolution`` its pixel size in the CRS's units, one number or
        ``(xres, yres)``, by default about 10 m (for a geographic CRS, 10 m
        along the parallel and the meridian at the bbox's centre latitude,
        rounded to two significant digits: see
        :func:`~tessera_vz.reader.grids.default_resolution`). The
        ``tessera:grid`` attribute says which grid and why.

        Pixels are taken by nearest neighbour from the zone mosaics (rule
        in :mod:`~tessera_vz.reader.resample`): an output pixel takes the
        pixel of the zone of the 0.1-degree cell holding its centre (the
        lattice pixel containing the centre, valued as in that zone's
        mosaic: the tile whose cell holds that pixel's centre, else any
        covering tile), else, where no tile of that zone covers it, the
        adjacent zone's pixel there. On the default grid the zone's own
        pixels are not resampled: a region inside one zone is its mosaic.
        Pixels no indexed tile covers, or whose scale is invalid, are NaN.

        Returns ``embeddings`` float32 ``(y, x, band)`` dequantised, or raw
        int8 ``embeddings`` plus ``scales`` with ``dequantise=False`` (both
        copied from the same source pixel); a ``time`` axis with a list of
        years. Each zone's window is read once, only the needed columns of
        each tile row. At most :data:`~tessera_vz.reader.windows.MAX_PIXELS`
        pixels are returned, and at most as many read per year (the windows
        of all zones), which bounds memory; larger areas go through
        :meth:`open_zone`.
        """
        ys, series = years_list(years if years is not None else _need_year(year))
        grid, why = grid_for_bbox(bbox, crs=crs, resolution=resolution, zone=zone)
        if grid.size > MAX_PIXELS:
            raise ValueError(
                f"bbox {bbox} covers {grid.height} x {grid.width} pixels, over the "
                f"{MAX_PIXELS}-pixel limit of an in-memory region; use open_zone(...).sel(...) "
                "to read larger areas lazily, or a coarser resolution"
            )
        sampler = Sampler(grid)
        wanted = sampler.zones()
        zones = [z for z in wanted if z in self._locations]
        if not zones:
            raise TileNotFoundError(
                f"no repository for UTM zone(s) {wanted} under {self.root}; zones: {self.zones()}"
            )
        plans = []
        for y in ys:
            sources = {}
            for z in zones:
                try:
                    sources[z] = self.zone_year(z, y)
                except VersionNotFoundError:
                    raise
                except TileNotFoundError:
                    continue  # this zone has no index of the year
            if not sources:
                raise TileNotFoundError(f"year {y} is not indexed in UTM zone(s) {zones}")
            picks = sampler.picks({z: rects for z, (_, rects) in sources.items()})
            read = sum(p.window.height * p.window.width for p in picks)
            if read > MAX_PIXELS:
                raise ValueError(
                    f"bbox {bbox} on this grid needs {read} source pixels of zones "
                    f"{sorted({p.zone for p in picks})}, over the {MAX_PIXELS}-pixel limit of an "
                    "in-memory region; read a smaller bbox or use open_zone(...).sel(...)"
                )
            plans.append((picks, sources))

        async def read_all() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            return list(await asyncio.gather(*(read_grid(grid, p, src, gap) for p, src in plans)))

        results = sync(read_all()) if any(p for p, _ in plans) else []
        if not any(filled.any() for _, _, filled in results):
            raise TileNotFoundError(
                f"no indexed tile covers bbox {bbox} in {ys} (UTM zones {zones} searched)"
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
        read_from = sorted({(z, y) for y, (_, src) in zip(ys, plans, strict=True) for z in src})
        attrs = {
            "tessera:bbox": list(map(float, bbox)),
            "tessera:grid": why,
            "tessera:resampling": "nearest",
            "tessera:zones": sorted({z for z, _ in read_from}),
            **self.provenance(read_from),
        }
        ds = grid_dataset(grid, data_vars, bands, attrs)
        if series:
            ds = ds.assign_coords(time=("time", np.asarray(ys, dtype=np.int32)))
        else:
            ds.attrs["tessera:year"] = ys[0]
        return ds

    def open_zone(
        self, zone: int, year: int, *, dequantise: bool = True, chunks: dict[str, int] | None = None
    ) -> xr.Dataset:
        """The whole mosaic of a zone-year as a lazy, dask-backed Dataset.

        The grid and rule of :meth:`region` on the zone's own 10 m lattice,
        covering every indexed tile *of this zone* (chunks are one tile's
        size). A selection reaching past the zone's edge holds only this
        zone's tiles (their overhang, then NaN): for an area across zones
        use ``region(bbox, year, crs=...)``, which resamples the other
        zones' pixels onto one grid. Selections read only the selected
        pixels, and the graph runs on a ``dask.distributed`` cluster, whose
        workers reopen the index with this store's read options at the
        snapshot this mosaic was built from (the pinned tag, or the
        branch's head when it was opened), so a later index run cannot mix
        into it.
        """
        from tessera_vz.reader.zone import zone_dataset

        if zone not in self._locations:
            raise TileNotFoundError(f"no repository for UTM zone {zone}; zones: {self.zones()}")
        _, rects = self.zone_year(int(zone), int(year))
        snapshot = self._snapshots[(int(zone), int(year))]
        fixed = self.versions.with_snapshot(int(zone), int(year), snapshot)
        opener = functools.partial(reopen, self.root, self.options, fixed)
        attrs = {"tessera:year": int(year), **self.provenance([(int(zone), int(year))])}
        return zone_dataset(
            opener, int(zone), int(year), rects, dequantise=dequantise, chunks=chunks, attrs=attrs
        )

    def _bands(self, years: Sequence[int]) -> int:
        for zone in self.zones():
            for y in years:
                table = self._table_or_none(y, zone)
                if table is not None and table.names.size:
                    return int(table.cols["bands"][0])
        return BAND_COUNT


_dequantise = dequantise


def _stack(arrays: list[np.ndarray], series: bool) -> np.ndarray:
    return np.stack(arrays) if series else arrays[0]


_OPEN: dict[tuple[str, ReadOptions, Pins], TesseraStore] = {}
_OPEN_LOCK = threading.Lock()


def reopen(root: str, options: ReadOptions, versions: Pins | None = None) -> TesseraStore:
    """The index at ``root`` opened with ``options`` at ``versions``, once per process.

    What a lazy zone mosaic pickles: dask workers call it to open the
    index the way the caller did (same retries, timeouts, trusted
    sources, the same snapshots), and reuse it for every task.
    """
    key = (root, options, versions if versions is not None else Pins())
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = open_store(root, options=options, versions=key[2])
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
        base = root.rstrip("/")
    else:
        path = Path(parts.path if parts.scheme == "file" else root).expanduser()
        if not path.is_dir():
            raise ConfigurationError(
                f"index {root!r} is not a directory; expected the --out of `tessera-vz index`"
            )
        base = str(path.resolve())
    zones = {z: f"{base}/{n}" for z, n in repositories(root, s3_options).items()}
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
    versions: Versions = None,
) -> TesseraStore:
    """Open the index written by ``tessera-vz index --out PATH``.

    ``versions`` pins what is read (default: each year's branch, the live
    index): ``"2024-v1"`` reads tag 2024-v1 of every zone,
    ``{2024: "2024-v1"}`` the same, ``"utm31/2024-v2"`` one zone's tag, and
    a result's ``tessera:versions`` attribute (or ``tessera:snapshots``)
    passed back reads exactly what that result was read from. A pinned tag
    a zone lacks is an error listing its tags (tags are numbered per zone).

    Give either ``options`` (a :class:`~tessera_vz.core.options.ReadOptions`)
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
    pinned = pins(versions)
    quiet_icechunk()
    zones = _discover(path, options)
    return TesseraStore(path, zones, options, pinned)


__all__ = ["TesseraStore", "dequantise", "open_store", "reopen", "valid_scale"]
