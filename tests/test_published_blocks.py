"""A cold point on a published index reads the table blocks near it, never the snapshot.

Every index run writes the year's tiles table also as one-degree blocks
beside the repository, named by the snapshot it published
(:mod:`tessera_vz.core.table_blocks`). A cold reader that resolved the
branch tip fetches the block list and the blocks around the point, so its
requests and bytes do not grow with the zone. Blocks that are missing, or
cut from another snapshot, are ignored (with a log line) and the point is
read from the repository's table as before: the value is np.load's either way.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import pytest

from tessera_vz.core import published
from tessera_vz.core import table_blocks as tb
from tessera_vz.core.quantisation import dequantise
from tessera_vz.core.table import COLUMNS, TileColumns
from tessera_vz.indexer.table_sidecar import write_table_blocks
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import TestCA

from .conftest import published_over_https

YEAR = 2024
#: Two one-degree blocks of zone 31 (the box straddles 45 N).
BOX = (4.6, 44.8, 4.9, 45.2)
OTHER = "AAAAAAAAAAAAAAAAAAAA"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    www = tmp_path_factory.mktemp("www")
    specs = make_tree(www / "tiles", bbox=BOX, years=(YEAR,), bands=4)
    with published_over_https(www, https) as server:
        yield {"www": www, "server": server, "specs": specs}


@pytest.fixture(autouse=True)
def fresh_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A new process: no repository proxy yet, an empty cache folder."""
    monkeypatch.setattr(published, "_PROXY", None)
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(tmp_path / "cache"))


def tip(index: Path) -> str:
    repo = ic.Repository.open(ic.local_filesystem_storage(str(index / "utm31.icechunk")))
    return str(repo.lookup_branch(str(YEAR)))


def copy_index(site: dict[str, Any], name: str) -> Path:
    """A copy of the published index, served at ``/<name>/``, to tamper with."""
    target = site["www"] / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(site["www"] / "index", target)
    return target


def index_paths(server: NginxServer, prefix: str) -> list[str]:
    return [r["uri"].split(f"/{prefix}/", 1)[1] for r in server.requests()
            if r["uri"].startswith(f"/{prefix}/")]  # fmt: skip


