"""What a tile's data is: its virtual chunk references and its row of the tiles table.

Each tile's chunk references go in with one bulk ``set_virtual_refs_arr``
call per array (every chunk a contiguous run of whole rows of its file,
located relative to the source root's virtual chunk container and carrying
the file's checksum, so a read of a changed file fails instead of returning
other bytes). The year's ``tiles`` table holds one row per tile: the facts a
reader needs to find and read tiles without listing groups.
"""

from __future__ import annotations

from typing import Any

import icechunk as ic

from tessera_vz.core.layout import EMBEDDINGS, SCALES
from tessera_vz.core.repos import container_name
from tessera_vz.core.table import COLUMNS, table_dataset
from tessera_vz.indexer.parser import row_chunk_ranges
from tessera_vz.indexer.record import TileRecord
from tessera_vz.indexer.roots import SourceRoot, checksum_value


def set_references(store: ic.IcechunkStore, r: TileRecord, root: SourceRoot, budget: int) -> None:
    """Point the tile's ``embeddings`` and ``scales`` chunks at its files, in bulk."""
    cname = container_name(root.url)
    for array, header, path, checksum in (
        (EMBEDDINGS, r.emb, r.source.emb_path, r.emb_checksum),
        (SCALES, r.scales, r.source.scales_path, r.scales_checksum),
    ):
        grid, offsets, lengths = row_chunk_ranges(header, budget)
        failed = store.set_virtual_refs_arr(
            f"{r.name}/{array}",
            grid,
            [f"vcc://{cname}/{path}"] * len(offsets),
            offsets,
            lengths,
            validate_containers=True,
            checksum=checksum_value(checksum),
        )
        if failed:
            raise RuntimeError(f"icechunk refused {len(failed)} references of {r.name}/{array}")


def record_row(r: TileRecord, root: SourceRoot) -> dict[str, Any]:
    """The tiles-table row of a record."""
    return {
        "lon": r.source.lon,
        "lat": r.source.lat,
        "zone": r.zone,
        "epsg": r.epsg,
        "left": r.left,
        "top": r.top,
        "height": r.height,
        "width": r.width,
        "bands": r.bands,
        "emb_path": r.source.emb_path,
        "scales_path": r.source.scales_path,
        "emb_offset": r.emb.data_offset,
        "scales_offset": r.scales.data_offset,
        "emb_size": r.emb_size,
        "scales_size": r.scales_size,
        "emb_checksum": r.emb_checksum,
        "scales_checksum": r.scales_checksum,
        "emb_chunk_rows": r.emb_chunk_rows,
        "scales_chunk_rows": r.scales_chunk_rows,
        "scales_descr": r.scales.dtype.str,
        "scales_ndim": len(r.scales.shape),
        "source": root.url,
        "emb_listed": r.source.emb_listed,
        "scales_listed": r.source.scales_listed,
    }


def write_table(
    store: ic.IcechunkStore, rows: dict[str, dict[str, Any]], attrs: dict[str, Any]
) -> None:
    """Replace the year's tiles table with ``rows`` (the complete table, by tile name)."""
    names = sorted(rows)
    columns = {c: [rows[n][c] for n in names] for c in COLUMNS}
    table = table_dataset(names, columns, dict(attrs))
    table.to_zarr(store, group="tiles", mode="w", consolidated=False, zarr_format=3)
