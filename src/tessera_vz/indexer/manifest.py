"""Tiles listed by an upstream ``manifest.parquet``, validated a batch of rows at a time.

A manifest is how tiles are found over HTTP(S), where there is no directory
listing. Its paths may be relative to the tree or URLs of any mirror: only
their ``{year}/grid_…/file`` tail is kept, rebased onto SOURCE. A manifest of
the whole archive (~3.8 million rows) is validated with Arrow compute, not a
Python loop per row; only odd rows (other path forms, refusals) take the
row-by-row path that names each problem. Its sizes and modification times
become each tile's ``emb_listed``/``scales_listed`` facts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
import obstore
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from obstore.exceptions import BaseError as ObstoreError

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.coords import is_valid_lonlat
from tessera_vz.core.errors import ConfigurationError, SourceNotFoundError, TesseraError
from tessera_vz.core.geometry import utm_zone
from tessera_vz.core.layout import source_paths, tile_name
from tessera_vz.core.loop import sync
from tessera_vz.core.options import ReadOptions
from tessera_vz.indexer.facts import facts_text
from tessera_vz.indexer.inventory import (
    INVENTORY_SCHEMA,
    TileSource,
    tile_sources,
    wanted,
    wanted_mask,
)
from tessera_vz.indexer.manifest_scan import manifest_batches, same_paths
from tessera_vz.indexer.report import Failure
from tessera_vz.indexer.roots import SourceRoot, rebase

if TYPE_CHECKING:
    from obstore.store import ObjectStore

log = logging.getLogger(__name__)

#: Columns every manifest must have.
MANIFEST_COLUMNS = ("year", "lon", "lat", "grid_path", "scales_path")
#: Manifest columns that give each file's size and modification time.
MANIFEST_FACTS = ("grid_size", "grid_mtime", "scales_size", "scales_mtime")
#: Manifest rows validated at once (bounds the memory of the intermediate columns).
_BATCH_ROWS = 1 << 19


class ManifestNotFoundError(ConfigurationError):
    """The manifest named (or looked for under SOURCE) does not exist."""


def open_manifest(
    manifest: str,
    *,
    store_for_url: ObjectStore | None = None,
    options: dict[str, Any] | None = None,
    read: ReadOptions | None = None,
) -> pq.ParquetFile:
    """Open a manifest from a local path or a URL, without reading rows.

    A remote manifest (``http(s)://``, ``s3://``) is fetched whole (one GET)
    through the reader's boundary: ``read`` gives its retry policy, S3
    settings and extra CA, and the manifest's own location is what it
    authorises (redirects elsewhere are refused). ``store_for_url`` reads it
    from a given obstore store instead; ``options`` is kept for callers that
    pass obstore options. Its rows are decoded as read.
    """
    parts = urlsplit(manifest)
    try:
        if parts.scheme in ("", "file"):
            local = unquote(parts.path) if parts.scheme else manifest
            if not Path(local).expanduser().exists():
                raise ManifestNotFoundError(
                    f"manifest {manifest!r} does not exist; expected an upstream TESSERA "
                    f"manifest.parquet with columns {', '.join(MANIFEST_COLUMNS)}"
                )
            return pq.ParquetFile(Path(local).expanduser())
        if store_for_url is not None:
            data = obstore.get(store_for_url, parts.path.lstrip("/")).bytes()
            return pq.ParquetFile(pa.py_buffer(data))
        base = manifest.rsplit("/", 1)[0] + "/"
        files = SourceFiles([base], read if read is not None else ReadOptions())
        return pq.ParquetFile(pa.py_buffer(sync(files.fetch(manifest, "reading the manifest"))))
    except ManifestNotFoundError:
        raise
    except SourceNotFoundError as exc:
        raise ManifestNotFoundError(f"cannot fetch manifest {manifest!r}: {exc}") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigurationError(
            f"cannot read manifest {manifest!r}: {exc}; expected an upstream TESSERA "
            f"manifest.parquet with columns {', '.join(MANIFEST_COLUMNS)}"
        ) from None
    except TesseraError as exc:
        raise ConfigurationError(f"cannot fetch manifest {manifest!r}: {exc}") from None
    except (ObstoreError, ValueError) as exc:
        # A given store's failures: obstore raises its own hierarchy, and a
        # built-in ValueError for a path it cannot use (not-found is an OSError).
        raise ConfigurationError(f"cannot fetch manifest {manifest!r}: {exc}") from None


def read_manifest_table(
    manifest: str,
    *,
    store_for_url: ObjectStore | None = None,
    options: dict[str, Any] | None = None,
    read: ReadOptions | None = None,
) -> pa.Table:
    """Load a whole manifest (see :func:`open_manifest`) as a table."""
    pf = open_manifest(manifest, store_for_url=store_for_url, options=options, read=read)
    try:
        return pf.read()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigurationError(f"cannot read manifest {manifest!r}: {exc}") from None


def _hundredths_text(v: pa.Array) -> pa.Array:
    """``-1.05`` as text from integer hundredths ``-105``, as ``f"{x:.2f}"`` writes it."""
    a = pc.abs(v)
    sign = pc.if_else(pc.less(v, 0), "-", "")
    whole = pc.cast(pc.divide(a, 100), pa.string())
    frac = pc.utf8_lpad(
        pc.cast(pc.subtract(a, pc.multiply(pc.divide(a, 100), 100)), pa.string()), 2, "0"
    )
    return pc.binary_join_element_wise(sign, whole, ".", frac, "")


def _manifest_facts(batch: pa.RecordBatch, size: str, mtime: str) -> pa.Array:
    """``size=…;mtime_ns=…`` per row (:func:`.facts.facts_text`), null where none is valid."""
    if size not in batch.schema.names or mtime not in batch.schema.names:
        return pa.nulls(batch.num_rows, pa.string())
    return facts_text(batch.column(size), batch.column(mtime))


def _fast_rows(
    batch: pa.RecordBatch, root: SourceRoot
) -> tuple[np.ndarray, pa.Array, pa.Array, pa.Array, pa.Array, pa.Array]:
    """Rows that pass every manifest check in the common forms, found with Arrow compute.

    A row is fast when its year/lon/lat are numbers naming a tile centre
    (two decimals, not zero) and both paths are, or end (as a mirror URL) in,
    exactly the ``{year}/{name}/…`` paths its year/lon/lat name. Every other
    row goes through :func:`_rows_one_by_one`, which names its problem.
    Returns the mask and, for all rows, year, lon, lat, name, and the two facts.
    """
    n = batch.num_rows
    fail = np.zeros(n, dtype=bool)
    types = {f.name: f.type for f in batch.schema}
    numeric = all(
        pa.types.is_integer(types[c]) or pa.types.is_floating(types[c]) for c in ("lon", "lat")
    ) and pa.types.is_integer(types["year"])
    strings = all(pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])
                  for c in ("grid_path", "scales_path"))  # fmt: skip
    if not (numeric and strings):
        return fail, *(pa.nulls(n) for _ in range(5))  # type: ignore[return-value]
    year = pc.cast(batch.column("year"), pa.int32())
    lon = pc.cast(batch.column("lon"), pa.float64())
    lat = pc.cast(batch.column("lat"), pa.float64())
    lon_h = pc.round(pc.multiply(lon, 100.0))
    lat_h = pc.round(pc.multiply(lat, 100.0))
    lon_i = pc.cast(lon_h, pa.int64(), safe=False)
    lat_i = pc.cast(lat_h, pa.int64(), safe=False)
    ok = pc.and_(pc.is_valid(year), pc.and_(pc.is_finite(lon), pc.is_finite(lat)))
    ok = pc.and_(ok, pc.and_(pc.less_equal(pc.abs(lon), 180.0), pc.less_equal(pc.abs(lat), 90.0)))
    # Two decimals exactly and not zero, so the text of the hundredths is tile_name's.
    for v, vh in ((lon, lon_h), (lat, lat_h)):
        off = pc.abs(pc.subtract(pc.multiply(v, 100.0), vh))
        ok = pc.and_(ok, pc.and_(pc.less(off, 1e-6), pc.not_equal(vh, 0.0)))
    ok = pc.fill_null(ok, False)
    name = pc.binary_join_element_wise(
        "grid_", _hundredths_text(lon_i), "_", _hundredths_text(lat_i), ""
    )
    prefix = pc.binary_join_element_wise(pc.cast(year, pa.string()), "/", name, "/", name, "")
    for column, suffix in (("grid_path", ".npy"), ("scales_path", "_scales.npy")):
        path = pc.cast(batch.column(column), pa.string())
        expect = pc.binary_join_element_wise(prefix, suffix, "")
        live = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
        ok = pc.and_(ok, same_paths(path, expect, live, year))
    facts_emb = _manifest_facts(batch, "grid_size", "grid_mtime")
    facts_sca = _manifest_facts(batch, "scales_size", "scales_mtime")
    mask = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    return (
        mask,
        year,
        lon,
        lat,
        name,
        pa.StructArray.from_arrays([facts_emb, facts_sca], ["emb", "scales"]),
    )


def _rows_one_by_one(
    batch: pa.RecordBatch,
    rows: np.ndarray,
    number: np.ndarray,
    root: SourceRoot,
    good: list[tuple[int, int, str, float, float, str | None, str | None]],
    failures: list[tuple[int, Failure]],
    want_years: set[int] | None,
    want_zones: set[int] | None,
) -> None:
    """Check the given rows one by one, naming each refusal (rare rows only)."""
    if rows.size == 0:
        return
    idx = pa.array(rows)
    cols = {c: batch.column(c).take(idx).to_pylist() for c in MANIFEST_COLUMNS}
    facts = {}
    for key, size, mtime in (("emb", "grid_size", "grid_mtime"),
                             ("scales", "scales_size", "scales_mtime")):  # fmt: skip
        facts[key] = _manifest_facts(batch, size, mtime).take(idx).to_pylist()
    for k, (year, lon, lat, grid, scales) in enumerate(
        zip(*(cols[c] for c in MANIFEST_COLUMNS), strict=True)
    ):
        row = int(number[rows[k]])
        where = grid if isinstance(grid, str) else None
        try:
            year = int(year)
            lon = float(lon)
            lat = float(lat)
        except (TypeError, ValueError):
            failures.append((row, Failure(
                None, None, where, f"manifest row has no year/lon/lat: {year!r}, {lon!r}, {lat!r}"
            )))  # fmt: skip
            continue
        if not is_valid_lonlat(lon, lat):
            failures.append((row, Failure(
                year, None, where, f"manifest row has invalid coordinates lon={lon}, lat={lat}"
            )))  # fmt: skip
            continue
        if not wanted(year, lon, want_years, want_zones):
            continue
        name = tile_name(lon, lat)
        if not isinstance(grid, str) or not isinstance(scales, str):
            failures.append(
                (row, Failure(year, name, where, "manifest row lacks grid_path or scales_path"))
            )
            continue
        try:
            emb = rebase(grid, root)
            sca = rebase(scales, root)
        except ValueError as exc:
            failures.append((row, Failure(year, name, grid, str(exc))))
            continue
        expect_emb, expect_sca = source_paths(year, name)
        if (emb, sca) != (expect_emb, expect_sca):
            failures.append((row, Failure(
                year,
                name,
                grid,
                f"manifest paths {emb!r}, {sca!r} do not match the row's year/lon/lat, which "
                f"name {expect_emb!r}, {expect_sca!r}",
            )))  # fmt: skip
            continue
        good.append((row, year, name, lon, lat, facts["emb"][k], facts["scales"][k]))


def _inventory_batch(
    batch: pa.RecordBatch,
    number: np.ndarray,
    root: SourceRoot,
    parts: list[pa.Table],
    slow_good: list[tuple[int, int, str, float, float, str | None, str | None]],
    failures: list[tuple[int, Failure]],
    want_years: set[int] | None,
    want_zones: set[int] | None,
) -> None:
    """Validate one batch of manifest rows (``number``: each one's row in the manifest)."""
    mask, year, lon, lat, name, facts = _fast_rows(batch, root)
    _rows_one_by_one(batch, np.flatnonzero(~mask), number, root, slow_good, failures,
                     want_years, want_zones)  # fmt: skip
    sel = pa.array(mask)
    if mask.any():
        lon_f = pc.filter(lon, sel)
        zone = pa.array(utm_zone(lon_f.to_numpy()).astype(np.int16))
        part = pa.table(
            {
                "row": pa.array(number[mask], pa.int64()),
                "year": pc.filter(year, sel),
                "name": pc.filter(name, sel),
                "lon": lon_f,
                "lat": pc.filter(lat, sel),
                "zone": zone,
                "emb_listed": pc.filter(pc.struct_field(facts, "emb"), sel),
                "scales_listed": pc.filter(pc.struct_field(facts, "scales"), sel),
            }
        )
        parts.append(part.filter(wanted_mask(part, want_years, want_zones)))
    # The batch's intermediate columns are freed; give their pages back, so a
    # whole-archive manifest costs the inventory, not the allocator's cache.
    pa.default_memory_pool().release_unused()


def manifest_inventory(
    manifest: pa.Table | pq.ParquetFile,
    root: SourceRoot,
    *,
    years: Iterable[int] | None = None,
    zones: Iterable[int] | None = None,
    rows: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
) -> tuple[pa.Table, list[Failure]]:
    """Tiles listed by an upstream manifest, as an inventory table
    (:data:`~tessera_vz.indexer.inventory.INVENTORY_SCHEMA`).

    Rows with missing coordinates, paths outside SOURCE, paths that disagree
    with the row's lon/lat, or duplicates are refused with a reason (in row
    order). Paths may be relative to the tree or URLs of any mirror: only
    their ``{year}/grid_…/file`` tail is kept, rebased onto ``root``.

    ``manifest`` may be an open Parquet file (:func:`open_manifest`): it is
    then read a batch of rows at a time, only the columns needed, so memory
    holds the inventory, not the manifest; with ``years``, only the row
    groups and rows of those years are checked (:mod:`.manifest_scan`).
    ``rows`` keeps the rows of one dataset (:func:`.datasets.row_filter`)
    before any check.
    """
    is_file = isinstance(manifest, pq.ParquetFile)
    names = manifest.schema_arrow.names if is_file else manifest.column_names
    missing = [c for c in MANIFEST_COLUMNS if c not in names]
    if missing:
        raise ConfigurationError(
            f"manifest lacks columns {missing}; found {names}. Expected the "
            "upstream TESSERA manifest.parquet schema"
        )
    want_years = set(years) if years is not None else None
    want_zones = set(zones) if zones is not None else None
    extra = ("version", "variant") if rows is not None else ()
    keep = [c for c in (*MANIFEST_COLUMNS, *MANIFEST_FACTS, *extra) if c in names]
    parts: list[pa.Table] = []
    slow_good: list[tuple[int, int, str, float, float, str | None, str | None]] = []
    failures: list[tuple[int, Failure]] = []
    try:
        for number, batch in manifest_batches(manifest, keep, _BATCH_ROWS, want_years, rows):
            _inventory_batch(batch, number, root, parts, slow_good, failures,
                             want_years, want_zones)  # fmt: skip
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigurationError(f"cannot read manifest rows: {exc}") from None
    if slow_good:
        r, y, nm, lo, la, fe, fs = zip(*slow_good, strict=True)
        parts.append(pa.table({
            "row": pa.array(r, pa.int64()), "year": pa.array(y, pa.int32()),
            "name": pa.array(nm, pa.string()), "lon": pa.array(lo, pa.float64()),
            "lat": pa.array(la, pa.float64()),
            "zone": pa.array(utm_zone(np.asarray(lo)).astype(np.int16)),
            "emb_listed": pa.array(fe, pa.string()), "scales_listed": pa.array(fs, pa.string()),
        }))  # fmt: skip
    tiles = _first_of_duplicates(parts, failures)
    log.info("manifest lists %d tiles (%d rows refused)", tiles.num_rows, len(failures))
    return tiles, [f for _, f in sorted(failures, key=lambda rf: rf[0])]


def _first_of_duplicates(parts: list[pa.Table], failures: list[tuple[int, Failure]]) -> pa.Table:
    """Keep the first row of each (year, tile); refuse the others by name.

    Tiles are keyed by integers (the year and the tile name's index among the
    distinct names), so finding duplicates in millions of rows is a numpy
    sort, not a Python loop.
    """
    if not parts:
        return INVENTORY_SCHEMA.empty_table()
    t = pa.concat_tables(parts)
    row = t.column("row").to_numpy()
    names = t.column("name")
    index = pc.index_in(names, value_set=pc.unique(names)).to_numpy().astype(np.int64)
    key = (t.column("year").to_numpy().astype(np.int64) << 32) | index
    order = np.lexsort((row, key))
    later = np.zeros(t.num_rows, dtype=bool)
    later[order[1:]] = key[order[1:]] == key[order[:-1]]
    del order, key, index
    if later.any():
        dup = t.filter(pa.array(later))
        for r, year, name in zip(dup.column("row").to_pylist(), dup.column("year").to_pylist(),
                                 dup.column("name").to_pylist(), strict=True):  # fmt: skip
            emb, _ = source_paths(year, name)
            failures.append(
                (
                    r,
                    Failure(
                        year, name, emb, "duplicate manifest row for this tile; kept the first"
                    ),
                )
            )
    out = t.select(INVENTORY_SCHEMA.names)
    if later.any() or np.any(np.diff(row) < 0):
        # Manifest row order (rows checked one by one were appended last); in
        # the common case (no duplicates, no odd rows) the parts are used as
        # they are, without a copy.
        keep = np.flatnonzero(~later)
        out = out.take(pa.array(keep[np.argsort(row[keep], kind="stable")]))
    del t
    pa.default_memory_pool().release_unused()
    return out.cast(INVENTORY_SCHEMA)


def from_manifest(
    table: pa.Table,
    root: SourceRoot,
    *,
    years: Iterable[int] | None = None,
    zones: Iterable[int] | None = None,
) -> tuple[list[TileSource], list[Failure]]:
    """:func:`manifest_inventory` as a list of :class:`TileSource` (small manifests)."""
    tiles, failures = manifest_inventory(table, root, years=years, zones=zones)
    return tile_sources(tiles), failures