def read_point(site: dict[str, Any], prefix: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A cold point at the box's middle tile: (value, np.load's value, index paths asked)."""
    server: NginxServer = site["server"]
    spec = next(s for s in site["specs"] if (s.lon, s.lat) == (4.75, 44.95))
    lon, lat = spec.lon + 0.021, spec.lat + 0.03  # within 0.1 degree of 45 N: two blocks
    server.clear_log()
    store = open_store(server.url + f"{prefix}/", allow_private_sources=True)
    value = store.point(lon, lat, YEAR)
    asked = index_paths(server, prefix)
    loc = store.locate(lon, lat, YEAR)
    tiles = site["www"] / "tiles"
    emb = np.load(tiles / spec.emb_path, mmap_mode="r")[loc.row, loc.col]
    scale = np.load(tiles / spec.scales_path, mmap_mode="r")[loc.row, loc.col]
    assert loc.name == spec.name
    return value, dequantise(np.asarray(emb)[None], np.asarray(scale)[None])[0], asked


def test_every_run_writes_the_tip_s_blocks_and_a_cold_point_reads_no_snapshot(
    site: dict[str, Any],
) -> None:
    index = site["www"] / "index"
    snapshot = tip(index)
    folder = index / "utm31.icechunk" / tb.FOLDER / str(YEAR)
    assert [p.name for p in folder.iterdir()] == [snapshot]
    assert sorted(p.name for p in (folder / snapshot).iterdir()) == [
        "b4_44.npz", "b4_45.npz", "index.json",
    ]  # fmt: skip
    value, want, asked = read_point(site, "index")
    np.testing.assert_array_equal(value, want)
    assert not [p for p in asked if "/snapshots/" in p or "/manifests/" in p], asked
    blocks = f"utm31.icechunk/{tb.folder(YEAR, snapshot)}"
    assert sorted(asked) == sorted([
        "zones.json", "utm31.icechunk/repo", f"{blocks}/index.json",
        f"{blocks}/b4_44.npz", f"{blocks}/b4_45.npz",
    ])  # fmt: skip


def test_missing_blocks_fall_back_to_the_repository_s_table(site: dict[str, Any]) -> None:
    index = copy_index(site, "index-old")
    shutil.rmtree(index / "utm31.icechunk" / tb.FOLDER)  # an index written before blocks
    value, want, asked = read_point(site, "index-old")
    np.testing.assert_array_equal(value, want)
    assert any("/snapshots/" in p for p in asked), asked


def test_a_run_with_nothing_to_do_gives_an_older_index_its_blocks(site: dict[str, Any]) -> None:
    from tessera_vz.indexer.run import IndexOptions, run_index

    index = copy_index(site, "index-rerun")
    shutil.rmtree(index / "utm31.icechunk" / tb.FOLDER)  # an index written before blocks
    before = tip(index)
    tiles = site["www"] / "tiles"
    report = run_index(IndexOptions(source=site["server"].url + "tiles/", out=str(index),
                                    manifest=str(tiles / "manifest.parquet")))  # fmt: skip
    assert report.exit_code == 0 and not report.commits and report.indexed == 0
    assert tip(index) == before  # nothing committed: the blocks are of the same tip
    folder = index / "utm31.icechunk" / tb.folder(YEAR, before)
    assert sorted(p.name for p in folder.iterdir()) == ["b4_44.npz", "b4_45.npz", "index.json"]
    value, want, asked = read_point(site, "index-rerun")
    np.testing.assert_array_equal(value, want)
    assert not [p for p in asked if "/snapshots/" in p or "/manifests/" in p], asked
    # And the run after that finds them: nothing is written again.
    stamp = (folder / "index.json").stat().st_mtime_ns
    run_index(IndexOptions(source=site["server"].url + "tiles/", out=str(index),
                           manifest=str(tiles / "manifest.parquet")))  # fmt: skip
    assert (folder / "index.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("forged", ["index.json", "b4_45.npz"])
def test_blocks_of_another_snapshot_are_ignored_with_a_log_line(
    site: dict[str, Any], forged: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    index = copy_index(site, "index-forged")
    snapshot = tip(index)
    ours = index / "utm31.icechunk" / tb.folder(YEAR, snapshot)
    names = [s.name for s in site["specs"]]
    rows = {n: {c: np.zeros((), d if d != "U" else "<U1").item() for c, d in COLUMNS.items()}
            for n in names}  # fmt: skip
    for n, s in zip(names, site["specs"], strict=True):
        rows[n].update(lon=s.lon, lat=s.lat)
    assert write_table_blocks(str(tmp_path), 31, YEAR, OTHER, rows)  # another snapshot's blocks
    theirs = tmp_path / "utm31.icechunk" / tb.folder(YEAR, OTHER)
    shutil.copy(theirs / forged, ours / forged)
    with caplog.at_level(logging.WARNING, logger="tessera_vz.reader.table_near"):
        value, want, asked = read_point(site, "index-forged")
    np.testing.assert_array_equal(value, want)
    assert any("/snapshots/" in p for p in asked), asked
    said = [r.getMessage() for r in caplog.records if "ignoring the table blocks" in r.getMessage()]
    assert said and OTHER in said[0] and snapshot in said[0], said


def test_a_block_is_checked_before_its_rows_are_used() -> None:
    snapshot = "C9SG2WX7K50P81ZFZT0G"
    cols = {c: np.zeros(2, d if d != "U" else "<U4") for c, d in COLUMNS.items()}
    cols["lon"], cols["lat"] = np.array([4.05, 4.95]), np.array([44.05, 44.95])
    good = TileColumns(np.array(["a", "b"]), cols)
    assert tb.decode_block(tb.encode_block(good, snapshot), "b4_44", snapshot).tile.tolist() == [
        "a", "b",
    ]  # fmt: skip
    # Text round-trips (stored as UTF-8); what only the indexer reads is left out.
    cols["emb_path"] = np.array(["2024/grid_4.05_44.05/ü.npy", "x"])
    cols["emb_listed"] = np.array(["size=1;mtime=2", "size=3;mtime=4"])
    back = tb.decode_block(tb.encode_block(good, snapshot), "b4_44", snapshot)
    assert back.data["emb_path"].tolist() == cols["emb_path"].tolist()
    assert back.data["emb_listed"].tolist() == ["", ""]
    for c in COLUMNS:
        if c != "emb_listed":
            np.testing.assert_array_equal(back.data[c], cols[c])
    with pytest.raises(ValueError, match="outside its square"):
        tb.decode_block(tb.encode_block(good, snapshot), "b4_45", snapshot)
    with pytest.raises(ValueError, match="cut from snapshot"):
        tb.decode_block(tb.encode_block(good, snapshot), "b4_44", OTHER)
    with pytest.raises(ValueError, match="not a readable block"):
        tb.decode_block(b"PK\x03\x04 not a zip", "b4_44", snapshot)
    doc = tb.index_document(31, YEAR, snapshot, 2, ["b4_44"])
    assert tb.parse_index(doc, 31, YEAR, snapshot) == {"b4_44"}
    with pytest.raises(ValueError, match="describes zone"):
        tb.parse_index(doc, 32, YEAR, snapshot)
    # Most points need one block; a cell on a block's edge two or four; none outside the zone.
    assert tb.blocks_near(4.53, 44.52, 31) == ["b4_44"]
    assert tb.blocks_near(4.97, 44.97, 31) == ["b4_44", "b4_45", "b5_44", "b5_45"]
    assert tb.blocks_near(5.97, 44.5, 31) == ["b5_44"]  # 6 E is zone 32's


def test_a_block_whose_array_claims_more_than_it_holds_is_refused() -> None:
    import io
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(3, "f8"))
    header["shape"] = (1 << 40,)  # 8 TB claimed in a few bytes
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lon.npy", npy.getvalue() + b"\0" * 24)
    with pytest.raises(ValueError, match="claims more than it holds"):
        tb.decode_block(buf.getvalue(), "b4_44", "C9SG2WX7K50P81ZFZT0G")
