"""Open an index and read from it: :func:`open_store` and :class:`TesseraStore`.

A :class:`TesseraStore` holds the zone repositories under one index root,
opened with only the virtual chunk containers the caller trusts. Tiles open
lazily through ``xr.open_zarr``; points, regions and zone mosaics read the
source files through the boundary (:mod:`tessera_vz.core.boundary`), which
checks every answer against the index: authorised sources, exact ranges,
the recorded checksums. This module is the facade: each zone-year's
session, snapshot, tiles table and byte source live in a handle
(:mod:`.zone_year`), found once; the work is done by the module of each
job (:mod:`.discovery`, :mod:`.versions`, :mod:`.pixels`, :mod:`.samples`,
:mod:`.regions`, :mod:`.zone`), none of which calls back into the store.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import icechunk as ic
import numpy as np
from numpy.typing import ArrayLike

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.coords import check_lonlat
from tessera_vz.core.errors import ConfigurationError, TileNotFoundError
from tessera_vz.core.geometry import cell_centre, utm_zone
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.permissions import with_remembered
from tessera_vz.core.progress import no_progress
from tessera_vz.core.quantisation import dequantise, valid_scale
from tessera_vz.core.repos import quiet_icechunk
from tessera_vz.reader import pixels, point_groups
from tessera_vz.reader.discovery import containers, discover_zones
from tessera_vz.reader.pixels import Located, TileLocation, locate_pixels
from tessera_vz.reader.points import check_year, years_asked
from tessera_vz.reader.range_fetch import ByteSource
from tessera_vz.reader.range_plan import DEFAULT_GAP, POINT_GAP
from tessera_vz.reader.sampling import Sampling
from tessera_vz.reader.versions import Pins, Versions, pins
from tessera_vz.reader.windows import TileRects
from tessera_vz.reader.zone_year import ZoneYears

if TYPE_CHECKING:
    # Imported where used: a cold point would take longer to import them than to read.
    import xarray as xr


class TesseraStore(Sampling):
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
        self, root: str, zones: dict[int, str], options: ReadOptions | None = None,
        versions: Versions = None,
    ) -> None:  # fmt: skip
        self.root = root
        self.options = with_remembered(root, options or ReadOptions())  # docs/security.md
        self.versions: Pins = pins(versions)
        self._locations = zones
        # Checks the CA file too: a missing one is a clear error now, not at first read.
        self._files = SourceFiles(options=self.options)
        #: Each zone's repository and each zone-year's handle, opened once.
        self._zone_years = ZoneYears(root, zones, self.options, self.versions, self._files)

    def __repr__(self) -> str:
        pinned = f", versions={' '.join(self.versions.tokens())!r}" if self.versions else ""
        return f"TesseraStore({self.root!r}, zones={self.zones()}{pinned})"

    def zones(self) -> list[int]:
        """UTM zones that have a repository here."""
        return self._zone_years.zones()

    def repo(self, zone: int) -> ic.Repository:
        """The Icechunk repository of a zone, opened with trusted containers only."""
        return self._zone_years.repo(zone)

    def containers(self, zone: int) -> list[str]:
        """Source URL prefixes a zone's repository wants to read from."""
        return containers(self._locations[zone], self.options)

    def source_files(self) -> SourceFiles:
        """Reader of the authorised source files (also the registry of what is authorised)."""
        return self._files

    @property
    def direct_reads(self) -> bool:
        """Whether pixels are read through tessera-vz's boundary (else through Icechunk)."""
        return self.options.direct_reads

    def years(self, zone: int | None = None) -> list[int]:
        """Years indexed in one zone, or in any zone."""
        return self._zone_years.years(zone)

    def session(self, zone: int, year: int) -> ic.Session:
        """Read-only session on a zone-year's snapshot: the pinned one, else its branch (cached)."""
        return self._zone_years.get(zone, year).session

    def version(self, zone: int, year: int) -> tuple[str | None, str]:
        """The tag (``None`` if no tag points at it) and snapshot id a zone-year is read at."""
        return self._zone_years.version((int(zone), int(year)))

    def provenance(self, keys: Iterable[tuple[int, int]]) -> dict[str, str]:
        """``tessera:versions`` and ``tessera:snapshots`` attributes of what was read.

        Space-separated tokens (``utm31/2024-v2``; ``utm31/2024@SNAPSHOT``),
        one per zone-year; either attribute passed back as ``versions=`` to
        :func:`open_store` reads the same snapshots again.
        """
        return self._zone_years.provenance(keys)

    def dataset(self) -> dict[str, str]:
        """Which dataset the index holds: ``tessera:dataset`` (``1.1/cambridge``), version,
        variant, path and source as its repositories record them (``unknown`` for an index
        written before datasets were recorded); :class:`DatasetMismatchError` if zones differ.
        """
        return self._zone_years.dataset(self.zones())

    def tiles(self, year: int, zone: int | None = None) -> xr.Dataset:
        """The year's tiles table (a row per tile) of ``zone``, or of every zone one after the
        other (``zone`` column), with the versions read; :class:`TileNotFoundError` if none."""
        if zone is not None:
            found = [(zone, self._zone_years.get(zone, year))]
        else:
            found = [(z, ix) for z in self.zones() if (ix := self._zone_years.find(z, year))]
        if not found:
            years = ", ".join(map(str, self.years())) or "none"
            raise TileNotFoundError(f"year {year} not indexed in {self.root}; indexed: {years}")
        import xarray as xr

        tables = [ix.table.dataset() for _, ix in found]
        table = tables[0] if len(tables) == 1 else xr.concat(tables, dim="tile")
        return table.assign_attrs(self.provenance([(z, year) for z, _ in found]))

    def zone_year(self, zone: int, year: int) -> tuple[ByteSource, TileRects]:
        """A zone-year's byte source and tile rectangles, as windows need them (cached)."""
        index = self._zone_years.get(zone, year)
        return index.source, index.rects

    def open_tile(self, lon: float, lat: float, year: int) -> xr.Dataset:
        """The tile a point is read from (:meth:`locate`), lazily, through ``xr.open_zarr``
        (:func:`~.tile_chunks.open_tile_group`). The version read is in its attributes."""
        loc = self.locate(lon, lat, year)
        from tessera_vz.reader.tile_chunks import open_tile_group

        ds = open_tile_group(self.session(loc.zone, year).store, loc.name, loc.facts)
        return ds.assign_attrs(self.provenance([(loc.zone, year)]))

    def locate(self, lon: float, lat: float, year: int) -> TileLocation:
        """The tile and pixel (row, col) a point is read from.

        The pixel ``region`` returns at the point on its zone's 10 m lattice,
        from the tile the region's ownership rule picks (see
        :mod:`~tessera_vz.reader.point_rule`): the tile of the point's cell
        where it covers the pixel, else a neighbour that does. Raises
        :class:`TileNotFoundError` with the reason when no tile does.
        """
        check_lonlat(lon, lat)
        y = check_year(year)
        try:
            loc = self._locate_one(lon, lat, y)
        except TileNotFoundError as exc:
            self._explain(lon, lat, y, exc)
            raise  # (explained above)
        if not loc.ok[0]:
            self._explain(lon, lat, y, None)
        return pixels.location(loc, lon, lat, y)

    def _locate_one(self, lon: float, lat: float, year: int) -> Located:
        """:meth:`locate_points` of one point, from the tiles near it only.

        On a published index that is a few kB of table blocks instead of the
        year's snapshot and table (:mod:`.table_near`).
        """
        near = self._zone_years.rects_near(year, lon, lat)
        return locate_pixels(near, [lon], [lat], year, self.root)

    def _explain(self, lon: float, lat: float, year: int, exc: TileNotFoundError | None) -> None:
        """Raise why no tile of ``year`` holds a point (:func:`pixels.explain_missing`)."""
        zone = int(utm_zone(cell_centre(lon, lat)[0]))

        def located(x: float, y: float) -> bool:
            try:
                return bool(self.locate_points([x], [y], year).ok[0])
            except TileNotFoundError:
                return False

        def zone_reason() -> None:
            self._zone_years.get(zone, year).table  # noqa: B018 - raises the zone's reason

        pixels.explain_missing(located, zone_reason, lon, lat, year, exc)

    def locate_points(self, lons: ArrayLike, lats: ArrayLike, year: int) -> Located:
        """The tile and pixel of many points (``ok`` is False where there is none)."""
        self._zone_years.prepare_points(pixels.as_points(lons, lats)[0], check_year(year))
        rects = self._zone_years.rects_or_none(check_year(year))
        return locate_pixels(rects, lons, lats, check_year(year), self.root)

    def point(
        self, lon: float, lat: float, year: int | Sequence[int] | None = None, *,
        years: Sequence[int] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """The dequantised embedding ``(bands,)`` of the pixel holding a point.

        The pixel is the one :meth:`locate` names (the one :meth:`region`
        returns at that place). NaN everywhere when the pixel's scale is
        invalid (no data). Reads only the pixel's bytes: ``bands`` embedding
        bytes and its scale, two ranged reads issued together (one round
        trip). With a list of years (``years=``), returns ``(time, bands)``,
        the years read concurrently.
        """
        ys, series = years_asked(year, years)
        located: list[Located] = []
        for y in ys:
            try:
                loc = self._locate_one(lon, lat, check_year(y))
            except TileNotFoundError:
                self.locate(lon, lat, y)  # raises the precise reason
                raise
            if not loc.ok[0]:
                self.locate(lon, lat, y)  # raises the precise reason
            located.append(loc)
        values = point_groups.point_values(self._zone_years, located, ys, POINT_GAP)[:, 0]
        return values if series else values[0]

    def points(
        self, lons: ArrayLike, lats: ArrayLike, year: int | Sequence[int] | None = None, *,
        years: Sequence[int] | None = None, gap: int = POINT_GAP,
    ) -> np.ndarray:  # fmt: skip
        """Dequantised embeddings ``(N, bands)`` of many points, in their order.

        A point with no indexed tile (or NaN coordinates) or an invalid scale
        is a row of NaN. Points are read a few zones at a time, grouped by
        file, nearby ranges merged (``gap`` bytes), and fetched concurrently.
        With a list of years the result is ``(time, N, bands)``.
        """
        ys, series = years_asked(year, years)
        lon, lat = pixels.as_points(lons, lats)
        out = point_groups.points_in_groups(self._zone_years, lon, lat, ys, gap)
        return out if series else out[0]

    def region(
        self, bbox: tuple[float, float, float, float] | None,
        year: int | Sequence[int] | None = None, *, years: Sequence[int] | None = None,
        zone: int | None = None, crs: Any = None, resolution: float | Sequence[float] | None = None,
        dequantise: bool = True, gap: int = DEFAULT_GAP, area: Any = None,
        area_crs: Any = "EPSG:4326", progress: Any = None, rows: tuple[int, int] | None = None,
    ) -> xr.Dataset:  # fmt: skip
        """A lon/lat box (or a polygon's box) on one grid, read from every zone it reaches.

        ``bbox`` is ``(west, south, east, north)`` in degrees, or ``None``
        with ``area``: a shapely (multi)polygon in ``area_crs``, whose
        lon/lat bounds are the bbox and outside which pixels are no-data.
        The grid is, by default, the 10 m lattice of the UTM zone holding
        the bbox centre (``zone`` picks another zone's lattice; ``327zz``
        for a bbox wholly south of the equator); ``crs`` (``"EPSG:4326"``,
        any EPSG code or CRS pyproj reads) gives that CRS's grid, and
        ``resolution`` its pixel size in the CRS's units, one number or
        ``(xres, yres)``, by default about 10 m
        (:func:`~tessera_vz.reader.grids.default_resolution`). The
        ``tessera:grid`` attribute says which grid and why.

        Pixels are taken by nearest neighbour from the zone mosaics (the
        rule of :mod:`~tessera_vz.reader.resample`: the pixel of the zone
        of the 0.1-degree cell holding the output pixel's centre, else the
        adjacent zone's); on the default grid a region inside one zone is
        its mosaic, not resampled. Pixels no indexed tile covers, or whose
        scale is invalid, are NaN.

        Returns ``embeddings`` float32 ``(y, x, band)`` dequantised, or raw
        int8 ``embeddings`` plus ``scales`` with ``dequantise=False`` (both
        copied from the same source pixel); a ``time`` axis, ascending,
        with a list of years. Each zone's window is read once, only the
        needed columns of each tile row. At most
        :data:`~tessera_vz.reader.windows.MAX_PIXELS` pixels are returned,
        and at most as many read per year, which bounds memory; larger
        areas go through :meth:`open_zone`. ``progress``: a
        ``start(label, total)`` (:mod:`tessera_vz.core.progress`).
        ``rows=(r0, r1)``: only those rows of the grid, as the whole region has them.
        """
        ys, series = years_asked(year, years)
        from tessera_vz.reader import regions

        return regions.read_region(
            self._zone_years, bbox, ys, series, zone=zone, crs=crs, resolution=resolution,
            dequantise=dequantise, gap=gap, area=None if area is None else (area, area_crs),
            progress=progress or no_progress, rows=rows,
        )  # fmt: skip

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
        index = self._zone_years.get(zone, year)
        z, y, rects = index.zone, index.year, index.rects
        fixed = self.versions.with_snapshot(z, y, index.snapshot)
        opener = functools.partial(reopen, self.root, self.options, fixed)
        attrs = {"tessera:year": y, **self.provenance([(z, y)])}
        return zone_dataset(opener, z, y, rects, dequantise=dequantise, chunks=chunks, attrs=attrs)


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


def open_store(
    path: str, *, options: ReadOptions | None = None, allow_local_sources: bool = False,
    allowed_sources: Iterable[str] | None = None, s3_options: dict[str, Any] | None = None,
    retries: int | None = None, timeout: float | None = None, direct_reads: bool = True,
    ca_file: str | None = None, versions: Versions = None, allow_private_sources: bool = False,
) -> TesseraStore:  # fmt: skip
    """Open the index written by ``tessera-vz index --out PATH``.

    ``versions`` pins what is read (default: each year's branch, the live
    index): ``"2024-v1"`` reads tag 2024-v1 of every zone,
    ``{2024: "2024-v1"}`` the same, ``"utm31/2024-v2"`` one zone's tag, and
    a result's ``tessera:versions`` attribute (or ``tessera:snapshots``)
    passed back reads exactly what that result was read from. A pinned tag
    a zone lacks is an error listing its tags (tags are numbered per zone).

    Give either ``options`` (a :class:`~tessera_vz.core.options.ReadOptions`)
    or its fields as keywords: ``retries`` and ``timeout`` (seconds per
    attempt) bound every source read, ``allow_local_sources``, ``allow_private_sources``
    and ``allowed_sources`` say which sources may be read, ``s3_options`` how to
    reach S3, ``ca_file`` an extra CA to trust for HTTPS, and
    ``direct_reads=False`` sends pixel reads through Icechunk instead of
    tessera-vz's checked reader.
    """
    if options is None:
        options = ReadOptions.of(
            retries=retries, timeout=timeout, allow_local_sources=allow_local_sources,
            allowed_sources=allowed_sources, s3_options=s3_options, direct_reads=direct_reads,
            ca_file=ca_file, allow_private_sources=allow_private_sources,
        )  # fmt: skip
    elif (allow_local_sources, allowed_sources, s3_options, retries, timeout, ca_file) != (
        False, None, None, None, None, None
    ) or not direct_reads or allow_private_sources:  # fmt: skip
        raise ConfigurationError(
            "give either options=ReadOptions(...) or its fields as keywords, not both"
        )
    pinned = pins(versions)
    quiet_icechunk()
    zones = discover_zones(path, options)
    return TesseraStore(path, zones, options, pinned)


__all__ = ["TesseraStore", "dequantise", "open_store", "reopen", "valid_scale"]
