"""A manifest's size and modification time of a file, as one comparable text.

Upstream's scanners write ``grid_mtime``/``scales_mtime`` as pandas datetime
columns (``geotessera/registry_cli.py``: ``file_scan_command`` writes naive
local ``datetime.fromtimestamp`` values, ``s3scan_command`` tz-aware UTC
``LastModified`` values), in whatever unit pandas and pyarrow chose; older
manifests (and this project's first fixtures) hold float seconds. pyarrow
cannot cast a timestamp to float, so every form is normalised to one integer
unit, nanoseconds since the epoch: ``size=…;mtime_ns=…``. A naive timestamp
is taken as it is written (wall-clock, as pyarrow stores it), so the same
manifest always gives the same facts, which is all a sync compares.

Facts recorded by an older tessera-vz (``size=…;mtime=<float seconds>``) are
read as the same facts (:func:`upgrade_recorded`), so an unchanged re-run of
an older index still probes nothing.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_NS = 1_000_000_000
#: A recorded fact of an older tessera-vz: float seconds.
_OLD = r"^size=(?P<size>\d+);mtime=(?P<mtime>[^;]+)$"


def mtime_ns(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray | None:
    """Nanoseconds since the epoch of a timestamp (any unit or zone) or numeric-seconds column.

    ``None`` when the column is of no type a modification time can have.
    Non-finite seconds (a missing file) become null.
    """
    kind = column.type
    if pa.types.is_timestamp(kind):
        # The stored int64 counts units since the epoch (UTC for tz-aware).
        raw = pc.cast(column.cast(pa.timestamp(kind.unit)), pa.int64())
        scale = {"s": _NS, "ms": 1_000_000, "us": 1_000, "ns": 1}[kind.unit]
        return pc.multiply_checked(raw, scale) if scale != 1 else raw
    if pa.types.is_integer(kind):
        return pc.multiply_checked(pc.cast(column, pa.int64()), _NS)
    if pa.types.is_floating(kind):
        seconds = pc.cast(column, pa.float64())
        ok = pc.and_(pc.is_finite(seconds), pc.less(pc.abs(seconds), 9.2e9))
        ns = pc.round(pc.multiply(pc.if_else(ok, seconds, 0.0), float(_NS)))
        return pc.if_else(ok, pc.cast(ns, pa.int64()), pa.scalar(None, pa.int64()))
    return None


def facts_text(sizes: pa.Array, mtimes: pa.Array) -> pa.Array:
    """``size=…;mtime_ns=…`` per row, null where either is missing or the size negative."""
    try:
        size = pc.cast(sizes, pa.int64())
        ns = mtime_ns(mtimes)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ns = None
    if ns is None:
        return pa.nulls(len(sizes), pa.string())
    ok = pc.and_(pc.greater_equal(size, 0), pc.is_valid(ns))
    text = pc.binary_join_element_wise(
        "size=", pc.cast(size, pa.string()), ";mtime_ns=", pc.cast(ns, pa.string()), ""
    )
    return pc.if_else(pc.fill_null(ok, False), text, pa.scalar(None, pa.string()))


def upgrade_recorded(facts: pa.Array) -> pa.Array:
    """Recorded facts with an older tessera-vz's float seconds rewritten as ``mtime_ns``.

    Other facts (listings' ``etag=``/``modified=``, already ``mtime_ns``,
    empty) are returned as they are.
    """
    parts = pc.extract_regex(facts, _OLD)
    old = pc.fill_null(pc.is_valid(parts), False)
    if not pc.any(old).as_py():
        return facts
    text = pc.if_else(old, pc.struct_field(parts, "mtime"), "nan")
    try:
        seconds = pc.cast(text, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return facts
    sizes = pc.cast(pc.if_else(old, pc.struct_field(parts, "size"), "0"), pa.int64())
    new = facts_text(sizes, seconds)
    return pc.if_else(pc.and_(old, pc.is_valid(new)), new, facts)
