"""Synthetic tile trees: :mod:`tessera_vz.mirror.tree`, under its older name.

The demo generates its tree with it too, so it lives in the product; tests
and benchmarks keep importing it from here.
"""

from tessera_vz.mirror.tree import (
    BLOCK_BUDGET,
    INVALID_ROWS,
    INVALID_SCALES,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    MANIFEST_VARIANT,
    MANIFEST_VERSION,
    TileSpec,
    cell_centres,
    embedding_values,
    make_tree,
    scale_values,
    tile_specs,
    write_manifest,
)

__all__ = [
    "BLOCK_BUDGET",
    "INVALID_ROWS",
    "INVALID_SCALES",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "MANIFEST_VARIANT",
    "MANIFEST_VERSION",
    "TileSpec",
    "cell_centres",
    "embedding_values",
    "make_tree",
    "scale_values",
    "tile_specs",
    "write_manifest",
]
