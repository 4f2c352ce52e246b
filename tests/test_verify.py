"""Source drift: ``tessera-vz verify`` finds tiles whose source files changed or vanished.

Upstream re-uploads files under the same name. ``verify`` compares every
indexed tile's source objects (one HEAD each) with the sizes and checksums
recorded in the tiles table; the next ``index`` run re-indexes exactly the
drifted tiles; until then, reads of a drifted tile fail loudly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.errors import ConfigurationError, SourceChangedError
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA
from tessera_vz.verify import verify_index

from .npyfiles import resave

YEAR = 2024
BBOX = (0.8, 49.8, 1.0, 50.0)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list[TileSpec]]:
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=2)
    return root, specs


@pytest.fixture
def nginx(tree: tuple[Path, list[TileSpec]], https: TestCA) -> Iterator[NginxServer]:
    """The tree over HTTPS, as real mirrors serve it."""
    with NginxServer(tree[0], tls=https) as server:
        yield server


def _verify_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = cli_main(["verify", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_finds_drifted_and_missing_tiles_and_index_fixes_drift(
    tree: tuple[Path, list[TileSpec]],
    nginx: NginxServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, specs = tree
    out = tmp_path / "index"
    opts = IndexOptions(source=nginx.url, out=str(out), manifest=str(root / "manifest.parquet"))
    assert run_index(opts).exit_code == 0

    code, doc = _verify_cli(capsys, str(out))
    assert code == 0
    assert doc["tiles"] == 4 and doc["healthy"] == 4
    assert doc["drifted"] == doc["missing"] == doc["unreachable"] == []

    # Re-upload one tile with other bytes (same size), delete another's scales.
    drifted, gone = specs[0], specs[1]
    path = root / drifted.emb_path
    before = path.stat().st_mtime
    resave(path, np.load(path) + 1)
    os.utime(path, (before + 5, before + 5))
    (root / gone.scales_path).unlink()

    nginx.clear_log()
    code, doc = _verify_cli(capsys, str(out), "--years", str(YEAR))
    assert code == 1
    assert doc["healthy"] == 2
    assert [d["tile"] for d in doc["drifted"]] == [drifted.name]
    assert [m["tile"] for m in doc["missing"]] == [gone.name]
    problem = doc["drifted"][0]["problems"][0]
    assert drifted.emb_path in problem and "re-run" in problem.lower()
    assert gone.scales_path in doc["missing"][0]["problems"][0]
    # Metadata only: one HEAD per file, no bytes of data.
    reqs = nginx.requests(min_count=8)
    assert {r["method"] for r in reqs} == {"HEAD"} and len(reqs) == 8
    assert sum(r["body_bytes_sent"] for r in reqs) == 0

    # Until re-indexed, a read of the drifted tile fails loudly and names it.
    with pytest.raises(SourceChangedError, match=drifted.name):
        open_store(str(out)).point(drifted.lon, drifted.lat, YEAR)

    # The manifest does not show the drift, so a sync run probes nothing;
    # with --reprobe the next run re-indexes exactly the drifted tile.
    assert run_index(opts).to_json()["commits"] == []
    doc_ix = run_index(dataclasses.replace(opts, reprobe=True)).to_json()
    assert doc_ix["indexed"] == 1 and doc_ix["unchanged"] == 2
    assert [f["tile"] for f in doc_ix["failed"]] == [gone.name]
    report = verify_index(str(out))
    assert [c.tile for c in report.of("healthy")] == sorted(
        s.name for s in specs if s.name != gone.name
    )
    assert [c.tile for c in report.of("missing")] == [gone.name]
    ds = open_store(str(out)).open_tile(drifted.lon, drifted.lat, YEAR)
    np.testing.assert_array_equal(ds.embeddings.values, np.load(path))


def test_verify_local_sources_need_permission(
    tree: tuple[Path, list[TileSpec]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone else's index of a local tree is verified only with --allow-local-sources.

    The user's own index (indexed here, its permission remembered) needs none;
    a copy of it elsewhere is someone else's (exit 2 without the flag).
    """
    root, _specs = tree
    mine = tmp_path / "mine"
    assert run_index(IndexOptions(source=str(root), out=str(mine))).exit_code == 0
    code, doc = _verify_cli(capsys, str(mine))
    assert code == 0 and doc["healthy"] == 4
    out = tmp_path / "index"
    shutil.copytree(mine, out)
    assert cli_main(["verify", str(out), "--json"]) == 2
    assert "allow-local-sources" in capsys.readouterr().err
    code, doc = _verify_cli(capsys, str(out), "--allow-local-sources")
    assert code == 0 and doc["healthy"] == 4
    with pytest.raises(ConfigurationError, match="allowed sources"):
        verify_index(str(out), allow_local_sources=True, allowed_sources=["https://x.example/"])
    # The whole tree gone: every tile is missing, nothing crashes.
    shutil.rmtree(root)
    code, doc = _verify_cli(capsys, str(out), "--allow-local-sources")
    assert code == 1 and len(doc["missing"]) == 4
