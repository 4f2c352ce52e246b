"""A unit's Items as stac-geoparquet columns only (``catalog --items geoparquet``).

At archive size (a global year is ~1.8 M Items) the default mode's cost is
per Item: a Python dict (~180 us), a JSON file (130-225 us) and an Arrow
row (~90 us), about 17-38 minutes for a year. Here a unit's Items are never
dicts: every column of ``stac/items.parquet`` is computed from the columns
of the unit's ``tiles.parquet`` rows (:class:`~.tables.UnitRows`, whose
footprints are already vectorised) with Arrow and numpy; values shared by a
unit's Items (links, titles, the snapshot) are one Arrow value repeated by
``take``. The rows equal what the default mode writes to ``items.parquet``
(same ids, geometries, properties, assets, links), in the same schema
(:func:`~.stac.items_schema`), so readers of that file see no difference.

No Item files are written; the unit keeps its ``catalog.json`` (the
Collection's children and the incremental plan rely on it), which names its
tile count and links to ``items.parquet`` instead of listing Items.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tessera_vz.catalog import stac
from tessera_vz.catalog.assemble import write_part
from tessera_vz.catalog.tables import UnitRows, UnitVersion
from tessera_vz.core.files import atomic_path, inside
from tessera_vz.core.geoparquet import BBOX_FIELDS

#: The two ways a catalog run writes Items (``--items``).
ITEMS_MODES = ("json", "geoparquet")


def _const(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    """``value`` repeated ``n`` times as an Arrow array of ``type_`` (nested types included)."""
    return pa.array([value], type=type_).take(np.zeros(n, dtype=np.int64))


def _column(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    """A column of ``type_``: an array (cast), a struct of such (a mapping), or a constant."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if isinstance(value, pa.Array):
        return value if value.type == type_ else value.cast(type_)
    if isinstance(value, np.ndarray):
        return pa.array(value, type=type_)
    if isinstance(value, Mapping) and pa.types.is_struct(type_):
        fields = [type_.field(i) for i in range(type_.num_fields)]
        children = [_column(value.get(f.name), f.type, n) for f in fields]
        return pa.StructArray.from_arrays(children, fields=fields)
    return _const(value, type_, n)


