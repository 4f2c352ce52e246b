"""The index's own size: objects and bytes per tile of a zone-year, and reads still exact.

A published index is copied to a web server file by file, so every object a
tile costs is multiplied by ~1.8 M tiles a year. Before the coordinates were
compressed and inlined, a tile cost six objects (four array manifests and two
coordinate chunks) and ~25 kB; a unit written in several batches also left
each amended snapshot and its cumulative transaction log behind. These tests
index real-size (sparse) tiles and count the repository's files on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tessera_vz.core import table_blocks as tb
from tessera_vz.core.geometry import pixel_centres
from tessera_vz.core.layout import repo_name
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.tiles import make_tree

YEAR = 2024
ZONE = 31
TILES = 120


def _centres(n: int) -> list[tuple[float, float]]:
    """``n`` cell centres of zone 31, row by row (60 cells a row)."""
    return [(round(0.05 + 0.1 * (i % 60), 2), round(40.05 + 0.1 * (i // 60), 2)) for i in range(n)]


def _files(repo: Path) -> dict[str, list[Path]]:
    """The repository's files by top-level folder (``manifests``, ``chunks``, ...)."""
    out: dict[str, list[Path]] = {}
    for f in repo.rglob("*"):
        if f.is_file():
            top = f.relative_to(repo).parts[0]
            out.setdefault(top if top != f.name else "other", []).append(f)
    return out


@pytest.fixture(scope="module")
def sparse_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("size-tiles")
    make_tree(root, centres=_centres(TILES), years=(YEAR,), bands=128, sparse=True)
    return root


@pytest.mark.parametrize("batch_tiles", [1000, 50])
def test_objects_and_bytes_per_tile(sparse_tree: Path, tmp_path: Path, batch_tiles: int) -> None:
    """At most four objects a tile (one manifest per array) and ~10 kB, in one batch or three."""
    out = tmp_path / "index"
    report = run_index(IndexOptions(source=str(sparse_tree), out=str(out), batch_tiles=batch_tiles))
    assert report.indexed == TILES and not report.failed
    files = _files(out / repo_name(ZONE))
    # The tiles table again as one-degree blocks, for cold points (core/table_blocks.py):
    # one object per square that holds tiles (at most 100 tiles), and its list.
    blocks = files.pop(tb.FOLDER)
    squares = {tuple(np.floor(c).astype(int)) for c in _centres(TILES)}
    assert sorted(f.name for f in blocks) == sorted(
        [*(f"b{x}_{y}.npz" for x, y in squares), tb.INDEX]
    )  # fmt: skip
    assert sum(f.stat().st_size for f in blocks) / TILES < 1_000
    objects = sum(len(v) for v in files.values())
    size = sum(f.stat().st_size for v in files.values() for f in v)
    # Four arrays with chunks a tile (embeddings, scales, y, x): Icechunk writes one
    # manifest per array per commit (and one per column of the tiles table),
    # and nothing else per tile. Before: six.
    assert 4 * TILES <= len(files["manifests"]) <= 4 * TILES + 30
    # Coordinates live inline in their manifests: only the tiles table's larger
    # columns are chunk objects (before: two per tile).
    assert len(files.get("chunks", [])) < 10
    # Per repository, not per tile: the tiles table, snapshots, logs, repo info (~40).
    assert objects <= 4 * TILES + 50, {k: len(v) for k, v in files.items()}
    # Before: ~25 kB a tile (coordinate chunks ~16 kB); with three batches also
    # two amended snapshots and transaction logs (now folded before publishing).
    assert size / TILES < 11_000, {k: sum(f.stat().st_size for f in v) for k, v in files.items()}
    # Only reachable snapshots remain: the first commit, the year's, main's description
    # and the coverage record's; the batches folded into the year's snapshot keep one
    # log each as its history.
    batches = -(-TILES // batch_tiles)
    assert len(files["snapshots"]) == 4
    assert len(files["transactions"]) == 3 + batches


def test_reads_equal_sources(tmp_path: Path) -> None:
    """xr.open_zarr and the reader give np.load of the sources and the exact pixel centres."""
    src = tmp_path / "tiles"
    specs = make_tree(src, centres=_centres(4), years=(YEAR,), bands=4)
    out = tmp_path / "index"
    report = run_index(IndexOptions(source=str(src), out=str(out), batch_tiles=2))
    assert report.indexed == 4 and not report.failed
    store = open_store(str(out), allow_local_sources=True)
    table = store.tiles(YEAR, ZONE)
    rows = {str(n): i for i, n in enumerate(table["tile"].values)}
    session = store.session(ZONE, YEAR)
    for spec in specs:
        ds = xr.open_zarr(session.store, group=spec.name)
        i = rows[spec.name]
        y, x = pixel_centres(
            float(table["left"].values[i]),
            float(table["top"].values[i]),
            int(table["height"].values[i]),
            int(table["width"].values[i]),
        )
        assert ds["y"].dtype == np.float64 and ds["x"].dtype == np.float64
        np.testing.assert_array_equal(ds["y"].values, y)
        np.testing.assert_array_equal(ds["x"].values, x)
        np.testing.assert_array_equal(ds["embeddings"].values, np.load(src / spec.emb_path))
        np.testing.assert_array_equal(ds["scales"].values, np.load(src / spec.scales_path))
        # Our reader, byte-exact from the tiles table: the pixel at the cell centre.
        loc = store.locate(spec.lon, spec.lat, YEAR)
        assert loc.name == spec.name
        emb = np.load(src / spec.emb_path)[loc.row, loc.col].astype(np.float32)
        scale = np.load(src / spec.scales_path)[loc.row, loc.col]
        expected = emb * scale if np.isfinite(scale) and 0 < scale < 1 else np.full(4, np.nan)
        np.testing.assert_array_equal(store.point(spec.lon, spec.lat, YEAR), expected)
