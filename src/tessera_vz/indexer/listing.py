"""Tiles found by listing a local or S3 tree (``{year}/grid_…/grid_….npy``).

One listing per year directory, through obstore; each object's size and
ETag (or modification time) become the tile's ``emb_listed``/``scales_listed``
facts. A scales file without its embeddings file is refused by name; a
missing scales file is left to the header probe, which names it (404).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import obstore
import pyarrow as pa

from tessera_vz.core.layout import parse_tile_name, source_paths
from tessera_vz.indexer.inventory import TileSource, table_of, tile_sources, wanted
from tessera_vz.indexer.report import Failure

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import ObjectStore

log = logging.getLogger(__name__)

#: A tile file under a year directory: year, tile name, and ``_scales`` for scales.
_FILE_RE = re.compile(r"^(\d{4})/(grid_-?\d+\.\d\d_-?\d+\.\d\d)/\2(_scales)?\.npy\Z")


def _listed_text(meta: ObjectMeta) -> str:
    """A listing's facts about one object: size and ETag, else its modification time."""
    etag = meta.get("e_tag")
    stamp = f"etag={etag}" if etag else f"modified={meta['last_modified'].isoformat()}"
    return f"size={int(meta['size'])};{stamp}"


def listing_inventory(
    store: ObjectStore,
    *,
    years: Iterable[int] | None = None,
    zones: Iterable[int] | None = None,
) -> tuple[pa.Table, list[Failure]]:
    """Tiles found by listing a local or S3 tree (``{year}/grid_…/grid_….npy``)."""
    want_years = set(years) if years is not None else None
    want_zones = set(zones) if zones is not None else None
    top = obstore.list_with_delimiter(store, None)
    year_dirs = sorted(p.rstrip("/") for p in top["common_prefixes"] if p.rstrip("/").isdigit())
    found: dict[tuple[int, str], dict[str, str]] = {}
    for ydir in year_dirs:
        year = int(ydir)
        if want_years is not None and year not in want_years:
            continue
        for batch in obstore.list(store, prefix=f"{ydir}/", chunk_size=10_000):
            for meta in batch:
                m = _FILE_RE.match(meta["path"])
                if m:
                    kind = "scales" if m.group(3) else "emb"
                    found.setdefault((year, m.group(2)), {})[kind] = _listed_text(meta)
    rows: list[tuple[int, str, float, float, str, str]] = []
    failures: list[Failure] = []
    for (year, name), kinds in sorted(found.items()):
        lon, lat = parse_tile_name(name)
        if not wanted(year, lon, want_years, want_zones):
            continue
        emb, _ = source_paths(year, name)
        if "emb" not in kinds:
            failures.append(
                Failure(year, name, emb, "embeddings file is missing (only the scales file exists)")
            )
            continue
        # A missing scales file is left to the probe, which names it (404).
        rows.append((year, name, lon, lat, kinds["emb"], kinds.get("scales", "")))
    log.info("listing found %d tiles", len(rows))
    return table_of(rows), failures


def from_listing(
    store: ObjectStore,
    *,
    years: Iterable[int] | None = None,
    zones: Iterable[int] | None = None,
) -> tuple[list[TileSource], list[Failure]]:
    """:func:`listing_inventory` as a list of :class:`TileSource`."""
    tiles, failures = listing_inventory(store, years=years, zones=zones)
    return tile_sources(tiles), failures
