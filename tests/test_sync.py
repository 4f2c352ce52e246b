"""Sync by set difference: a re-run probes only what the inventory shows new or changed.

The index records, per tile, what the manifest or listing said about each
file when it was indexed. A re-run whose inventory says the same makes no
header request at all (counted in nginx's access log); a changed, added or
removed tile costs just its own requests; ``--reprobe`` reads every header
again; an index written before those facts were recorded is probed once and
gains them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr

from tessera_vz.cli import main as cli_main
from tessera_vz.core.dataset import Dataset
from tessera_vz.core.layout import repo_name
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.upstream import write_upstream_manifest

from .npyfiles import resave

YEAR = 2024
BBOX = (0.7, 49.7, 1.0, 50.0)  # 3 x 3 cells in UTM zone 31 north
EXTRA = (0.55, 49.75)  # a cell added later
DATASET = Dataset("1.1", "cambridge")


def write_manifest(root: Path, specs: list[TileSpec], **kw: Any) -> Path:
    """The manifest as upstream's s3scan writes it (tz-aware timestamps, s3:// URIs)."""
    return write_upstream_manifest(root, specs, DATASET, **kw)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("sync-tree")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=2, manifest=False)
    write_manifest(root, specs)
    assert len(specs) == 9
    return root, specs


@pytest.fixture
def tree(
    pristine: tuple[Path, list[TileSpec]], tmp_path: Path
) -> Iterator[tuple[Path, list[TileSpec], NginxServer]]:
    """A private copy of the tree (tests change it), served by nginx."""
    root = tmp_path / "tree"
    shutil.copytree(pristine[0], root)
    with NginxServer(root) as server:
        yield root, list(pristine[1]), server


def _opts(root: Path, server: NginxServer, out: Path, **kw: Any) -> IndexOptions:
    kw.setdefault("manifest", str(root / "manifest.parquet"))
    return IndexOptions(source=server.url, out=str(out), **kw)


def _requests(server: NginxServer, expected: int) -> list[dict[str, Any]]:
    """The logged requests, once ``expected`` have landed (and a moment for stragglers)."""
    server.requests(min_count=expected)
    time.sleep(0.2)
    return server.requests()


def _indexed(tmp_root: Path, server: NginxServer, out: Path) -> dict[str, Any]:
    doc = run_index(_opts(tmp_root, server, out)).to_json()
    assert doc["indexed"] == 9 and doc["failed"] == []
    server.clear_log()
    return doc


def _table(out: Path) -> xr.Dataset:
    return open_store(str(out)).tiles(YEAR, 31)


