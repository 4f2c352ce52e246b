"""The world's ``manifest.parquet``, as upstream's ``s3scan`` writes it.

Built from the world arrays instead of a file system (there are no files),
then finished and written by the same
:func:`~tessera_vz.testing.upstream.write_upstream_frame` as every other
upstream-style manifest of the tests: pandas' tz-aware UTC timestamps (an
S3 listing's ``LastModified``), full ``s3://`` URIs, sizes, ``lon_i``/``lat_i``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tessera_vz.core.dataset import from_dir_name
from tessera_vz.testing.upstream import S3_NPY, write_upstream_frame
from tessera_vz.testing.world import content
from tessera_vz.testing.world.cells import World

#: The dataset directory the world is served as (1.0/vultr, upstream's frozen v1).
DATASET_DIR = "v1"


def write_world_manifest(world: World, dataset_dir: str | Path) -> Path:
    """Write ``{dataset_dir}/manifest.parquet`` listing every tile of ``world``."""
    import pandas as pd

    dataset = from_dir_name(DATASET_DIR)
    assert dataset is not None
    base = f"{S3_NPY}{dataset.path}/"
    names = np.asarray(world.names(), dtype=object)
    directory = base + f"{world.year}/" + names
    shapes = list(zip(world.height.tolist(), world.width.tolist(), strict=True))
    sizes = {
        k: np.array([content.file_size(k, h, w) for h, w in shapes]) for k in ("emb", "scales")
    }
    mtime = pd.to_datetime(world.mtime, unit="s", utc=True).as_unit("us")
    df = pd.DataFrame(
        {
            "version": dataset.version,
            "variant": dataset.variant,
            "year": world.year,
            "lon": world.lon,
            "lat": world.lat,
            "directory": directory,
            "grid_path": directory + "/" + names + ".npy",
            "scales_path": directory + "/" + names + "_scales.npy",
            "grid_mtime": mtime,
            "scales_mtime": mtime,
            "grid_size": sizes["emb"],
            "scales_size": sizes["scales"],
        }
    )
    return write_upstream_frame(df, Path(dataset_dir) / "manifest.parquet")
