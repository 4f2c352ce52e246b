"""Index layouts: which one a year branch is in, and moving it to the current one.

A year branch records the layout it was written in (commit metadata
``tessera:layout_version``, see :data:`~tessera_vz.core.layout.LAYOUT_VERSION`).
A run on a year in an older layout rewrites the metadata of every group it
does not re-index from the year's tiles table, in the same commit: no header
is read, no reference rewritten. A year in a newer layout than this code
writes is refused, since writing older groups into it would mix layouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import icechunk as ic

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import LAYOUT_VERSION
from tessera_vz.indexer.documents import (
    GROUPS_PER_GATHER,
    TileGroup,
    group_of_row,
    set_all,
    tile_documents,
)

#: Nodes of older layouts that the current one no longer has (removed on upgrade).
_OBSOLETE_NODES = ("band",)


def writing_layout() -> int:
    """The layout an index run writes: this module's ``LAYOUT_VERSION``.

    Looked up at each call, not bound at import, so that a test or a
    benchmark can write an older layout (whose documents
    :mod:`~tessera_vz.indexer.documents` keeps) by setting
    ``migration.LAYOUT_VERSION``.
    """
    return LAYOUT_VERSION


def year_layout(repo: ic.Repository, snapshot: str) -> int:
    """Layout version of a year-branch snapshot, from its commit metadata.

    Read from the repository's snapshot list, not the snapshot itself, so it
    costs no fetch of a (multi-megabyte) snapshot. Commits made before the
    layout was recorded there are layout 1.
    """
    meta = repo.lookup_snapshot(snapshot).metadata or {}
    return int(meta.get("tessera:layout_version", 1))


def layout_outdated(repo: ic.Repository | None, tip: str | None) -> bool:
    """Whether a year branch at ``tip`` needs its groups moved to the current layout."""
    return repo is not None and tip is not None and year_layout(repo, tip) < writing_layout()


def previous_layout(repo: ic.Repository, tip: str | None, zone: int, year: int, layout: int) -> int:
    """The layout the year branch is in at ``tip`` (``layout`` for a new year).

    Raises :class:`ConfigurationError` for a layout newer than ``layout``:
    a newer tessera-vz wrote it, and this one must not add older groups.
    """
    previous = year_layout(repo, tip) if tip is not None else layout
    if previous > layout:
        raise ConfigurationError(
            f"zone {zone} year {year} was written in index layout {previous} by a newer "
            f"tessera-vz; this one writes layout {layout}. Upgrade tessera-vz to index it"
        )
    return previous


def groups_to_upgrade(
    year: int, rows: dict[str, dict[str, Any]], fresh: set[str]
) -> list[TileGroup]:
    """The tile groups of ``rows`` that this run does not write anew (``fresh``)."""
    return [group_of_row(n, year, row) for n, row in sorted(rows.items()) if n not in fresh]


async def upgrade_groups(store: ic.IcechunkStore, groups: Sequence[TileGroup]) -> None:
    """Rewrite existing tile groups' metadata in the current layout, keeping their data.

    Icechunk keeps an array's chunk references when its metadata document is
    replaced with the same shape and chunks, so the virtual references stay
    and no manifest is rewritten; coordinates ``y`` and ``x`` are unchanged
    since layout 1 and are left alone. Nodes the layout dropped are deleted.
    """
    for start in range(0, len(groups), GROUPS_PER_GATHER):
        batch = groups[start : start + GROUPS_PER_GATHER]
        await set_all(store, [d for g in batch for d in tile_documents(g, coordinates=False)])
        # Deleting a node that is not there is a no-op.
        await asyncio.gather(
            *(store.delete_dir(f"{g.name}/{node}") for g in batch for node in _OBSOLETE_NODES)
        )
