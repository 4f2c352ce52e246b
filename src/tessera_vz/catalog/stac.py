"""The static STAC catalog of an index: one Collection, one Item per tile-year.

Files under ``DIR/stac/`` (all links relative, so the folder can be
published anywhere as it is)::

    collection.json                  the Collection: extent, summaries, units
    items.parquet                    every Item, as stac-geoparquet
    utm31/2024/catalog.json          one Catalog per (zone, year), child of the Collection
    utm31/2024/grid_0.85_49.95.json  its Items

A (zone, year) is the unit of change of an index (one branch of one
repository), so it is also the unit of rewriting here: a Collection listing
millions of items directly would be rewritten whenever any unit changed.

Items follow STAC 1.1 with the projection extension v2.0.0 (``proj:code``,
``proj:shape``, ``proj:transform``, ``proj:bbox`` of the tile's own UTM
grid), a datetime interval covering the year, and three assets: the
Icechunk repository (with what a client needs to open the tile: group,
snapshot id, tag, virtual chunk containers to authorise) and the two source
``.npy`` files. The repository's href is relative to the Item (a local index
beside the catalog: ``../../../../index/utm31.icechunk``), or a URL (an index
on S3 or a web server, or ``--base-url``), never a local absolute path.
Items are built as plain dicts (pystac objects cost far more per item and
add nothing when writing); tests read them back with pystac.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import xarray as xr

from tessera_vz.catalog.tables import UnitRows, UnitVersion, unit_rows
from tessera_vz.core.dataset import Dataset
from tessera_vz.core.files import atomic_write_bytes
from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import tile_name

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
COLLECTION_ID = "tessera-embeddings"
COLLECTION_FILE = "collection.json"
ITEMS_PARQUET = "items.parquet"
UNIT_CATALOG = "catalog.json"
#: Media type of an Icechunk repository, as STAC tools that open Icechunk assets use it.
ICECHUNK_MEDIA_TYPE = "application/vnd.zarr+icechunk"
NPY_MEDIA_TYPE = "application/x-npy"


#: Folders between the catalog's root and an Item file (``stac/utm31/2024/``), and
#: ``items.parquet`` (``stac/``): a relative index href climbs that many.
ITEM_DEPTH, PARQUET_DEPTH = 3, 1


def catalog_relative(href: str, depth: int) -> str:
    """``href`` (relative to the catalog's root, or a URL) as seen ``depth`` folders below it."""
    if "://" in href or href.startswith("/"):
        return href
    return "../" * depth + href


def rebase_index(
    items: Sequence[dict[str, Any]], unit: UnitVersion, depth: int
) -> list[dict[str, Any]]:
    """Items whose ``index`` asset is relative to a file ``depth`` folders below the root.

    Item files resolve relative hrefs from their own folder (STAC's rule);
    ``items.parquet`` rows are read from ``stac/``, so theirs climb less.
    """
    href = catalog_relative(unit.repo, depth)
    return [
        {**it, "assets": {**it["assets"], "index": {**it["assets"]["index"], "href": href}}}
        for it in items
    ]


def unit_dir(zone: int, year: int) -> str:
    """Folder of a unit's catalog and items, relative to ``DIR/stac``."""
    return f"utm{int(zone):02d}/{int(year)}"


def item_id(tile: str, year: int) -> str:
    """Item id of a tile-year, unique in the collection: ``grid_0.85_49.95-2024``."""
    return f"{tile}-{int(year)}"


def year_interval(year: int) -> tuple[str, str]:
    """``start_datetime`` and ``end_datetime`` (inclusive) of a calendar year, UTC."""
    return f"{int(year)}-01-01T00:00:00Z", f"{int(year)}-12-31T23:59:59Z"


def _links_to_root(depth: int) -> str:
    return "../" * depth + COLLECTION_FILE


def index_asset(unit: UnitVersion, depth: int, group: Any) -> dict[str, Any]:
    """The ``index`` asset of a unit's Items, ``depth`` folders below the root.

    ``group`` is the tile's name (or, in bulk, the column of names).
    """
    return {
        "href": catalog_relative(unit.repo, depth),
        "type": ICECHUNK_MEDIA_TYPE,
        "title": f"Icechunk repository of UTM zone {unit.zone} (virtual references)",
        "roles": ["data", "references"],
        "icechunk:group": group,
        "icechunk:snapshot_id": unit.snapshot,
        "icechunk:tag": unit.tag,
        "icechunk:virtual_chunk_containers": list(unit.containers),
    }


def item_dicts(
    rows: UnitRows, unit: UnitVersion, collection_id: str = COLLECTION_ID
) -> list[dict[str, Any]]:
    """The STAC Items of one unit's rows, in row order."""
    t = rows.table.drop_columns(["geometry", "bbox"]).to_pydict()
    geometries = rows.geojson()
    bboxes = rows.stac_bboxes().tolist()
    start, end = year_interval(unit.year)
    root = _links_to_root(2)
    items = []
    for i, tile in enumerate(t["tile"]):
        left, bottom, right, top = (
            t[k][i] for k in ("utm_left", "utm_bottom", "utm_right", "utm_top")
        )
        properties: dict[str, Any] = {
            "datetime": None,
            "start_datetime": start,
            "end_datetime": end,
            "proj:code": f"EPSG:{t['epsg'][i]}",
            "proj:shape": [t["height"][i], t["width"][i]],
            "proj:transform": [10.0, 0.0, left, 0.0, -10.0, top],
            "proj:bbox": [left, bottom, right, top],
            "tessera:tile": tile,
            "tessera:year": unit.year,
            "tessera:zone": unit.zone,
            "tessera:lon": t["lon"][i],
            "tessera:lat": t["lat"][i],
            "tessera:bands": t["bands"][i],
            "tessera:branch": unit.branch,
            "tessera:tag": unit.tag,
            "tessera:snapshot": unit.snapshot,
            **rows.dataset,  # which dataset (version, variant), read from which source
        }
        assets = {
            "index": index_asset(unit, ITEM_DEPTH, tile),
            "embeddings": {
                "href": t["emb_url"][i],
                "type": NPY_MEDIA_TYPE,
                "title": "int8 embeddings (height, width, bands), source .npy",
                "roles": ["data", "source"],
                "tessera:size": t["emb_size"][i],
                "tessera:checksum": t["emb_checksum"][i],
            },
            "scales": {
                "href": t["scales_url"][i],
                "type": NPY_MEDIA_TYPE,
                "title": "float32 scales (height, width), source .npy",
                "roles": ["data", "source"],
                "tessera:size": t["scales_size"][i],
                "tessera:checksum": t["scales_checksum"][i],
            },
        }
        items.append(
            {
                "type": "Feature",
                "stac_version": STAC_VERSION,
                "stac_extensions": [PROJECTION_EXTENSION],
                "id": item_id(tile, unit.year),
                "collection": collection_id,
                "geometry": geometries[i],
                "bbox": bboxes[i],
                "properties": properties,
                "links": [
                    {"rel": "root", "href": root, "type": "application/json"},
                    {"rel": "parent", "href": f"./{UNIT_CATALOG}", "type": "application/json"},
                    {"rel": "collection", "href": root, "type": "application/json"},
                ],
                "assets": assets,
            }
        )
    return items


def unit_catalog(unit: UnitVersion, tiles: Sequence[str]) -> dict[str, Any]:
    """The Catalog of one (zone, year), linking the Items of ``tiles``; records its snapshot."""
    root = _links_to_root(2)
    links = [
        {"rel": "root", "href": root, "type": "application/json"},
        {"rel": "parent", "href": root, "type": "application/json"},
    ]
    links += [
        {"rel": "item", "href": f"./{tile}.json", "type": "application/geo+json"} for tile in tiles
    ]
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": f"utm{unit.zone:02d}-{unit.year}",
        "title": f"UTM zone {unit.zone}, {unit.year}",
        "description": (
            f"Tiles of {unit.year} in UTM zone {unit.zone}, as indexed on branch "
            f"{unit.branch!r} at snapshot {unit.snapshot}"
            + (f" (tag {unit.tag})" if unit.tag else "")
        ),
        "tessera:zone": unit.zone,
        "tessera:year": unit.year,
        "tessera:snapshot": unit.snapshot,
        "tessera:tag": unit.tag,
        "tessera:tiles": len(tiles),
        "links": links,
    }


