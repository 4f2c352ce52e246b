"""One zone-year of an open index, and the registry that opens each one once.

Everything a read needs of a (zone, year) hangs off one
:class:`ZoneYearIndex`: the snapshot read (pinned, or the branch's head when
first asked), its read-only Icechunk session, the tag pointing at it, the
tiles table (checked, and cached on disk per snapshot), its NumPy lookup,
the refused rows, the tile rectangles and the byte source. Each is found on
first use and kept, so a store answers every later read of the zone-year
from memory, at the same snapshot. :class:`ZoneYears` opens each zone's
repository and each zone-year's handle once, and is what the reader modules
(:mod:`.regions`, :mod:`.samples`) are given instead of the store.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import icechunk as ic
import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.dataset import only_one
from tessera_vz.core.errors import TileNotFoundError, VersionNotFoundError
from tessera_vz.core.layout import BAND_COUNT, year_of_branch
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.table import TileColumns, TileLookup, refused_rows
from tessera_vz.core.text import printable
from tessera_vz.reader import table_cache
from tessera_vz.reader.discovery import open_repository
from tessera_vz.reader.identity import recorded_identity
from tessera_vz.reader.range_fetch import ByteSource
from tessera_vz.reader.resample import cell_zone
from tessera_vz.reader.table_fetch import read_table_at_once
from tessera_vz.reader.table_near import table_near
from tessera_vz.reader.versions import Pins, provenance, snapshot_to_read, tag_of
from tessera_vz.reader.windows import TileRects, tile_rects

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ZoneYearIndex:
    """The index of one zone-year, as reads use it, each part found once.

    ``location`` is the zone repository's (the key of the table cache),
    ``root`` the index root (for messages), ``pins`` the versions asked for,
    ``files`` the boundary that reads source bytes, and ``direct`` whether
    it does (else Icechunk reads them).
    """

    zone: int
    year: int
    repo: ic.Repository
    location: str
    root: str
    pins: Pins
    files: SourceFiles
    direct: bool = True
    #: The snapshot and tag already resolved (by an earlier handle of this zone-year).
    resolved: tuple[str, str | None] | None = None
    _refused: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    #: Whether rows came from table blocks (:meth:`rects_near`) rather than the whole table.
    _partial: bool = field(default=False, init=False, repr=False)

    @cached_property
    def _resolved(self) -> tuple[str, str | None]:
        if self.resolved is not None:
            return self.resolved
        return snapshot_to_read(self.repo, self.pins, self.zone, self.year, self.root)

    @property
    def snapshot(self) -> str:
        """The snapshot id read: the pinned one, its tag's, or the branch's head."""
        return self._resolved[0]

    @cached_property
    def session(self) -> ic.Session:
        """A read-only session on :attr:`snapshot`."""
        snapshot = self.snapshot
        try:
            return self.repo.readonly_session(snapshot_id=snapshot)
        except ic.IcechunkError as exc:
            if self.pins.snapshot(self.zone, self.year) is None:
                raise
            raise VersionNotFoundError(
                f"snapshot {snapshot} (pinned for {self.year}) cannot be opened in UTM zone "
                f"{self.zone} of {self.root}: {str(exc).strip().splitlines()[0]}"
            ) from None

    @cached_property
    def tag(self) -> str | None:
        """The tag :attr:`snapshot` was pinned by, else the newest pointing at it (or ``None``)."""
        return self._resolved[1] or tag_of(self.repo, self.year, self.snapshot)

    def version(self) -> tuple[str | None, str]:
        """The tag (``None`` if no tag points at it) and the snapshot id read."""
        if self.pins.snapshot(self.zone, self.year) is not None:
            self.session  # noqa: B018 - a pinned snapshot that cannot be opened is no version
        return self.tag, self.snapshot

    @cached_property
    def table(self) -> TileColumns:
        """The tiles table, loaded once per snapshot (and cached on disk), and checked.

        A tile whose record holds a value no indexer writes is remembered
        with the reason (:attr:`refused`), and every read of it fails with
        that reason, unsent.
        """
        table = table_cache.load(self.location, self.snapshot)
        if table is None:
            # Only a miss opens the session (fetching the snapshot): a process that finds
            # the table cached reads points without loading any Icechunk metadata.
            table = read_table_at_once(self.session.store)
            if table is None:
                raise TileNotFoundError(f"zone {self.zone} year {self.year} has no tiles table")
            table_cache.save(self.location, self.snapshot, table)
        self._refused.update(refused_rows(table))
        for name, reason in list(self._refused.items())[:5]:
            log.warning(
                "zone %d year %s: tile %s: %s", self.zone, self.year, printable(name), reason
            )
        return table

    @property
    def refused(self) -> dict[str, str]:
        """Tile name -> why its record in the index is not read."""
        self.table  # noqa: B018 - loading the table checks it
        return self._refused

    def rects_near(self, lon: float, lat: float) -> TileRects:
        """Rectangles of the tiles whose pixels may hold ``(lon, lat)`` (a cold point's).

        The whole table's when it is loaded; else, on a published index,
        those of the table blocks around the point (:mod:`.table_near`: a
        few kB, never the snapshot); else the table is loaded.
        """
        if "table" not in vars(self):
            part = table_near(self.location, self.zone, self.year, self.snapshot, lon, lat)
            if part is not None:
                self._refused.update(refused_rows(part))
                self._partial = True
                return tile_rects(part)
        return self.rects

    @cached_property
    def lookup(self) -> TileLookup:
        """The tiles table as NumPy columns (see :class:`TileLookup`)."""
        return TileLookup(self.table)

    @cached_property
    def rects(self) -> TileRects:
        """The tiles as rectangles on the zone's lattice, as windows need them."""
        return tile_rects(self.table)

    @cached_property
    def source(self) -> ByteSource:
        """Where the tiles' bytes come from, with the refused tiles named."""
        # Rows read from table blocks were checked as they came (and so is a table loaded later).
        refused = self._refused if self._partial else self.refused
        # Direct reads never touch the Icechunk store: it is opened only if asked for.
        chunks = self.session.store if not self.direct else cast(Any, _SessionStore(self))
        return ByteSource(self.zone, self.year, self.files, chunks, self.direct, refused)


class _SessionStore:
    """A zone-year's session store, opened on first use (the snapshot is fetched then)."""

    def __init__(self, index: ZoneYearIndex) -> None:
        self._index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index.session.store, name)


