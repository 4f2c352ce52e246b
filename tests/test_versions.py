"""Pinned versions: a tag read from Python gives that index run's values after the index moved on.

The index is rebuilt three times over sources that change (a new copy of the
tree with one tile changed, as when a mirror publishes a corrected release),
then read at each tag and at the branch: through ``point``, ``points``,
``region`` (across two zones), ``open_tile``, ``open_zone`` (also on a dask
LocalCluster, whose workers reopen the index) and ``tiles``. Ground truth is
``np.load`` of the source files each run indexed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.core.errors import (
    ConfigurationError,
    SourceChangedError,
    VersionNotFoundError,
)
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.testing.tiles import make_tree

from .npyfiles import resave

YEAR = 2024
BBOX = (-0.2, 52.1, 0.2, 52.2)  # four tiles, two in zone 30 and two in zone 31
CHANGED = "grid_0.05_52.15"  # zone 31
POINT = (0.05, 52.15)
REGION = (-0.06, 52.11, 0.09, 52.19)  # across lon 0: zones 30 and 31
LONS = np.array([-0.15, -0.05, 0.05, 0.06, 0.15])
LATS = np.array([52.15, 52.12, 52.15, 52.17, 52.18])


def _change(root: Path, name: str, delta: int) -> None:
    """Rewrite a tile's embeddings with other values (same size, later mtime)."""
    path = root / str(YEAR) / name / f"{name}.npy"
    before = path.stat().st_mtime
    resave(path, (np.load(path).astype(np.int16) + delta).clip(-127, 127).astype(np.int8))
    os.utime(path, (before + 10, before + 10))


def _truth(root: Path, store: TesseraStore, lon: float, lat: float) -> np.ndarray:
    """The value at (lon, lat) from ``np.load`` of the files under ``root``."""
    loc = store.locate(lon, lat, YEAR)
    base = root / str(YEAR) / loc.name / loc.name
    emb = np.load(f"{base}.npy", mmap_mode="r")[loc.row, loc.col]
    scale = np.load(f"{base}_scales.npy", mmap_mode="r")[loc.row, loc.col]
    return dequantise(np.asarray(emb)[None], np.array([scale]))[0]


