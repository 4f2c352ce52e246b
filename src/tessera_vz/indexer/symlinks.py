"""Tiles of a local tree reached through symbolic links that lead outside it.

A tree someone else prepared may hold ``2024/grid_…/grid_….npy -> ~/.ssh/id_rsa``
or a year directory linked to another disk. Indexing such a tile would
record a reference to a file outside SOURCE and serve its bytes as an
embedding to whoever reads the index. So, unless the user asks for it
(``--follow-symlinks``), a tile whose embeddings or scales file resolves
outside the resolved SOURCE is skipped, with the reason in the report.
Links that stay inside the tree are harmless and kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from tessera_vz.core.layout import source_paths
from tessera_vz.core.urls import SourceRoot
from tessera_vz.indexer.report import Failure

log = logging.getLogger(__name__)


def skip_outside_links(table: pa.Table, root: SourceRoot) -> tuple[pa.Table, list[Failure]]:
    """``table`` without the tiles whose files resolve outside ``root``, and their failures."""
    if not root.is_local or table.num_rows == 0:
        return table, []
    base = Path(root.local_path).resolve()
    keep = np.ones(table.num_rows, dtype=bool)
    failures = []
    years, names = table.column("year").to_pylist(), table.column("name").to_pylist()
    for i, (year, name) in enumerate(zip(years, names, strict=True)):
        for rel in source_paths(year, name):
            target = (base / rel).resolve()
            if target.is_relative_to(base):
                continue
            keep[i] = False
            failures.append(Failure(year, name, rel, (
                "a symbolic link leads outside SOURCE; skipped (pass --follow-symlinks to "
                "index files that links in the tree point to)"
            )))  # fmt: skip
            break
    if failures:
        log.warning("skipped %d tile(s) reached by links leading outside %s", len(failures), base)
    return table.filter(pa.array(keep)), failures
