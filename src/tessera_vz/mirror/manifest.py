"""The ``manifest.parquet`` of a generated tree, in upstream's schema.

Over HTTPS a tree cannot be listed, so upstream publishes a manifest of its
files: one row per tile-year with both paths, sizes and mtimes. A generated
tree gets the same, so it is indexed exactly as a real mirror is.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from tessera_vz.mirror.tree import TileSpec

logger = logging.getLogger(__name__)

#: Upstream manifest constants.
MANIFEST_VERSION = "v1"
MANIFEST_VARIANT = "global_0.1_degree_representation"
MANIFEST_NAME = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema(
    [
        ("version", pa.string()),
        ("variant", pa.string()),
        ("year", pa.int32()),
        ("lon", pa.float64()),
        ("lat", pa.float64()),
        ("directory", pa.string()),
        ("grid_path", pa.string()),
        ("scales_path", pa.string()),
        ("grid_mtime", pa.float64()),
        ("scales_mtime", pa.float64()),
        ("grid_size", pa.int64()),
        ("scales_size", pa.int64()),
        ("lon_i", pa.int32()),
        ("lat_i", pa.int32()),
    ]
)


def hundredths(x: float) -> int:
    """Coordinate in integer hundredths of a degree, as upstream's ``lon_i``."""
    return round(float(x) * 100)


def _url(rel: str, url_base: str | None) -> str:
    return rel if url_base is None else url_base.rstrip("/") + "/" + rel


def write_manifest(
    root: str | Path,
    specs: Sequence[TileSpec],
    url_base: str | None = None,
    path: str | Path | None = None,
) -> Path:
    """Write an upstream-schema ``manifest.parquet`` listing ``specs``.

    Sizes and mtimes are read from the files on disk, as upstream records
    them; a spec whose file is absent gets size 0 and mtime NaN, so tests can
    list objects that do not exist (a known upstream defect) by passing extra
    specs, or omit existing tiles by passing fewer.

    Parameters
    ----------
    root
        Root of the tree the relative paths refer to.
    specs
        The rows to list, in order.
    url_base
        When given, ``grid_path``/``scales_path`` become absolute URLs
        ``url_base.rstrip('/') + '/' + relative_path``, as a manifest of
        another mirror lists them.
    path
        Output file; default ``{root}/manifest.parquet``.
    """
    root = Path(root)
    out = Path(path) if path is not None else root / MANIFEST_NAME

    def stat(rel: str) -> tuple[float, int]:
        try:
            st = os.stat(root / rel)
        except FileNotFoundError:
            return math.nan, 0
        return st.st_mtime, st.st_size

    cols: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
    for s in specs:
        g_mtime, g_size = stat(s.emb_path)
        s_mtime, s_size = stat(s.scales_path)
        cols["version"].append(MANIFEST_VERSION)
        cols["variant"].append(MANIFEST_VARIANT)
        cols["year"].append(s.year)
        cols["lon"].append(s.lon)
        cols["lat"].append(s.lat)
        cols["directory"].append(s.directory)
        cols["grid_path"].append(_url(s.emb_path, url_base))
        cols["scales_path"].append(_url(s.scales_path, url_base))
        cols["grid_mtime"].append(g_mtime)
        cols["scales_mtime"].append(s_mtime)
        cols["grid_size"].append(g_size)
        cols["scales_size"].append(s_size)
        cols["lon_i"].append(hundredths(s.lon))
        cols["lat_i"].append(hundredths(s.lat))
    table = pa.table(cols, schema=MANIFEST_SCHEMA)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    logger.debug("wrote manifest %s with %d rows", out, len(specs))
    return out
