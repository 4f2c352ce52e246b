"""Incremental catalog runs, keyed by snapshot ids.

A (zone, year) of an index changes only by a commit to its branch, which
gives it a new snapshot id; so a unit whose branch still points at the
snapshot the catalog was built from needs nothing done. Every output records
the snapshot its part came from:

- ``tiles.parquet`` and ``stac/items.parquet`` carry ``snapshot`` /
  ``tessera:snapshot`` columns, one unit per row group, so a run copies the
  row groups of unchanged units as they are and computes only changed ones;
- each unit's ``stac/utmZZ/YYYY/catalog.json`` records its snapshot, and its
  Item files are left untouched while it holds;
- ``catalog-state.json`` lists every unit (snapshot, tag, tile count,
  footprint box and geometry types: what the file-level metadata needs
  without reading kept rows) plus the catalog format version and the index it
  describes. It is written last, after every output was replaced atomically,
  so a run killed half-way costs at most recomputing a unit, never a stale
  catalog.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tessera_vz.core.files import atomic_write_bytes, file_lock

log = logging.getLogger(__name__)

#: Bumped whenever what a catalog run writes changes meaning or schema: a
#: catalog written by another version is rebuilt in full, never patched.
CATALOG_VERSION = 2  # 2: the index asset is relative to the catalog, or under --base-url
STATE_FILE = "catalog-state.json"
LOCK_FILE = ".catalog.lock"
WORK_DIR = ".catalog-work"


@dataclass
class UnitState:
    """What the catalog holds of one (zone, year)."""

    zone: int
    year: int
    snapshot: str
    tag: str | None
    tiles: int
    bbox: list[float] | None
    geometry_types: list[str]
    epsg: list[int] = field(default_factory=list)


@dataclass
class CatalogState:
    """The ``catalog-state.json`` document."""

    version: int
    store: str
    collection_id: str
    units: dict[str, UnitState]
    #: Where the catalog's links find the index (relative path or URL): when it
    #: changes (``--base-url``, a moved catalog), every Item is rewritten.
    index_href: str = ""
    #: How Items were written (``json`` or ``geoparquet``): a run in the other
    #: mode rebuilds every unit, so the catalog never mixes the two.
    items: str = "json"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "store": self.store,
            "collection_id": self.collection_id,
            "index_href": self.index_href,
            "items": self.items,
            "units": {k: asdict(u) for k, u in sorted(self.units.items(), key=_unit_order)},
        }


def _unit_order(item: tuple[str, Any]) -> tuple[int, int]:
    zone, year = item[0].split("/")
    return int(zone), int(year)


def load_state(out: Path) -> CatalogState | None:
    """The state of the last complete run, or ``None`` (absent or unreadable)."""
    path = out / STATE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return CatalogState(
            version=int(doc["version"]),
            store=str(doc["store"]),
            collection_id=str(doc["collection_id"]),
            units={k: UnitState(**v) for k, v in doc["units"].items()},
            index_href=str(doc.get("index_href", "")),
            items=str(doc.get("items", "json")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s): rebuilding the catalog", path, exc)
        return None


def save_state(out: Path, state: CatalogState) -> None:
    """Write the state atomically."""
    atomic_write_bytes(out / STATE_FILE, json.dumps(state.to_json(), indent=1).encode())


@contextmanager
def catalog_lock(out: Path) -> Iterator[None]:
    """Hold ``DIR/.catalog.lock``: two runs writing one catalog would mix their files.

    Fails at once (exit 2) instead of waiting, since the other run will
    bring the catalog up to date anyway. The lock is released by the kernel
    if its holder dies (:func:`~tessera_vz.core.files.file_lock`).
    """
    busy = f"another `tessera-vz catalog` run is writing {out}; wait for it to finish"
    with file_lock(out / LOCK_FILE, wait=False, busy=busy):
        yield


@dataclass
class RowGroups:
    """Row groups of an existing output file, by unit, with the snapshot each holds."""

    path: Path
    units: dict[tuple[int, int], list[int]]
    snapshots: dict[tuple[int, int], set[str]]
    rows: dict[tuple[int, int], int]
    schema: Any

    def holds(self, zone: int, year: int, snapshot: str, tiles: int) -> bool:
        """Whether the file holds exactly ``tiles`` rows of a unit, all from ``snapshot``."""
        key = (zone, year)
        if tiles == 0:  # an empty unit has no row group to carry its snapshot
            return key not in self.rows
        return self.snapshots.get(key) == {snapshot} and self.rows.get(key) == tiles


def row_groups(path: Path, zone_col: str, year_col: str, snapshot_col: str) -> RowGroups | None:
    """Index an output file's row groups by unit (``None`` if missing or unreadable).

    Reads only the three key columns (dictionary-encoded, a few bytes per
    row). A row group mixing units (never written by this module) makes the
    whole file unusable for copying, so it is rebuilt instead.
    """
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return None
    units: dict[tuple[int, int], list[int]] = defaultdict(list)
    snaps: dict[tuple[int, int], set[str]] = defaultdict(set)
    rows: dict[tuple[int, int], int] = defaultdict(int)
    try:
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, columns=[zone_col, year_col, snapshot_col])
            keys = set(zip(t[zone_col].to_pylist(), t[year_col].to_pylist(), strict=True))
            if len(keys) > 1:
                log.warning("%s mixes units in row group %d: rebuilding it", path, i)
                return None
            if not keys:
                continue
            zone, year = keys.pop()
            key = (int(zone), int(year))
            units[key].append(i)
            snaps[key] |= {str(s) for s in t[snapshot_col].to_pylist()}
            rows[key] += t.num_rows
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return None
    return RowGroups(path, dict(units), dict(snaps), dict(rows), pf.schema_arrow)
