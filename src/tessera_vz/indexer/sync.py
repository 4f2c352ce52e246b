"""Sync by set difference: which tiles of a (zone, year) unit need a header probe.

A probe costs a round trip per file; over the whole archive (~3.8 M tiles,
7.6 M files) a re-run that probes everything is millions of requests for
nothing. The inventory (manifest or listing) already says each file's size
and modification time or ETag, and the year's ``tiles`` table records what
the inventory said when each tile was indexed (``emb_listed``,
``scales_listed``). Comparing inventory with inventory is exact: a mirror's
``Last-Modified`` need not equal a manifest's ``mtime``, so the probe's own
facts (``emb_size``, ``emb_checksum``) are not compared with the manifest.

A tile is probed when it is new, when either file's facts differ, when the
inventory gives no facts for it, when the index recorded none (tiles indexed
before these columns existed, or from a source without facts), when it was
indexed from another source root, or on ``--reprobe``. Tiles the index holds
but the inventory no longer lists are removed. Drift that the inventory does
not show (a file replaced without a manifest update) is not seen here; reads
still fail on it (every reference carries the file's checksum) and
``tessera-vz verify`` finds it; ``--reprobe`` re-indexes it.

Everything here is Arrow compute over whole columns (a hash join per unit),
so diffing a whole-archive manifest costs seconds, not a Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xarray as xr

from tessera_vz.indexer.facts import upgrade_recorded

#: Columns of the index side of a diff (from the year's tiles table).
RECORDED_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("source", pa.string()),
        ("emb_listed", pa.string()),
        ("scales_listed", pa.string()),
    ]
)


@dataclass(frozen=True)
class UnitDiff:
    """What a unit's inventory and its index disagree on.

    ``probe``: inventory rows to probe (same columns as the inventory);
    ``skipped``: tiles the inventory shows unchanged, which are not probed;
    ``removed``: tiles in the index that the inventory no longer lists.
    """

    probe: pa.Table
    skipped: int
    removed: list[str]


def recorded_table(table: xr.Dataset | None) -> pa.Table:
    """The index side of a diff from a year's tiles table (``None``: no table yet).

    Tables written before the ``*_listed`` columns existed give empty facts,
    so their tiles are probed once and gain the columns.
    """
    if table is None or table.sizes.get("tile", 0) == 0:
        return RECORDED_SCHEMA.empty_table()
    n = table.sizes["tile"]

    def column(name: str) -> pa.Array:
        if name not in table:
            return pa.array(np.full(n, "", dtype="U1"), pa.string())
        return pa.array(np.asarray(table[name].values, dtype=str), pa.string())

    return pa.table(
        {
            "name": pa.array(np.asarray(table["tile"].values, dtype=str), pa.string()),
            "source": column("source"),
            # An older tessera-vz recorded a manifest's mtime as float seconds.
            "emb_listed": upgrade_recorded(column("emb_listed")),
            "scales_listed": upgrade_recorded(column("scales_listed")),
        },
        schema=RECORDED_SCHEMA,
    )


def diff_unit(listed: pa.Table, recorded: pa.Table, source: str, *, reprobe: bool) -> UnitDiff:
    """Split a unit's inventory into tiles to probe and tiles known unchanged.

    ``listed`` has the inventory's columns (``name``, ``emb_listed``,
    ``scales_listed``, …; one row per tile); ``recorded`` is
    :func:`recorded_table` of the year's tiles table; ``source`` the root URL
    of this run. With ``reprobe`` every listed tile is probed.
    """
    names = listed.column("name")
    gone = pc.invert(pc.is_in(recorded.column("name"), value_set=names))
    removed = [str(n) for n in recorded.column("name").filter(gone).to_pylist()]
    if reprobe or recorded.num_rows == 0 or listed.num_rows == 0:
        return UnitDiff(listed, 0, removed)
    left = pa.table(
        {
            "row": pa.array(np.arange(listed.num_rows, dtype=np.int64)),
            "name": names,
            "emb_listed": listed.column("emb_listed"),
            "scales_listed": listed.column("scales_listed"),
        }
    )
    right = recorded.rename_columns(["name", "r_source", "r_emb", "r_scales"])
    joined = left.join(right, keys="name", join_type="inner", use_threads=False)
    same = pc.and_kleene(
        pc.and_kleene(
            pc.equal(joined.column("r_source"), pa.scalar(source)),
            pc.equal(joined.column("r_emb"), joined.column("emb_listed")),
        ),
        pc.equal(joined.column("r_scales"), joined.column("scales_listed")),
    )
    # Empty facts ("" recorded, or null listed) never count as the same.
    same = pc.and_kleene(same, pc.not_equal(joined.column("emb_listed"), ""))
    same = pc.and_kleene(same, pc.not_equal(joined.column("scales_listed"), ""))
    unchanged = joined.column("row").filter(pc.fill_null(same, False)).to_numpy()
    keep = np.ones(listed.num_rows, dtype=bool)
    keep[unchanged] = False
    return UnitDiff(listed.filter(pa.array(keep)), int(unchanged.size), removed)
