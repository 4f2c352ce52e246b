"""Write a year's tiles table as one-degree blocks beside the repository.

The layout and why: :mod:`~tessera_vz.core.table_blocks`.

Called where a unit has published its snapshot on the year branch: the
rows it wrote as the table are cut into blocks, written (blocks first,
``index.json`` last, so a reader that finds the index finds every block),
and the blocks of the year's earlier snapshots are removed. A failure only
costs readers the blocks (they read the table in the repository instead),
so it is logged, never raised. Local folders and ``s3://`` prefixes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk as ic
import numpy as np
import obstore
from obstore.exceptions import BaseError as ObjectStoreError

from tessera_vz.core import table_blocks as tb
from tessera_vz.core.files import atomic_write_bytes
from tessera_vz.core.layout import branch_name, repo_name
from tessera_vz.core.s3 import s3_settings
from tessera_vz.core.table import COLUMNS, TileColumns, read_table, table_rows

log = logging.getLogger(__name__)


def blocks_of(rows: dict[str, dict[str, Any]], snapshot: str) -> dict[str, bytes]:
    """Block name -> its ``.npz`` bytes, for the whole table ``rows`` (by tile name)."""
    names = np.asarray(sorted(rows), dtype=str)
    columns = {c: np.asarray([rows[n][c] for n in names.tolist()], dtype=d)
               for c, d in COLUMNS.items()}  # fmt: skip
    keys = tb.block_keys(columns["lon"], columns["lat"]) if names.size else np.zeros((0, 2))
    out: dict[str, bytes] = {}
    for key in np.unique(keys, axis=0):
        mine = (keys == key).all(axis=1)
        part = TileColumns(names[mine], {c: v[mine] for c, v in columns.items()})
        out[tb.block_name(int(key[0]), int(key[1]))] = tb.encode_block(part, snapshot)
    return out


def write_table_blocks(
    out: str,
    zone: int,
    year: int,
    snapshot: str,
    rows: dict[str, dict[str, Any]],
    s3_options: dict[str, Any] | None = None,
) -> bool:
    """Write the blocks of ``snapshot`` (the year branch's new tip) of ``rows``; if written."""
    try:
        blocks = blocks_of(rows, snapshot)
        files = {f"{name}.npz": data for name, data in blocks.items()}
        files[tb.INDEX] = tb.index_document(zone, year, snapshot, len(rows), list(blocks))
        base = f"{out.rstrip('/')}/{repo_name(zone)}"
        if urlsplit(out).scheme == "s3":
            _put_s3(base, year, snapshot, files, s3_options)
        else:
            _put_local(base, year, snapshot, files)
    except (OSError, ValueError, ObjectStoreError) as exc:
        log.warning("zone %d year %d: table blocks not written (%s)", zone, year, exc)
        return False
    log.info(
        "zone %d year %d: table written as %d blocks for %s", zone, year, len(blocks), snapshot
    )
    return True


def has_table_blocks(
    out: str, zone: int, year: int, snapshot: str, s3_options: dict[str, Any] | None = None
) -> bool:
    """Whether the blocks of ``snapshot`` are there: their ``index.json``, written last.

    A store that cannot say counts as having them (nothing is rewritten on a
    guess; readers fall back on the repository's table anyway).
    """
    base = f"{out.rstrip('/')}/{repo_name(zone)}"
    name = f"{tb.folder(year, snapshot)}/{tb.INDEX}"
    try:
        if urlsplit(out).scheme == "s3":
            obstore.head(s3_settings(s3_options).obstore(base + "/"), name)
            return True
        return (_local_repo(base) / name).is_file()
    except FileNotFoundError:  # obstore raises it too, for a missing key
        return False
    except (OSError, ObjectStoreError) as exc:
        log.warning("zone %d year %d: cannot tell whether the table blocks exist (%s)",
                    zone, year, exc)  # fmt: skip
        return True


def write_missing_blocks(
    repo: ic.Repository, out: str, zone: int, year: int, s3_options: dict[str, Any] | None = None
) -> bool:
    """Blocks for the year branch's tip if it has none; whether they were written.

    An index written before the blocks existed, or whose blocks were lost,
    gets them on its next run even when nothing changed (that run commits
    nothing, so the unit that would write them never runs). Call it under
    the zone's lock: writing the blocks of a tip removes the year's others.
    """
    try:
        tip = str(repo.lookup_branch(branch_name(year)))
        if has_table_blocks(out, zone, year, tip, s3_options):
            return False
        table = read_table(repo.readonly_session(snapshot_id=tip).store)
    except (ic.IcechunkError, OSError, ValueError, KeyError) as exc:
        # Best effort, like the blocks of a unit: readers fall back on the table.
        log.warning("zone %d year %d: table blocks not written (%s)", zone, year, exc)
        return False
    if table is None:
        return False
    return write_table_blocks(out, zone, year, tip, table_rows(table), s3_options)


def _local_repo(base: str) -> Path:
    parts = urlsplit(base)
    return Path(parts.path if parts.scheme == "file" else base).expanduser()


def _put_local(base: str, year: int, snapshot: str, files: dict[str, bytes]) -> None:
    where = _local_repo(base) / tb.folder(year, snapshot)
    where.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == tb.INDEX):  # index.json last
        atomic_write_bytes(where / name, files[name], mode=0o644)  # readable by a web server
    for old in where.parent.iterdir():
        if old.name != snapshot and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _put_s3(
    base: str, year: int, snapshot: str, files: dict[str, bytes], s3_options: dict[str, Any] | None
) -> None:
    store = s3_settings(s3_options).obstore(base + "/")
    prefix = tb.folder(year, snapshot)
    for name in sorted(files, key=lambda n: n == tb.INDEX):
        obstore.put(store, f"{prefix}/{name}", files[name])
    year_prefix = prefix.rsplit("/", 1)[0] + "/"
    stale = [o["path"] for batch in obstore.list(store, prefix=year_prefix) for o in batch
             if not str(o["path"]).startswith(prefix + "/")]  # fmt: skip
    if stale:
        obstore.delete(store, stale)