def collection(
    units: Iterable[dict[str, Any]],
    bbox: Sequence[float] | None,
    epsg_codes: Iterable[int],
    collection_id: str = COLLECTION_ID,
) -> dict[str, Any]:
    """The Collection: extent and summaries of every unit, children = unit catalogs.

    ``units`` are the state records of the units (zone, year, snapshot, tag,
    tiles); they are also listed in ``tessera:units``, so a client sees which
    index version every part of the catalog shows.
    """
    recs = sorted(units, key=lambda u: (u["zone"], u["year"]))
    years = sorted({int(u["year"]) for u in recs})
    zones = sorted({int(u["zone"]) for u in recs})
    interval = (
        [[year_interval(years[0])[0], year_interval(years[-1])[1]]] if years else [[None, None]]
    )
    links = [{"rel": "root", "href": f"./{COLLECTION_FILE}", "type": "application/json"}]
    links += [
        {"rel": "child", "href": f"./{unit_dir(u['zone'], u['year'])}/{UNIT_CATALOG}",
         "type": "application/json", "title": f"UTM zone {u['zone']}, {u['year']}"}
        for u in recs
    ]  # fmt: skip
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION_EXTENSION],
        "id": collection_id,
        "title": "TESSERA embeddings (tessera-vz index)",
        "description": (
            "TESSERA geospatial embedding tiles (128-band int8 embeddings and float32 scales, "
            "10 m pixels in each tile's UTM zone) as indexed by tessera-vz: one item per "
            "tile-year, readable as Zarr v3 through the zone's Icechunk repository (virtual "
            "references to the original .npy files) or from the .npy files directly."
        ),
        "license": "other",
        "keywords": ["TESSERA", "embeddings", "Icechunk", "Zarr"],
        "extent": {
            "spatial": {"bbox": [list(bbox) if bbox is not None else [-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": interval},
        },
        "summaries": {
            "tessera:year": years,
            "tessera:zone": zones,
            "proj:code": [f"EPSG:{c}" for c in sorted(set(epsg_codes))],
        },
        "tessera:units": [
            {k: u[k] for k in ("zone", "year", "snapshot", "tag", "tiles")} for u in recs
        ],
        "links": links,
        "assets": {
            "items": {
                "href": f"./{ITEMS_PARQUET}",
                "type": "application/vnd.apache.parquet",
                "title": "Every item of this collection (stac-geoparquet)",
                "roles": ["metadata"],
            },
            "tiles": {
                "href": "../tiles.parquet",
                "type": "application/vnd.apache.parquet",
                "title": "One row per tile-year with its footprint (GeoParquet 1.1)",
                "roles": ["metadata"],
            },
            "coverage": {
                "href": "../coverage.png",
                "type": "image/png",
                "title": "Indexed tiles per year",
                "roles": ["overview"],
            },
        },
    }


def items_table(items: Sequence[dict[str, Any]]) -> pa.Table:
    """Items as stac-geoparquet Arrow tables hold them (properties as top-level columns)."""
    from stac_geoparquet.arrow import parse_stac_items_to_arrow

    return parse_stac_items_to_arrow(items).read_all()


@lru_cache(maxsize=4)
def items_schema(collection_id: str = COLLECTION_ID) -> pa.Schema:
    """The Arrow schema of ``items.parquet``, inferred from a template Item with every field set.

    stac-geoparquet infers types from values, so a unit whose Items all lack
    a tag would come out with a ``null`` column; casting every unit to this
    one schema lets units written by different runs share one file.
    """
    grid = tile_grids(3.05, 0.05)
    name = tile_name(3.05, 0.05)
    one = {
        "lon": grid.lon, "lat": grid.lat, "zone": grid.zone, "epsg": grid.epsg,
        "left": grid.left, "top": grid.top, "height": grid.height, "width": grid.width,
        "bands": [128], "source": ["https://example.org/tessera/"],
        "emb_path": [f"2000/{name}/{name}.npy"], "scales_path": [f"2000/{name}/{name}_scales.npy"],
        "emb_size": [1], "scales_size": [1], "emb_checksum": ["x"], "scales_checksum": ["x"],
    }  # fmt: skip
    table = xr.Dataset({k: ("tile", np.asarray(v)) for k, v in one.items()},
                       coords={"tile": [name]},
                       attrs=Dataset("1.1", "cambridge").attrs("https://example.org/"))  # fmt: skip
    unit = UnitVersion(
        31, 2000, "0" * 20, "2000-v1", "/index/utm31.icechunk", ("https://example.org/",)
    )
    items = item_dicts(unit_rows(table, unit), unit, collection_id)
    return items_table(items).schema.remove_metadata()


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a JSON document atomically (a reader never sees half a file).

    orjson, because a unit's Items are thousands of documents and the
    standard encoder was most of a unit's build time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def unit_snapshot(stac_dir: Path, zone: int, year: int) -> str | None:
    """The snapshot a unit's STAC files were written from, or ``None`` if absent or unreadable."""
    path = stac_dir / unit_dir(zone, year) / UNIT_CATALOG
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    snap = doc.get("tessera:snapshot")
    return snap if isinstance(snap, str) else None