def _lists(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and values of fixed-length lists whose i-th list is ``[c[i] for c in columns]``."""
    k = len(columns)
    n = columns[0].shape[0]
    offsets = np.arange(0, k * n + 1, k, dtype=np.int32)
    return offsets, np.stack(columns, axis=1).reshape(-1)


def _list_column(type_: pa.DataType, *columns: np.ndarray) -> pa.Array:
    offsets, values = _lists(*columns)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(values, type=type_.value_type), type=type_
    )


def _bboxes(rows: UnitRows) -> pa.Array:
    """STAC ``bbox`` of each footprint, a struct column (:meth:`.UnitRows.stac_bboxes`)."""
    env = rows.stac_bboxes()
    return pa.StructArray.from_arrays([pa.array(env[:, i]) for i in range(4)],
                                      names=list(BBOX_FIELDS))  # fmt: skip


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def items_columns(
    rows: UnitRows, unit: UnitVersion, collection_id: str = stac.COLLECTION_ID
) -> pa.Table:
    """The stac-geoparquet rows of a unit's Items, computed column by column from ``rows``.

    Equal, row by row, to what the default mode writes for the same unit
    (its Item files, with the ``index`` asset rebased); its ``index`` asset is
    relative to ``stac/``, where ``items.parquet`` lives.
    """
    schema = stac.items_schema(collection_id)
    t = rows.table
    n = t.num_rows
    tile = t["tile"]
    start, end = stac.year_interval(unit.year)
    root = "../" * 2 + stac.COLLECTION_FILE
    f64 = {k: t[k].to_numpy() for k in ("utm_left", "utm_bottom", "utm_right", "utm_top")}
    source = {"type": stac.NPY_MEDIA_TYPE, "roles": ["data", "source"]}
    values: dict[str, Any] = {
        "type": "Feature",
        "stac_version": stac.STAC_VERSION,
        "stac_extensions": [stac.PROJECTION_EXTENSION],
        "id": pc.binary_join_element_wise(tile, pa.scalar(str(int(unit.year))), "-"),
        "collection": collection_id,
        "geometry": t["geometry"],
        "bbox": _bboxes(rows),
        "links": [
            {"rel": "root", "href": root, "type": "application/json"},
            {"rel": "parent", "href": f"./{stac.UNIT_CATALOG}", "type": "application/json"},
            {"rel": "collection", "href": root, "type": "application/json"},
        ],
        "assets": {
            "index": stac.index_asset(unit, stac.PARQUET_DEPTH, tile),
            "embeddings": {
                **source,
                "href": t["emb_url"],
                "title": "int8 embeddings (height, width, bands), source .npy",
                "tessera:size": t["emb_size"],
                "tessera:checksum": t["emb_checksum"],
            },
            "scales": {
                **source,
                "href": t["scales_url"],
                "title": "float32 scales (height, width), source .npy",
                "tessera:size": t["scales_size"],
                "tessera:checksum": t["scales_checksum"],
            },
        },
        "datetime": None,
        "start_datetime": _when(start),
        "end_datetime": _when(end),
        "proj:code": pc.binary_join_element_wise(
            pa.scalar("EPSG:"), pc.cast(t["epsg"], pa.string()), ""
        ),
        "proj:shape": _list_column(
            schema.field("proj:shape").type, t["height"].to_numpy(), t["width"].to_numpy()
        ),
        "proj:transform": _list_column(
            schema.field("proj:transform").type,
            np.full(n, 10.0),
            np.zeros(n),
            f64["utm_left"],
            np.zeros(n),
            np.full(n, -10.0),
            f64["utm_top"],
        ),
        "proj:bbox": _list_column(
            schema.field("proj:bbox").type,
            f64["utm_left"],
            f64["utm_bottom"],
            f64["utm_right"],
            f64["utm_top"],
        ),
        "tessera:tile": tile,
        "tessera:year": unit.year,
        "tessera:zone": unit.zone,
        "tessera:lon": t["lon"],
        "tessera:lat": t["lat"],
        "tessera:bands": t["bands"],
        "tessera:branch": unit.branch,
        "tessera:tag": unit.tag,
        "tessera:snapshot": unit.snapshot,
        **rows.dataset,
    }
    columns = [_column(values.get(f.name), f.type, n) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def write_unit_parquet(
    stac_dir: Path, unit: UnitVersion, rows: UnitRows, part: Path, collection_id: str
) -> tuple[int, int]:
    """Stage a unit's stac-geoparquet ``part`` and replace its folder by its Catalog alone.

    Returns (Items written, Item files of a previous run deleted), as
    :func:`~.items.write_unit_items` does; Item files a default-mode run left
    go with the old folder.
    """
    folder = inside(stac_dir, *stac.unit_dir(unit.zone, unit.year).split("/"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    before = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
    # The names were checked with the rest of each record (build_unit, refused_rows).
    write_part(items_columns(rows, unit, collection_id), part)
    catalog = stac.unit_catalog(unit, [])
    catalog["tessera:tiles"] = rows.table.num_rows
    catalog["tessera:items"] = "geoparquet"
    catalog["links"].append(
        {"rel": "items", "href": "../../" + stac.ITEMS_PARQUET,
         "type": "application/vnd.apache.parquet", "title": "The Items, as stac-geoparquet"}
    )  # fmt: skip
    with atomic_path(folder, kind="staged", mode=0o755) as staged:
        staged.mkdir()
        (staged / stac.UNIT_CATALOG).write_bytes(orjson.dumps(catalog))
    return rows.table.num_rows, sum(
        1 for b in before if b.startswith("grid_") and b.endswith(".json")
    )