#: Zones opened at once by :meth:`ZoneYears.prepare` (each mostly waits on round trips).
PREPARE_THREADS = 8
#: Zone-years a :class:`ZoneYears` keeps loaded (tables, sessions): a 30,000-tile
#: zone-year's table alone is ~35 MB in memory.
MAX_LOADED = 16


def concurrently[T, R](work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[work(i) for i in items]``, at most :data:`PREPARE_THREADS` at once (order kept).

    For per-zone metadata: each zone's round trips depend on one another,
    different zones' do not (Icechunk's calls release the GIL while they wait).
    """
    if len(items) < 2:
        return [work(i) for i in items]
    with ThreadPoolExecutor(min(PREPARE_THREADS, len(items)), "tessera-vz-zone") as pool:
        return list(pool.map(work, items))


class ZoneYears:
    """The zone repositories of one index root and their zone-years, each opened once.

    State is real (the open repositories and the ``{(zone, year): handle}``
    cache), hence a class. At most :data:`MAX_LOADED` zone-years are kept
    (least recently used go, with their repository when no other year of
    the zone is kept): a global read touches every zone, and a zone's
    table, session and snapshot are megabytes. A zone-year asked for again
    is read at the snapshot it was first read at (its table from the disk
    cache), so one store never mixes two states of a zone-year.
    """

    def __init__(
        self,
        root: str,
        locations: dict[int, str],
        options: ReadOptions,
        pins: Pins,
        files: SourceFiles,
    ) -> None:
        self.root = root
        self.locations = locations
        self.options = options
        self.pins = pins
        self.files = files
        self._repos: dict[int, ic.Repository] = {}
        self._indexes: OrderedDict[tuple[int, int], ZoneYearIndex] = OrderedDict()
        #: The snapshot and tag each zone-year was first read at (kept after eviction).
        self._resolved: dict[tuple[int, int], tuple[str, str | None]] = {}
        #: Each zone-year's (tag, snapshot) once named (:meth:`version`).
        self._versions: dict[tuple[int, int], tuple[str | None, str]] = {}
        self._identity: dict[int, dict[str, str]] = {}
        #: Guards the registries: :meth:`prepare` opens zones from several threads.
        self._lock = threading.RLock()
        #: One lock per zone, so a zone is opened once however many threads ask.
        self._zone_locks: dict[int, threading.Lock] = {}

    def zones(self) -> list[int]:
        """UTM zones that have a repository here."""
        return sorted(self.locations)

    def repo(self, zone: int) -> ic.Repository:
        """The repository of a zone, opened with trusted containers only."""
        if zone not in self.locations:
            raise TileNotFoundError(
                f"no repository for UTM zone {zone} under {self.root}; zones here: {self.zones()}"
            )
        with self._lock:
            if zone in self._repos:
                return self._repos[zone]
            lock = self._zone_locks.setdefault(zone, threading.Lock())
        with lock:
            if zone not in self._repos:
                repo = open_repository(self.locations[zone], zone, self.options, self.files)
                with self._lock:
                    self._repos[zone] = repo
        return self._repos[zone]

    def years(self, zone: int | None = None) -> list[int]:
        """Years indexed in one zone, or in any zone."""
        zones = [zone] if zone is not None else self.zones()
        found: set[int] = set()
        for branches in concurrently(lambda z: self.repo(z).list_branches(), zones):
            found |= {y for b in branches if (y := year_of_branch(b))}
        return sorted(found)

    def get(self, zone: int, year: int) -> ZoneYearIndex:
        """The handle of a zone-year (its parts are found when first used)."""
        key = (int(zone), int(year))
        repo = self.repo(key[0])
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
            index = self._indexes[key] = ZoneYearIndex(
                *key, repo, self.locations[key[0]], self.root, self.pins, self.files,
                self.options.direct_reads, self._resolved.get(key),
            )  # fmt: skip
            while len(self._indexes) > MAX_LOADED:
                self._evict()
            return index

    def loaded(self) -> list[tuple[int, int]]:
        """The (zone, year) handles kept now, least recently used first."""
        with self._lock:
            return list(self._indexes)

    def _evict(self) -> None:
        """Forget the least recently used zone-year (and its zone's repository if unused)."""
        key, old = self._indexes.popitem(last=False)
        if "_resolved" in vars(old):  # its snapshot is kept: a later handle reads the same
            self._resolved[key] = old._resolved
        if all(z != key[0] for z, _ in self._indexes):
            self._repos.pop(key[0], None)
        log.debug("zone %d year %d: handle released (least recently used)", *key)

    def prepare(self, zones: Iterable[int], year: int) -> None:
        """Open the repositories and load the tables of ``zones`` for ``year``, concurrently.

        Each zone costs a few round trips (its repository, snapshot, table
        manifests) that depend on one another; different zones do not, so a
        batch of points over many zones waits for about one zone's worth
        instead of the sum. Zones without a repository are skipped; a zone
        whose year is not indexed is left for :meth:`find` to report.
        """
        todo = [z for z in dict.fromkeys(int(z) for z in zones) if z in self.locations]
        with self._lock:
            todo = [z for z in todo if not self._loaded((z, int(year)))]
        concurrently(lambda z: self.find(z, year), todo)

    def prepare_points(self, lon: NDArray[np.float64], year: int) -> None:
        """:meth:`prepare` the zones of the cells of points at these longitudes (NaN: none).

        Only their own zones: a neighbour zone is read for a point near a zone
        boundary only where its own zone's tiles leave its pixel uncovered,
        and then loaded when first needed.
        """
        finite = lon[np.isfinite(lon)]
        if finite.size > 1:
            self.prepare(np.unique(cell_zone(finite)).tolist(), year)

    def _loaded(self, key: tuple[int, int]) -> bool:
        index = self._indexes.get(key)
        return index is not None and "table" in vars(index)  # the cached_property's value

    def indexed(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (zone, year) of ``keys`` that are indexed (their branch or pin exists).

        Known from each zone's repository info, concurrently; no snapshot
        or table is loaded. A pinned version that does not exist is an error.
        """
        wanted = [(int(z), int(y)) for z, y in dict.fromkeys(keys) if z in self.locations]

        def check(key: tuple[int, int]) -> bool:
            try:
                self.get(*key).snapshot  # noqa: B018 - resolves the branch, tag or pin
            except VersionNotFoundError:
                raise
            except TileNotFoundError:
                return False
            return True

        return [k for k, ok in zip(wanted, concurrently(check, wanted), strict=True) if ok]

    def find(self, zone: int, year: int) -> ZoneYearIndex | None:
        """The handle of a zone-year that has a tiles table, else ``None``.

        A zone without a repository or a year it has not indexed is
        ``None``; a pinned version that does not exist is still an error.
        """
        if zone not in self.locations:
            return None
        try:
            index = self.get(zone, year)
            index.table  # noqa: B018 - loads it, or says there is none
        except VersionNotFoundError:
            raise
        except TileNotFoundError:
            return None
        return index

    def lookups_or_none(self, year: int) -> Callable[[int], TileLookup | None]:
        """Zone -> the year's tiles lookup, or ``None`` where :meth:`find` finds none."""

        def lookup(zone: int) -> TileLookup | None:
            index = self.find(zone, year)
            return index.lookup if index is not None else None

        return lookup

    def rects_near(self, year: int, lon: float, lat: float) -> Callable[[int], TileRects | None]:
        """Zone -> :meth:`ZoneYearIndex.rects_near` of one point, or ``None`` where not indexed."""

        def rects(zone: int) -> TileRects | None:
            if zone not in self.locations:
                return None
            try:
                return self.get(zone, year).rects_near(lon, lat)
            except VersionNotFoundError:
                raise
            except TileNotFoundError:
                return None

        return rects

    def rects_or_none(self, year: int) -> Callable[[int], TileRects | None]:
        """Zone -> the year's tile rectangles, or ``None`` where :meth:`find` finds none."""

        def rects(zone: int) -> TileRects | None:
            index = self.find(zone, year)
            return index.rects if index is not None else None

        return rects

    def provenance(self, keys: Iterable[tuple[int, int]]) -> dict[str, str]:
        """``tessera:versions``/``tessera:snapshots`` of the zone-years ``keys``, and the dataset.

        The dataset attributes (:mod:`.identity`) are those every zone read
        records; zones of two datasets are refused (:func:`~tessera_vz.core.dataset.only_one`).
        """
        read = sorted({(int(z), int(y)) for z, y in keys})
        versions = concurrently(self.version, read)
        return {
            **provenance((z, y, *v) for (z, y), v in zip(read, versions, strict=True)),
            **self.dataset({z for z, _ in read} or set(self.zones())),
        }

    def version(self, key: tuple[int, int]) -> tuple[str | None, str]:
        """A zone-year's tag and snapshot read (:meth:`ZoneYearIndex.version`), found once.

        Kept past the handle's eviction: naming the version of sixty zones
        must not reopen sixty repositories.
        """
        if key not in self._versions:
            found = self.get(*key).version()
            with self._lock:
                self._versions[key] = found
        return self._versions[key]

    def dataset(self, zones: Iterable[int]) -> dict[str, str]:
        """The dataset attributes the repositories of ``zones`` record (one dataset, or refused)."""
        asked = sorted(zones)
        missing = [z for z in asked if z not in self._identity]
        for zone, found_here in zip(
            missing, concurrently(lambda z: recorded_identity(self.repo(z)), missing), strict=True
        ):
            self._identity[zone] = found_here
        found = [self._identity[zone] for zone in asked]
        label = only_one((f["tessera:dataset"] for f in found), f"reading {self.root}")
        return next((f for f in found if f["tessera:dataset"] == label), {"tessera:dataset": label})

    def bands(self, years: Sequence[int]) -> int:
        """The band count of the first tile indexed in any of ``years`` (128 if none)."""
        for zone in self.zones():
            for y in years:
                lookup = self.lookups_or_none(y)(zone)
                if lookup is not None and lookup.names.size:
                    return int(lookup.cols["bands"][0])
        return BAND_COUNT
