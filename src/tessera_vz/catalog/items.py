"""A unit's STAC Items written in bulk: batches of rows, one folder swapped in whole.

A global year is ~1.8 M Items in 60 units of ~30,000. Building every Item
of a unit as a dict, writing each file through its own temporary name and
rename, and converting the dicts with stac-geoparquet (which deep-copies
each) cost ~2.5 ms per Item and ~0.5 GB per 3,000-Item unit. Here a unit
goes :data:`BATCH` rows at a time: the batch's Items are built, encoded
(orjson), written as plain files into a hidden folder beside the unit's
(on a few threads: file creation is the kernel's time, not Python's), and
dropped; the batch's stac-geoparquet rows are built as columns, as
``--items geoparquet`` builds them (:func:`~.bulk.items_columns`), not
from the dicts. An Item's geometry and bbox come from arrays built once per
batch (:meth:`~.tables.UnitRows.geojson`). The unit's Catalog goes in last
and the folder replaces the old one in one rename
(:func:`~tessera_vz.core.files.atomic_path`), so a reader sees the old
unit or the new one, never a mix, and Items of vanished tiles go with the
old folder.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from tessera_vz.catalog import stac
from tessera_vz.catalog.assemble import part_writer
from tessera_vz.catalog.bulk import items_columns
from tessera_vz.catalog.tables import UnitRows, UnitVersion
from tessera_vz.core.files import atomic_path, inside

#: Rows whose Items are held at once (bounds a unit's memory whatever its size).
BATCH = 4096
#: Threads writing Item files.
WRITERS = 4


def _write(job: tuple[Path, bytes]) -> None:
    path, data = job
    with open(path, "xb") as f:
        f.write(data)


def write_unit_items(
    stac_dir: Path, unit: UnitVersion, rows: UnitRows, part: Path, collection_id: str
) -> tuple[int, int]:
    """Write a unit's Item files and Catalog, and its stac-geoparquet ``part``.

    Returns (Items written, Item files of the previous run deleted). Tile
    names become file names: only names of the layout's grammar pass
    (:func:`~tessera_vz.core.layout.check_tile_name`: no separator, no dot
    segment), in a folder checked once to lie inside ``stac_dir``.
    """
    folder = inside(stac_dir, *stac.unit_dir(unit.zone, unit.year).split("/"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    before = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
    schema = stac.items_schema(collection_id)
    names: list[str] = []
    n = rows.table.num_rows
    with (
        atomic_path(folder, kind="staged", mode=0o755) as staged,
        ThreadPoolExecutor(WRITERS) as pool,
        part_writer(part, schema) as staged_part,
    ):
        staged.mkdir()
        for start in range(0, n, BATCH):
            batch_rows = rows.slice(start, min(n, start + BATCH))
            items = stac.item_dicts(batch_rows, unit, collection_id)
            # Names were checked with the rest of each record (build_unit, refused_rows).
            batch = [it["properties"]["tessera:tile"] for it in items]
            jobs = [(staged / f"{name}.json", orjson.dumps(it, option=orjson.OPT_SERIALIZE_NUMPY))
                    for name, it in zip(batch, items, strict=True)]  # fmt: skip
            written = pool.map(_write, jobs)
            # The same rows as --items geoparquet stages, built as columns, not from the dicts.
            staged_part.write_table(items_columns(batch_rows, unit, collection_id))
            list(written)  # the files of this batch are on disk (or its error is raised)
            names += batch
            del items, jobs
        catalog = stac.unit_catalog(unit, names)
        _write((staged / stac.UNIT_CATALOG, orjson.dumps(catalog)))
    kept = {f"{name}.json" for name in names}
    return n, len({b for b in before if b.startswith("grid_") and b.endswith(".json")} - kept)
