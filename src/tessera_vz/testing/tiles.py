"""Synthetic tile trees: :mod:`tessera_vz.mirror.tree` and its manifest, under their older name.

The demo generates its tree with it too, so it lives in the product; tests
and benchmarks keep importing it from here.
"""

from tessera_vz.mirror.manifest import (
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    MANIFEST_VARIANT,
    MANIFEST_VERSION,
    write_manifest,
)
from tessera_vz.mirror.tree import (
    BLOCK_BUDGET,
    INVALID_ROWS,
    INVALID_SCALES,
    TileSpec,
    cell_centres,
    embedding_values,
    make_tree,
    scale_values,
    tile_specs,
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
