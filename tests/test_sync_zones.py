"""Syncing a multi-zone year from an upstream manifest: only the changed tiles cost anything.

Three UTM zones of tiles, indexed over nginx from the manifest upstream's
``s3scan`` writes (tz-aware timestamps, ``s3://`` URIs) served by the same
nginx. Two tiles in two zones change (new bytes, new mtime): the re-run reads
the manifest and exactly those four files' headers (nginx's access log),
commits exactly those two zone-years, leaves the third zone's branch where it
was, and reads the new values as ``np.load`` does. With nothing changed, the
manifest is the only request and no branch moves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import pytest

from tessera_vz.core.dataset import Dataset
from tessera_vz.core.layout import branch_name, repo_name
from tessera_vz.core.repos import storage_for
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.s3 import MotoS3
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.upstream import write_upstream_manifest

from .npyfiles import resave

YEAR = 2024
DATASET = Dataset("1.1", "cambridge")
#: Two cells in each of UTM zones 31, 32 and 33.
CENTRES = [(1.05, 50.05), (1.15, 50.05), (7.05, 50.05), (7.15, 50.05), (13.05, 50.05),
           (13.15, 50.05)]  # fmt: skip
ZONES = (31, 32, 33)


def _tips(out: Path) -> dict[int, str]:
    """Each zone's year-branch snapshot."""
    tips = {}
    for zone in ZONES:
        repo = ic.Repository.open(storage_for(str(out / repo_name(zone))))
        tips[zone] = repo.lookup_branch(branch_name(YEAR))
    return tips


def _requests(server: NginxServer, expected: int) -> list[str]:
    """URIs nginx logged, once ``expected`` landed (and a moment for stragglers)."""
    server.requests(min_count=expected)
    time.sleep(0.2)
    return sorted(r["uri"] for r in server.requests())


def _change(root: Path, spec: TileSpec) -> np.ndarray:
    """New embedding values (same size) and a later mtime for both files of ``spec``."""
    new: np.ndarray = np.load(root / spec.emb_path) + 3
    resave(root / spec.emb_path, new)
    for rel in (spec.emb_path, spec.scales_path):
        t = (root / rel).stat().st_mtime + 7
        os.utime(root / rel, (t, t))
    return new


@pytest.fixture
def indexed(tmp_path: Path) -> Any:
    root = tmp_path / "v1.1-cam"
    specs = make_tree(root, centres=CENTRES, years=(YEAR,), bands=2, manifest=False)
    write_upstream_manifest(root, specs, DATASET, tz_aware=True)
    out = tmp_path / "index"
    with NginxServer(root) as server:
        opts = IndexOptions(
            source=server.url, out=str(out), manifest=server.url + "manifest.parquet"
        )
        first = run_index(opts)
        assert (first.indexed, first.failed) == (6, [])
        assert sorted(c.zone for c in first.commits) == list(ZONES)
        server.clear_log()
        yield root, specs, out, server, opts


def test_changed_tiles_in_two_zones_are_all_that_is_read_and_committed(indexed: Any) -> None:
    root, specs, out, server, opts = indexed
    before = _tips(out)
    changed = {specs[0].name: specs[0], specs[3].name: specs[3]}  # zones 31 and 32
    new = {name: _change(root, spec) for name, spec in changed.items()}
    write_upstream_manifest(root, specs, DATASET, tz_aware=True)

    report = run_index(opts).to_json()
    files = sorted(f"/{p}" for s in changed.values() for p in (s.emb_path, s.scales_path))
    assert _requests(server, 5) == sorted(["/manifest.parquet", *files])
    assert (report["indexed"], report["skipped"], report["failed"]) == (2, 4, [])
    assert sorted(c["zone"] for c in report["commits"]) == [31, 32]
    after = _tips(out)
    assert after[33] == before[33] and after[31] != before[31] and after[32] != before[32]

    store = open_store(str(out))
    for spec in specs:
        values = store.open_tile(spec.lon, spec.lat, YEAR).embeddings.values
        expected = new.get(spec.name)
        if expected is None:
            expected = np.load(root / spec.emb_path)
        np.testing.assert_array_equal(values, expected)


def test_nothing_changed_costs_the_manifest_alone(indexed: Any) -> None:
    _root, _specs, out, server, opts = indexed
    before = _tips(out)
    report = run_index(opts).to_json()
    assert _requests(server, 1) == ["/manifest.parquet"]
    assert (report["indexed"], report["skipped"], report["requests"]) == (0, 6, 0)
    assert report["commits"] == [] and report["failed"] == []
    assert _tips(out) == before


def test_nothing_changed_leaves_the_zone_list_as_it_was(indexed: Any) -> None:
    _root, _specs, out, _server, opts = indexed
    zones = out / "zones.json"
    first = (zones.read_bytes(), zones.stat().st_mtime_ns)
    time.sleep(1.1)  # the list records its writing time in seconds
    assert run_index(opts).commits == []
    assert (zones.read_bytes(), zones.stat().st_mtime_ns) == first


def test_the_plan_reads_an_index_on_s3_and_a_change_there_is_synced(
    tmp_path: Path, s3_env: MotoS3
) -> None:
    """Index on S3 (moto): the plan opens its repositories there, read-only."""
    root = tmp_path / "v1.1-cam"
    specs = make_tree(root, centres=CENTRES[:4], years=(YEAR,), bands=2, manifest=False)
    write_upstream_manifest(root, specs, DATASET, tz_aware=True)
    s3_env.create_bucket("sync-index")
    out = "s3://sync-index/idx"
    opts = IndexOptions(source=str(root), out=out, manifest=str(root / "manifest.parquet"))
    assert run_index(opts).indexed == 4
    again = run_index(opts)
    assert (again.indexed, again.skipped, again.commits) == (0, 4, [])
    new = _change(root, specs[2])  # zone 32
    write_upstream_manifest(root, specs, DATASET, tz_aware=True)
    synced = run_index(opts)
    assert (synced.indexed, synced.skipped, [c.zone for c in synced.commits]) == (1, 3, [32])
    ds = open_store(out).open_tile(specs[2].lon, specs[2].lat, YEAR)
    np.testing.assert_array_equal(ds.embeddings.values, new)