def test_unchanged_rerun_with_a_local_manifest_makes_no_request(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    root, specs, server = tree
    out = tmp_path / "index"
    _indexed(root, server, out)
    table = _table(out)
    spec = specs[0]
    # The table records what the manifest said about each file.
    st = (root / spec.emb_path).stat()
    manifest = pq.read_table(root / "manifest.parquet").to_pylist()
    row = next(r for r in manifest if r["grid_path"].endswith(spec.emb_path))
    ns = round(row["grid_mtime"].timestamp() * 1e6) * 1000  # a pandas datetime of microseconds
    size, mtime = str(table.sel(tile=spec.name).emb_listed.item()).split(";")
    assert (size, mtime) == (f"size={st.st_size}", f"mtime_ns={ns}")
    assert abs(ns / 1e9 - st.st_mtime) < 1e-5

    doc = run_index(_opts(root, server, out)).to_json()
    assert _requests(server, 0) == []
    assert (doc["indexed"], doc["unchanged"], doc["skipped"], doc["requests"]) == (0, 9, 9, 0)
    assert doc["commits"] == [] and doc["failed"] == []


def test_unchanged_rerun_with_a_served_manifest_makes_one_request(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    root, _specs, server = tree
    out = tmp_path / "index"
    manifest = server.url + "manifest.parquet"
    assert run_index(_opts(root, server, out, manifest=manifest)).indexed == 9
    server.clear_log()
    doc = run_index(_opts(root, server, out, manifest=manifest)).to_json()
    reqs = _requests(server, 1)
    assert [r["uri"] for r in reqs] == ["/manifest.parquet"]
    assert doc["skipped"] == 9 and doc["commits"] == []


def test_changed_file_is_reindexed_with_the_new_bytes(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    root, specs, server = tree
    out = tmp_path / "index"
    _indexed(root, server, out)
    spec = specs[4]
    path = root / spec.emb_path
    new = np.load(path) + 1  # same size, other bytes
    resave(path, new)
    t = path.stat().st_mtime + 5
    os.utime(path, (t, t))
    write_manifest(root, specs)

    doc = run_index(_opts(root, server, out)).to_json()
    uris = sorted(r["uri"] for r in _requests(server, 2))
    assert uris == sorted(f"/{p}" for p in (spec.emb_path, spec.scales_path))
    assert (doc["indexed"], doc["unchanged"], doc["skipped"], doc["failed"]) == (1, 8, 8, [])
    assert [c["tag"] for c in doc["commits"]] == [f"{YEAR}-v2"]
    ds = open_store(str(out)).open_tile(spec.lon, spec.lat, YEAR)
    np.testing.assert_array_equal(ds.embeddings.values, new)


def test_added_tile_only_it_is_probed(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    root, specs, server = tree
    out = tmp_path / "index"
    _indexed(root, server, out)
    added = make_tree(root, centres=[EXTRA], years=(YEAR,), bands=2, manifest=False)
    write_manifest(root, specs + added)

    doc = run_index(_opts(root, server, out)).to_json()
    uris = sorted(r["uri"] for r in _requests(server, 2))
    assert uris == sorted(f"/{p}" for p in (added[0].emb_path, added[0].scales_path))
    assert (doc["indexed"], doc["skipped"], doc["removed"], doc["failed"]) == (1, 9, 0, [])
    ds = open_store(str(out)).open_tile(*EXTRA, YEAR)
    np.testing.assert_array_equal(ds.embeddings.values, np.load(root / added[0].emb_path))


def test_removed_tile_is_dropped_without_a_request(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    root, specs, server = tree
    out = tmp_path / "index"
    _indexed(root, server, out)
    gone = specs[2]
    write_manifest(root, [s for s in specs if s is not gone])

    doc = run_index(_opts(root, server, out)).to_json()
    assert _requests(server, 0) == []
    assert (doc["indexed"], doc["skipped"], doc["removed"]) == (0, 8, 1)
    assert gone.name not in _table(out).tile.values
    assert len(doc["commits"]) == 1


def test_reprobe_reads_every_header_and_changes_nothing(
    tree: tuple[Path, list[TileSpec], NginxServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _specs, server = tree
    out = tmp_path / "index"
    _indexed(root, server, out)
    argv = ["index", server.url, "--out", str(out), "--manifest", str(root / "manifest.parquet")]
    assert cli_main([*argv, "--reprobe", "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(_requests(server, 18)) == 18
    assert (doc["indexed"], doc["unchanged"], doc["skipped"], doc["commits"]) == (0, 9, 0, [])


def test_manifest_without_facts_probes_every_tile(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    """A manifest without sizes and mtimes cannot show a tile unchanged: all are probed."""
    root, _specs, server = tree
    bare = tmp_path / "bare.parquet"
    pq.write_table(
        pq.read_table(root / "manifest.parquet").drop_columns(
            ["grid_mtime", "scales_mtime", "grid_size", "scales_size"]
        ),
        bare,
    )
    out = tmp_path / "index"
    assert run_index(_opts(root, server, out, manifest=str(bare))).indexed == 9
    server.clear_log()
    doc = run_index(_opts(root, server, out, manifest=str(bare))).to_json()
    assert len(_requests(server, 18)) == 18
    assert (doc["indexed"], doc["unchanged"], doc["skipped"], doc["commits"]) == (0, 9, 0, [])


def _drop_listed_columns(out: Path) -> None:
    """Rewrite the year's table as an index written before the facts were recorded."""
    repo = ic.Repository.open(ic.local_filesystem_storage(str(out / repo_name(31))))
    session = repo.writable_session(str(YEAR))
    table = xr.open_zarr(session.store, group="tiles", consolidated=False, zarr_format=3).load()
    old = table.drop_vars(["emb_listed", "scales_listed"])
    old.to_zarr(session.store, group="tiles", mode="w", consolidated=False, zarr_format=3)
    session.commit("an index of the previous layout")


def test_old_index_is_probed_once_and_gains_the_facts(
    tree: tuple[Path, list[TileSpec], NginxServer], tmp_path: Path
) -> None:
    root, specs, server = tree
    out = tmp_path / "index"
    _indexed(root, server, out)
    _drop_listed_columns(out)
    assert "emb_listed" not in _table(out)

    doc = run_index(_opts(root, server, out)).to_json()
    assert len(_requests(server, 18)) == 18
    assert (doc["indexed"], doc["unchanged"], doc["refreshed"], doc["skipped"]) == (0, 9, 9, 0)
    assert len(doc["commits"]) == 1  # the table only: no tile group was rewritten
    table = _table(out)
    assert all(str(v).startswith("size=") for v in table.emb_listed.values)
    store = open_store(str(out))
    spec = specs[3]
    np.testing.assert_array_equal(
        store.open_tile(spec.lon, spec.lat, YEAR).embeddings.values, np.load(root / spec.emb_path)
    )
    server.clear_log()
    doc = run_index(_opts(root, server, out)).to_json()
    assert _requests(server, 0) == [] and doc["skipped"] == 9 and doc["commits"] == []


def test_listing_sync_probes_only_touched_files(
    pristine: tuple[Path, list[TileSpec]], tmp_path: Path
) -> None:
    """A local tree listed by obstore: its size and ETag per file play the manifest's part."""
    root = tmp_path / "tree"
    shutil.copytree(pristine[0], root)
    (root / "manifest.parquet").unlink()  # else SOURCE's manifest is the inventory
    specs = pristine[1]
    out = tmp_path / "index"
    opts = IndexOptions(source=str(root), out=str(out))
    assert run_index(opts).indexed == 9
    again = run_index(opts).to_json()
    assert (again["requests"], again["skipped"], again["commits"]) == (0, 9, [])
    spec = specs[5]
    t = (root / spec.scales_path).stat().st_mtime + 5
    os.utime(root / spec.scales_path, (t, t))
    doc = run_index(opts).to_json()
    assert (doc["requests"], doc["skipped"], doc["indexed"]) == (2, 8, 1)
