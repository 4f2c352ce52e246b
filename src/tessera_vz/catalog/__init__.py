"""Catalog of an index: GeoParquet tiles table, static STAC (+ stac-geoparquet), coverage map.

``tessera-vz catalog STORE --out DIR`` (or :func:`build_catalog`) writes

- ``DIR/tiles.parquet``: GeoParquet 1.1, one row per tile-year with its footprint;
- ``DIR/stac/``: a static STAC 1.1 Collection, one Item per tile-year, and
  ``stac/items.parquet`` (stac-geoparquet);
- ``DIR/coverage.png``: indexed tiles per year;
- ``DIR/catalog-state.json``: the snapshot id each (zone, year) was read at.

Runs are incremental by snapshot id: only (zone, year) units whose branch
moved are recomputed, and a run over an unchanged index writes nothing.
Modules: :mod:`.footprints` (geometry), :mod:`.tables` (rows),
:mod:`.stac` (Items, Collection), :mod:`.coverage` (the PNG),
:mod:`.incremental` (state, row-group reuse), :mod:`.assemble` (the two
Parquet files, unit by unit), :mod:`.build` (the run).
"""

from tessera_vz.catalog.build import CatalogOptions, CatalogReport, build_catalog

__all__ = ["CatalogOptions", "CatalogReport", "build_catalog"]
