"""Write one (zone, year) unit as one transaction: scratch branch, commits, publish, tag.

A unit's new groups, references and table are written in batches to a
scratch branch, so memory stays bounded by a batch, and the result is one
snapshot whose parent is the year's previous tip. Only then does the year
branch move to it, and only if it still points where this run's table was
read: a concurrent run is never overwritten (:class:`UnitConflictError`).
The tag ``{year}-v{n}`` follows. A run killed half-way leaves only a scratch
branch, which a later run deletes once it is old enough to be surely dead.

How the batches become one snapshot depends on who else may write. Under
the zone's lock (a local repository), each batch is an ordinary commit, so
each transaction log holds only its batch, and Icechunk's garbage
collection then folds the chain: it drops the intermediate snapshots and
re-parents the last one onto the year's previous tip, keeping the batches'
logs as its history (:func:`fold_batches`). Without the lock (S3), garbage
collection could delete another writer's objects in flight, so each batch
*amends* the previous one instead: one snapshot too, but each amend rebuilds
the log of every change so far, and memory grows with the unit
(~100-150 kB a tile already written).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import icechunk as ic

from tessera_vz.core.errors import TesseraError
from tessera_vz.core.layout import WORK_PREFIX, branch_name, work_branch_name
from tessera_vz.indexer.documents import TileGroup, group_document, set_all, write_tile_groups
from tessera_vz.indexer.memory import release
from tessera_vz.indexer.migration import (
    groups_to_upgrade,
    previous_layout,
    upgrade_groups,
    writing_layout,
)
from tessera_vz.indexer.record import TileRecord
from tessera_vz.indexer.references import set_references, write_table
from tessera_vz.indexer.report import Commit
from tessera_vz.indexer.repository import collect_amended, next_tag, unit_repo
from tessera_vz.indexer.roots import SourceRoot

log = logging.getLogger(__name__)

#: Default age (seconds) after which a scratch branch is taken for a dead run's.
SCRATCH_MAX_AGE = 3600.0

#: Seconds by which a file system's time stamps may lag the clock.
_CLOCK_SLACK = 0.02


class UnitConflictError(TesseraError, RuntimeError):
    """Another run published the same (zone, year) while this one was writing."""


def scratch_age(repo: ic.Repository, branch: str, now: float | None = None) -> float | None:
    """Seconds since a scratch branch was created, or ``None`` if it is not one.

    The creation time is part of the name (``tessera-work-{year}-{epoch}-{hex}``);
    branches named before that (``…-{hex}``) are aged by their tip snapshot,
    which is never younger than the branch.
    """
    if not branch.startswith(WORK_PREFIX):
        return None
    now = time.time() if now is None else now
    parts = branch[len(WORK_PREFIX) :].split("-")
    if len(parts) == 3 and parts[1].isdigit():
        return now - int(parts[1])
    written = repo.lookup_snapshot(repo.lookup_branch(branch)).written_at
    return now - float(written.timestamp())


def clean_scratch_branches(
    repo: ic.Repository, year: int, max_age: float = SCRATCH_MAX_AGE
) -> list[str]:
    """Delete the year's scratch branches older than ``max_age`` seconds.

    A run killed half-way leaves its scratch branch behind (the year branch
    never saw it). Deleting it is safe once its run is surely dead, which is
    not knowable across machines; age is the proxy, so ``max_age`` must exceed
    the longest a live run takes to write one unit (default one hour). Only
    branches of ``year`` are touched: another year may be written right now.
    """
    prefix = f"{WORK_PREFIX}{int(year)}-"
    deleted = []
    now = time.time()
    for branch in sorted(repo.list_branches()):
        if not branch.startswith(prefix):
            continue
        age = scratch_age(repo, branch, now)
        if age is None or age < max_age:
            continue
        try:
            repo.delete_branch(branch)
        except ic.IcechunkError as exc:
            # A concurrent run may have deleted it first (not found) or moved
            # the refs meanwhile: a stale branch left over is only litter.
            log.warning("could not delete stale scratch branch %s: %s", branch, exc)
            continue
        log.info("deleted stale scratch branch %s (%.0f s old)", branch, age)
        deleted.append(branch)
    return deleted


def _write_batch(
    repo: ic.Repository,
    work: str,
    first: bool,
    amend: bool,
    batch: Sequence[TileRecord],
    drop: Sequence[str],
    rows: dict[str, dict[str, Any]] | None,
    root_attrs: dict[str, Any],
    root: SourceRoot,
    budget: int,
    message: str,
    metadata: dict[str, Any],
    timings: dict[str, float],
    layout: int,
    upgrade: Sequence[TileGroup] = (),
) -> str:
    """Write one batch to the scratch branch as a commit (or amending the previous batch)."""
    c0 = time.process_time()
    session = repo.writable_session(work)
    store = session.store
    t0 = time.perf_counter()

    async def write() -> float:
        if first:
            await set_all(store, [("zarr.json", group_document(root_attrs))])
        await write_tile_groups(store, batch, root, budget, drop, layout)
        t = time.perf_counter()
        await upgrade_groups(store, upgrade)
        return time.perf_counter() - t

    upgrading = asyncio.run(write())
    t1 = time.perf_counter()
    c1 = time.process_time()
    for r in batch:
        set_references(store, r, root, budget)
    t2 = time.perf_counter()
    c2 = time.process_time()
    if rows is not None:
        write_table(store, rows, root_attrs)
    t3 = time.perf_counter()
    c3 = time.process_time()
    log.info("committing to scratch branch %s: %s", work, message)
    if amend:
        snapshot = session.amend(message, metadata=metadata)
    else:
        snapshot = session.commit(message, metadata=metadata)
    t4 = time.perf_counter()
    c4 = time.process_time()
    # Process CPU beside wall time: icechunk works on its own threads, so a
    # phase can take more CPU than wall (or less, while it waits on storage).
    for key, value in (
        ("cpu_write_metadata", c1 - c0),
        ("cpu_write_refs", c2 - c1),
        ("cpu_write_table", c3 - c2),
        ("cpu_commit", c4 - c3),
    ):
        timings[key] = timings.get(key, 0.0) + value
    if upgrade:
        timings["upgrade_layout"] = timings.get("upgrade_layout", 0.0) + upgrading
    for key, value in (
        ("write_metadata", t1 - t0 - upgrading),
        ("write_refs", t2 - t1),
        ("write_table", t3 - t2),
        ("commit", t4 - t3),
    ):
        timings[key] = timings.get(key, 0.0) + value
    return str(snapshot)


def write_unit(
    repo: ic.Repository,
    zone: int,
    year: int,
    records: Sequence[TileRecord],
    drop: Sequence[str],
    rows: dict[str, dict[str, Any]],
    root: SourceRoot,
    budget: int,
    timings: dict[str, float],
    batch_tiles: int = 1000,
    expected_tip: str | Literal["lookup"] | None = "lookup",
    locked: bool = False,
) -> Commit:
    """Write new/changed ``records``, remove ``drop``, store ``rows`` as the table.

    ``rows`` is the complete table after this run (kept and new rows);
    ``drop`` lists groups to delete first (removed and changed tiles).

    Records are written in batches of ``batch_tiles`` to a scratch branch, so
    memory stays bounded by a batch, and the result is one snapshot whose
    parent is the year's previous tip. Only then does the year branch move to
    it (conditionally: if another run moved it meanwhile, nothing is
    published and :class:`UnitConflictError` says so).

    ``locked`` says that the caller holds the zone's lock
    (:mod:`~tessera_vz.indexer.locks`), so no other writer has objects in
    flight in this repository: the batches are then ordinary commits, folded
    into one snapshot by garbage collection before publishing
    (:func:`fold_batches`), and memory does not grow with the batches
    written. Otherwise each batch amends the previous one, whose replaced
    snapshots and logs stay behind until collected
    (:func:`~tessera_vz.indexer.repository.collect_amended`).

    ``expected_tip`` is the year-branch snapshot ``rows`` were computed from
    (``None``: the branch did not exist); the branch moves only if it still
    points there. The default looks it up now, which is right only when
    ``rows`` were read just before.

    When the year was written in an older layout (see
    :data:`~tessera_vz.core.layout.LAYOUT_VERSION`), the metadata of every
    other group in ``rows`` is rewritten in the current one from its table
    row, in the same commit: no header is read, no reference rewritten.
    """
    branch = branch_name(year)
    repo = unit_repo(repo, len(rows))
    if expected_tip == "lookup":
        tip = repo.lookup_branch(branch) if branch in repo.list_branches() else None
    else:
        tip = expected_tip
    layout = writing_layout()
    previous = previous_layout(repo, tip, zone, year, layout)
    fresh = {r.name for r in records}
    upgrade = groups_to_upgrade(year, rows, fresh) if previous < layout else []
    base = tip if tip is not None else repo.lookup_branch("main")
    # The creation time in the name lets a later run tell a stale branch of a
    # killed run from the live branch of a concurrent one.
    work = work_branch_name(year, f"{int(time.time())}-{uuid.uuid4().hex[:8]}")
    repo.create_branch(work, base)
    tag = next_tag(repo, year)
    n_removed = len(set(drop) - fresh)
    message = f"index {len(records)} tiles, remove {n_removed} ({tag})"
    if upgrade:
        message += f"; layout {previous} -> {layout} for {len(upgrade)} more tiles"
    metadata = {
        "tessera:tag": tag,
        "tessera:tiles": len(rows),
        "tessera:zone": zone,
        "tessera:layout_version": layout,
    }
    root_attrs = {
        "tessera:zone": zone,
        "tessera:year": year,
        "tessera:layout_version": layout,
    }
    batches = [records[i : i + batch_tiles] for i in range(0, len(records), batch_tiles)] or [[]]
    fold = locked and len(batches) > 1
    try:
        snapshot = ""
        before: dt.datetime | None = None
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            if fold and last:
                # Every object of the batches before is older than this; the
                # last batch's snapshot is younger, which keeps it alive.
                before = _settled_now()
            log.info(
                "zone %d year %d: writing batch %d/%d (%d tiles) to scratch branch %s",
                zone, year, i + 1, len(batches), len(batch), work,
            )  # fmt: skip
            snapshot = _write_batch(
                repo,
                work,
                i == 0,
                i > 0 and not fold,
                batch,
                drop if i == 0 else [],
                rows if last else None,
                root_attrs,
                root,
                budget,
                message,
                metadata,
                timings,
                layout,
                upgrade if i == 0 else (),
            )
            release()
        if before is not None:
            # Nothing may point at the batches any more, or they stay reachable.
            repo.delete_branch(work)
            log.info(
                "zone %d year %d: folding %d batches into %s", zone, year, len(batches), snapshot
            )
            t = time.perf_counter()
            c = time.process_time()
            fold_batches(repo, zone, year, snapshot, base, before)
            timings["collect"] = timings.get("collect", 0.0) + time.perf_counter() - t
            timings["cpu_collect"] = timings.get("cpu_collect", 0.0) + time.process_time() - c
        log.info("zone %d year %d: publishing %s to branch %s", zone, year, snapshot, branch)
        _publish(repo, zone, year, branch, snapshot, tip)
        repo.create_tag(tag, snapshot)
    finally:
        try:
            if work in repo.list_branches():
                repo.delete_branch(work)
        except ic.IcechunkError:
            # Only Icechunk's own failures are swallowed: the scratch branch is
            # harmless litter, and this must never mask the real outcome.
            log.warning("could not delete scratch branch %s", work)
    log.info("zone %d year %d: committed %s as %s (%d tiles)", zone, year, snapshot, tag, len(rows))
    return Commit(
        zone=zone,
        year=year,
        snapshot=snapshot,
        tag=tag,
        batches=len(batches),
        amended=len(batches) > 1 and not fold,
    )


def _settled_now() -> dt.datetime:
    """Now, after every file written before it carries an older time stamp.

    File systems stamp files with a coarse clock that may lag the precise
    one by a few milliseconds; waiting that long makes "older than now"
    mean "written before now" for the files about to be compared with it.
    """
    time.sleep(_CLOCK_SLACK)
    now = dt.datetime.now(dt.UTC)
    time.sleep(_CLOCK_SLACK)
    return now


def fold_batches(
    repo: ic.Repository, zone: int, year: int, snapshot: str, base: str, before: dt.datetime
) -> None:
    """Make the last batch's ``snapshot`` the child of ``base``, dropping the batches between.

    The batches were ordinary commits on a scratch branch now deleted, all
    written before ``before``; ``snapshot`` after it. Garbage collection
    deletes the unreachable snapshots older than ``before`` (the batches)
    and re-parents the survivor over them onto its nearest kept ancestor,
    ``base`` (the year's previous tip, pointed at by its branch and tag),
    keeping their transaction logs as the survivor's history, so the year's
    history still goes from tag to tag and a diff between tags is complete.

    Only safe under the zone's lock: every unreachable object older than
    ``before`` is then garbage (amended snapshots of earlier runs and the
    litter of killed runs go too), never another writer's work in flight.
    """
    collect_amended(repo, zone, before)
    parent = repo.lookup_snapshot(snapshot).parent_id
    if parent != base:
        raise TesseraError(
            f"zone {zone} year {year}: folding the batches left snapshot {snapshot} with "
            f"parent {parent}, expected {base}; nothing was published. Re-run the same "
            "command (the batches are garbage a later run collects)"
        )


def _publish(
    repo: ic.Repository, zone: int, year: int, branch: str, snapshot: str, tip: str | None
) -> None:
    """Move the year branch from ``tip`` to ``snapshot`` (create it when ``tip`` is None).

    Icechunk refuses the move when the branch no longer points at ``tip``
    (:class:`icechunk.ConflictError`) or, for a new year, when another run
    created the branch first (:class:`icechunk.AlreadyExistsError`): both
    mean that another run published this year meanwhile.
    """
    try:
        if tip is not None:
            repo.reset_branch(branch, snapshot, from_snapshot_id=tip)
        else:
            repo.create_branch(branch, snapshot)
    except (ic.ConflictError, ic.AlreadyExistsError) as exc:
        raise UnitConflictError(
            f"zone {zone} year {year}: another index run published this year while this "
            f"one was writing ({type(exc).__name__}); nothing of this run was published. "
            "Re-run the same command to index on top of the other run's result"
        ) from None
