"""Manifests and dataset directories exactly as upstream's scanners write them.

geotessera 0.11 publishes each dataset as ``npy/{dataset dir}/`` holding
``manifest.parquet`` and ``{year}/grid_{lon}_{lat}/grid_{lon}_{lat}{,_scales}.npy``.
Its ``s3scan`` (``geotessera/registry_cli.py``, ``s3scan_command``) builds the
manifest with pandas from Python values: ``version`` (normalised ``1.1``),
``variant``, ``year``, ``lon``, ``lat``, ``directory``, ``grid_path`` and
``scales_path`` as full ``s3://`` URIs, ``grid_mtime``/``scales_mtime`` as
tz-aware UTC datetimes (S3 ``LastModified``), the sizes, then ``lon_i``/``lat_i``
(``round(x * 100)`` as int32), written by ``DataFrame.to_parquet``. Its local
``file_scan_command`` writes naive ``datetime.fromtimestamp`` mtimes. Both
flavours are written here (``tz_aware``), through pandas as upstream does, so
the timestamp unit and metadata are pandas' own.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tessera_vz.core.dataset import Dataset, from_dir_name
from tessera_vz.testing.tiles import TileSpec, make_tree

if TYPE_CHECKING:
    import pandas as pd

#: Where upstream's bucket keeps the npy datasets (``s3scan`` examples).
S3_NPY = "s3://tessera/tessera/npy/"


def write_upstream_manifest(
    root: str | Path,
    specs: Sequence[TileSpec],
    dataset: Dataset,
    *,
    tz_aware: bool = True,
    s3_base: str | None = None,
    path: str | Path | None = None,
) -> Path:
    """Write ``{root}/manifest.parquet`` as upstream's scanner would list ``specs``.

    ``s3_base``: the dataset directory's ``s3://`` URI (default
    ``S3_NPY + dataset.path + "/"``). A spec whose file is absent is listed
    with size 0 and the epoch as its mtime (a row for a missing object).
    """
    import pandas as pd

    root = Path(root)
    base = s3_base or f"{S3_NPY}{dataset.path}/"
    zone = dt.UTC if tz_aware else None

    def stat(rel: str) -> tuple[dt.datetime, int]:
        try:
            st = os.stat(root / rel)
        except FileNotFoundError:
            return dt.datetime.fromtimestamp(0, tz=zone), 0
        if tz_aware:
            return dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC), st.st_size
        return dt.datetime.fromtimestamp(st.st_mtime), st.st_size

    records = []
    for s in specs:
        g_mtime, g_size = stat(s.emb_path)
        s_mtime, s_size = stat(s.scales_path)
        records.append(
            {
                "version": dataset.version,
                "variant": dataset.variant,
                "year": s.year,
                "lon": s.lon,
                "lat": s.lat,
                "directory": base + s.directory,
                "grid_path": base + s.emb_path,
                "scales_path": base + s.scales_path,
                "grid_mtime": g_mtime,
                "scales_mtime": s_mtime,
                "grid_size": g_size,
                "scales_size": s_size,
            }
        )
    out = Path(path) if path is not None else root / "manifest.parquet"
    return write_upstream_frame(pd.DataFrame(records), out)


def write_upstream_frame(df: pd.DataFrame, out: str | Path) -> Path:
    """Finish and write a manifest frame as ``s3scan`` does: sorted, ``lon_i``/``lat_i`` added.

    ``df`` holds the columns up to ``scales_size`` (see :func:`write_upstream_manifest`),
    built by a caller that knows its files' facts without a file system (the
    simulated world of :mod:`tessera_vz.testing.world`).
    """
    if len(df):
        df = df.sort_values(["version", "variant", "year", "lon", "lat"])
        df["lon_i"] = (df["lon"] * 100).round().astype(np.int32)
        df["lat_i"] = (df["lat"] * 100).round().astype(np.int32)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    return out


def make_dataset(
    npy: str | Path,
    dirname: str = "v1.1-cam",
    *,
    tz_aware: bool = True,
    years: Iterable[int] = (2024,),
    **tree: object,
) -> tuple[Path, list[TileSpec]]:
    """A dataset directory ``{npy}/{dirname}/`` with tiles and an upstream manifest.

    ``tree`` goes to :func:`~tessera_vz.testing.tiles.make_tree` (``bbox`` or
    ``centres``, ``bands``, …). Returns the directory and its tiles.
    """
    dataset = from_dir_name(dirname)
    if dataset is None:
        raise ValueError(f"{dirname!r} is not an upstream dataset directory name (v1.1-cam)")
    root = Path(npy) / dirname
    specs = make_tree(root, years=years, manifest=False, **tree)  # type: ignore[arg-type]
    write_upstream_manifest(root, specs, dataset, tz_aware=tz_aware)
    return root, specs