def _reads(store: TesseraStore) -> dict[str, Any]:
    """Everything the store returns, read once."""
    zone = store.open_zone(31, YEAR)
    reg = store.region(REGION, YEAR)
    sub = zone.sel(x=slice(reg.x.values[0], None), y=slice(reg.y.values[0], None))
    return {
        "point": store.point(*POINT, YEAR),
        "points": store.points(LONS, LATS, YEAR),
        "region": reg,
        "tile": store.open_tile(*POINT, YEAR).embeddings.values,
        "zone": zone.isel(y=slice(0, 300), x=slice(0, 300)).embeddings.values,
        "zone_attrs": zone.attrs,
        "sub": sub,
        "tiles": store.tiles(YEAR, 31),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Index v1 from tree A; v2 from its copy B with a tile changed; v3 from a copy C with it
    changed again, zone 31 only. Each tree stays as indexed (a tag pins references, not
    bytes). Reads of each state are kept for comparison."""
    base = tmp_path_factory.mktemp("versions")
    a, b, c, out = base / "a", base / "b", base / "c", base / "index"
    make_tree(a, bbox=BBOX, years=(YEAR,), bands=4, manifest=False)
    reads = {}
    assert [c.tag for c in run_index(IndexOptions(source=str(a), out=str(out))).commits] == [
        "2024-v1",
        "2024-v1",
    ]
    reads["v1"] = _reads(open_store(str(out), allow_local_sources=True))
    shutil.copytree(a, b)  # copy2: same sizes and mtimes, another source root
    _change(b, CHANGED, 1)
    commits = run_index(IndexOptions(source=str(b), out=str(out), move_source=True)).commits
    assert sorted((c.zone, c.tag) for c in commits) == [(30, "2024-v2"), (31, "2024-v2")]
    reads["v2"] = _reads(open_store(str(out), allow_local_sources=True))
    shutil.copytree(b, c)
    _change(c, CHANGED, 2)
    commits = run_index(
        IndexOptions(source=str(c), out=str(out), zones=[31], move_source=True)
    ).commits
    assert [(cm.zone, cm.tag) for cm in commits] == [(31, "2024-v3")]  # zone 30 not run
    return {"a": a, "b": b, "c": c, "out": out, "base": base, "reads": reads}


def _open(runs: dict[str, Any], versions: Any = None) -> TesseraStore:
    return open_store(str(runs["out"]), allow_local_sources=True, versions=versions)


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    np.testing.assert_array_equal(got["point"], want["point"])
    np.testing.assert_array_equal(got["points"], want["points"])
    np.testing.assert_array_equal(got["region"].embeddings.values, want["region"].embeddings.values)
    np.testing.assert_array_equal(got["tile"], want["tile"])
    np.testing.assert_array_equal(got["zone"], want["zone"])
    assert got["region"].attrs["tessera:snapshots"] == want["region"].attrs["tessera:snapshots"]


def test_old_tags_read_old_values_and_the_branch_the_new(runs: dict[str, Any]) -> None:
    reads = runs["reads"]
    head = _open(runs)
    now = _reads(head)
    # The branch is the last run: the changed tile's new bytes, zone 30 untouched since v2.
    np.testing.assert_array_equal(now["point"], _truth(runs["c"], head, *POINT))
    assert not np.array_equal(now["point"], reads["v2"]["point"])
    assert now["region"].attrs["tessera:versions"] == "utm30/2024-v2 utm31/2024-v3"
    assert now["tiles"].attrs["tessera:versions"] == "utm31/2024-v3"
    # Each run's values differ where the tile changed, and only there.
    for a, b in (("v1", "v2"), ("v2", "now")):
        x, y = (reads[a] if a != "now" else now), (reads[b] if b != "now" else now)
        assert not np.array_equal(x["point"], y["point"])
        np.testing.assert_array_equal(x["points"][[0, 1, 4]], y["points"][[0, 1, 4]])
    # v1 was read from tree A, which is untouched: np.load of it is the truth.
    v1 = _open(runs, "2024-v1")
    got = _reads(v1)
    _same(got, reads["v1"])
    np.testing.assert_array_equal(got["point"], _truth(runs["a"], v1, *POINT))
    assert got["region"].attrs["tessera:versions"] == "utm30/2024-v1 utm31/2024-v1"
    assert got["tiles"].attrs["tessera:versions"] == "utm31/2024-v1"
    assert got["zone_attrs"]["tessera:versions"] == "utm31/2024-v1"
    # The same pin written as {year: tag}, and per zone.
    _same(_reads(_open(runs, {YEAR: "2024-v2"})), reads["v2"])
    _same(_reads(_open(runs, ["utm30/2024-v2", "utm31/2024-v3"])), now)
    _same(_reads(_open(runs, {(31, YEAR): "2024-v1", (30, YEAR): "2024-v1"})), reads["v1"])
    # A result's attributes pinned back read exactly its snapshots.
    _same(_reads(_open(runs, now["region"].attrs["tessera:versions"])), now)
    _same(_reads(_open(runs, now["region"].attrs["tessera:snapshots"])), now)


def test_unknown_tags_are_clear_errors(runs: dict[str, Any]) -> None:
    # Tags are numbered per zone: zone 30 has no 2024-v3.
    v3 = _open(runs, "2024-v3")
    with pytest.raises(VersionNotFoundError, match=r"zone 30 .*2024-v1, 2024-v2\b"):
        v3.region(REGION, YEAR)
    with pytest.raises(VersionNotFoundError, match="2024-v3 does not exist"):
        v3.points(LONS, LATS, YEAR)  # never a silent NaN
    np.testing.assert_array_equal(v3.point(*POINT, YEAR), _reads(_open(runs))["point"])
    with pytest.raises(LookupError, match=r"2024-v1, 2024-v2, 2024-v3"):
        _open(runs, "2024-v9").open_tile(*POINT, YEAR)
    for bad, match in (
        ("v1", "not a tag"),
        ("2024-v1 2024-v2", "conflicts"),
        ({2025: "2024-v1"}, "must be a tag of that year"),
        ("utm61/2024-v1", "zones are 01-60"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            _open(runs, bad)


def test_open_zone_workers_read_the_pinned_snapshot(runs: dict[str, Any]) -> None:
    """Dask workers reopen the index at the mosaic's snapshot, even after a new run."""
    import distributed

    head = _open(runs)
    before = head.open_zone(31, YEAR)  # built at the branch's head (2024-v3)
    old = _open(runs, "2024-v1").open_zone(31, YEAR)
    window = {"y": slice(0, 400), "x": slice(0, 400)}
    expected_head = before.isel(window).embeddings.values
    # Another run, from a new copy of the tree: the branch moves to 2024-v4.
    d = runs["base"] / "d"
    shutil.copytree(runs["c"], d)
    _change(d, CHANGED, 3)
    commits = run_index(IndexOptions(source=str(d), out=str(runs["out"]), move_source=True)).commits
    assert {cm.tag for cm in commits} == {"2024-v3", "2024-v4"}
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        v1 = old.isel(y=slice(0, 300), x=slice(0, 300)).embeddings.values
        pinned = before.isel(window).embeddings.values
        later = _open(runs).open_zone(31, YEAR)
        moved = later.isel(window).embeddings.values
    np.testing.assert_array_equal(v1, runs["reads"]["v1"]["zone"])
    np.testing.assert_array_equal(pinned, expected_head)
    assert not np.array_equal(moved, expected_head)
    assert later.attrs["tessera:versions"] == "utm31/2024-v4"


def test_a_tag_whose_source_was_overwritten_fails_loudly(tmp_path: Path) -> None:
    """A tag pins references, not bytes: a source rewritten in place is an error, never
    other values; the next run indexes the new bytes as a new tag."""
    src, out = tmp_path / "src", tmp_path / "index"
    (spec,) = make_tree(src, centres=[POINT], years=(YEAR,), bands=4, manifest=False)
    run_index(IndexOptions(source=str(src), out=str(out)))
    _change(src, spec.name, 5)
    v1 = open_store(str(out), allow_local_sources=True, versions="2024-v1")
    with pytest.raises(SourceChangedError, match=spec.name):
        v1.point(*POINT, YEAR)
    assert [c.tag for c in run_index(IndexOptions(source=str(src), out=str(out))).commits] == [
        "2024-v2"
    ]
    head = open_store(str(out), allow_local_sources=True)
    np.testing.assert_array_equal(head.point(*POINT, YEAR), _truth(src, head, *POINT))
    with pytest.raises(SourceChangedError):
        open_store(str(out), allow_local_sources=True, versions="2024-v1").point(*POINT, YEAR)


def test_cli_reads_a_pinned_version(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--version-tag` on point, points and region gives the old run's values after re-indexing;
    the tags a points table records, passed back, read the same snapshots."""
    import json

    import pyarrow.parquet as pq
    import rioxarray

    from tessera_vz.cli import main as cli

    v1, head = runs["reads"]["v1"], _open(runs)
    read = ["--store", str(runs["out"]), "--allow-local-sources"]
    point = ["point", *map(str, POINT), "--year", str(YEAR), *read, "--json"]
    assert cli([*point, "--version-tag", "2024-v1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(np.array(doc["embedding"], np.float32), v1["point"])
    assert doc["version"] == "2024-v1"
    assert cli(point) == 0
    now = np.array(json.loads(capsys.readouterr().out)["embedding"], np.float32)
    np.testing.assert_array_equal(now, head.point(*POINT, YEAR))
    assert not np.array_equal(now, v1["point"])

    csv = tmp_path / "pts.csv"
    csv.write_text("lon,lat\n" + "".join(f"{a},{b}\n" for a, b in zip(LONS, LATS, strict=True)))
    out = tmp_path / "v1.parquet"
    pins = ["--version-tag", "utm30/2024-v1", "--version-tag", "utm31/2024-v1"]
    assert cli(["points", str(csv), "--year", str(YEAR), *read, "--out", str(out), *pins]) == 0
    table = pq.read_table(out)
    values = table.select([f"b{b:03d}" for b in range(4)]).to_pandas().to_numpy(np.float32)
    np.testing.assert_array_equal(values, v1["points"])
    versions = table.schema.metadata[b"tessera:versions"].decode()
    assert versions == "utm30/2024-v1 utm31/2024-v1"

    tif = tmp_path / "v1.tif"
    assert cli(["region", *map(str, REGION), "--year", str(YEAR), *read, "--out", str(tif),
                "--version-tag", versions]) == 0  # fmt: skip
    got = rioxarray.open_rasterio(tif)
    want = v1["region"].embeddings.transpose("band", "y", "x").values
    np.testing.assert_array_equal(got.values, want)
    assert got.attrs["tessera_versions"] == versions
    capsys.readouterr()
    assert cli([*point, "--version-tag", "utm31/2024-v99"]) == 2
    assert "tag 2024-v99 does not exist in UTM zone 31" in capsys.readouterr().err
