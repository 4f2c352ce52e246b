"""Untrusted repositories and secrets.

A repository is data someone else may have written. Its virtual chunk
containers say where its bytes live; a reader must not follow them to local
files or to hosts the user did not allow. And what we write (repository
config, snapshots, reports, logs) must never carry the credentials the
process happened to have in its environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import EMBEDDINGS, chunk_key, repo_name
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA

YEAR = 2024
BBOX = (0.8, 49.8, 1.0, 50.0)
ZONE = 31


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("untrusted-tree")
    return root, make_tree(root, bbox=BBOX, years=(YEAR,), bands=2)


@pytest.fixture(scope="module")
def nginx(tree: tuple[Path, list[TileSpec]], https: TestCA) -> Iterator[NginxServer]:
    """The tree over HTTPS, as real mirrors serve it."""
    with NginxServer(tree[0], tls=https) as server:
        yield server


@pytest.fixture(scope="module")
def local_index(
    tree: tuple[Path, list[TileSpec]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("local-index")
    assert run_index(IndexOptions(source=str(tree[0]), out=str(out))).exit_code == 0
    return out


@pytest.fixture(scope="module")
def http_index(
    tree: tuple[Path, list[TileSpec]], nginx: NginxServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("http-index")
    opts = IndexOptions(source=nginx.url, out=str(out), manifest=str(tree[0] / "manifest.parquet"))
    assert run_index(opts).exit_code == 0
    return out


def _point_argv(spec: TileSpec, out: Path, *extra: str) -> list[str]:
    return ["point", str(spec.lon), str(spec.lat), "--year", str(YEAR), "--store", str(out),
            "--json", *extra]  # fmt: skip


def test_local_sources_are_not_read_by_default(
    tree: tuple[Path, list[TileSpec]],
    local_index: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """An index the user did not make here (a copy: no permission remembered for it)."""
    import shutil

    root, specs = tree
    spec = specs[0]
    # The user who indexed the tree reads it back without repeating a permission ...
    mine = open_store(str(local_index)).point(spec.lon, spec.lat, YEAR)
    assert mine.shape == (2,)
    # ... and the same index anywhere else is someone else's.
    shutil.copytree(local_index, tmp_path / "theirs")
    local_index = tmp_path / "theirs"
    with pytest.raises(ConfigurationError, match="allow_local_sources") as info:
        open_store(str(local_index)).point(spec.lon, spec.lat, YEAR)
    assert spec.name in str(info.value)
    assert cli_main(_point_argv(spec, local_index)) == 2
    assert "--allow-local-sources" in capsys.readouterr().err
    assert cli_main(_point_argv(spec, local_index, "--allow-local-sources")) == 0
    assert len(json.loads(capsys.readouterr().out)["embedding"]) == 2

    assert cli_main(["info", str(local_index), "--json"]) == 0
    (zone,) = json.loads(capsys.readouterr().out)["zones"]
    assert zone["sources"] == [root.resolve().as_uri() + "/"]
    assert zone["authorised"] == []
    assert cli_main(["info", str(local_index), "--json", "--allow-local-sources"]) == 0
    (zone,) = json.loads(capsys.readouterr().out)["zones"]
    assert zone["authorised"] == zone["sources"]


def test_sources_outside_the_allow_list_are_not_read(
    tree: tuple[Path, list[TileSpec]],
    nginx: NginxServer,
    http_index: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _root, specs = tree
    spec = specs[1]
    nginx.clear_log()
    store = open_store(str(http_index), allowed_sources=["https://tiles.example.org/"])
    with pytest.raises(ConfigurationError, match="not authorised"):
        store.point(spec.lon, spec.lat, YEAR)
    assert nginx.requests() == []  # not one request reached the unlisted source
    argv = _point_argv(spec, http_index, "--allow-source", "https://tiles.example.org/")
    assert cli_main(argv) == 2
    capsys.readouterr()
    assert cli_main(_point_argv(spec, http_index, "--allow-source", nginx.url)) == 0
    capsys.readouterr()
    assert (
        cli_main(["info", str(http_index), "--json", "--allow-source", "https://x.example/"]) == 0
    )
    (zone,) = json.loads(capsys.readouterr().out)["zones"]
    assert zone["sources"] == [nginx.url] and zone["authorised"] == []


def test_a_repo_pointing_at_local_files_cannot_read_them(
    tree: tuple[Path, list[TileSpec]], http_index: Path, tmp_path: Path
) -> None:
    """A crafted repo whose tile chunk points at ``file:///etc/…`` reads nothing from there."""
    import shutil

    _root, specs = tree
    spec = specs[2]
    out = tmp_path / "crafted"
    shutil.copytree(http_index, out)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * 4096)
    prefix = tmp_path.resolve().as_uri() + "/"
    storage = ic.local_filesystem_storage(str(out / repo_name(ZONE)))
    cfg = ic.Repository.fetch_config(storage)
    cfg.set_virtual_chunk_container(
        ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(tmp_path)))
    )
    repo = ic.Repository.open(
        storage,
        config=cfg,
        authorize_virtual_chunk_access={prefix: ic.credentials.LocalFileSystemAccess},
    )
    repo.save_config()
    loc = open_store(str(http_index)).locate(spec.lon, spec.lat, YEAR)
    k = int(loc.facts["emb_chunk_rows"])
    session = repo.writable_session(str(YEAR))
    for i in {0, loc.row // k}:  # the chunk a point read needs, and the first
        key = chunk_key(f"{spec.name}/{EMBEDDINGS}", (i, 0, 0))
        session.store.set_virtual_ref(key, secret.as_uri(), offset=0, length=4096)
    session.commit("point a chunk at a local file")

    store = open_store(str(out))
    assert prefix in store.containers(ZONE)
    # (The copy is not the index the user made: its mirror on loopback needs permission.)
    store = open_store(str(out), allow_private_sources=True)
    # tessera-vz's own reads follow the tiles table to the mirror, never the crafted chunk.
    honest = open_store(str(http_index)).point(spec.lon, spec.lat, YEAR)
    np.testing.assert_array_equal(store.point(spec.lon, spec.lat, YEAR), honest)
    # Through Icechunk (xr.open_zarr, or direct reads off) the crafted chunk is refused.
    with pytest.raises(ConfigurationError, match="not authorised"):
        open_store(str(out), direct_reads=False, allow_private_sources=True).point(
            spec.lon, spec.lat, YEAR
        )
    with pytest.raises(Exception, match="authoriz"):
        store.open_tile(spec.lon, spec.lat, YEAR).embeddings.values  # noqa: B018
    # Allowing only another prefix keeps every container out.
    store = open_store(str(out), allow_local_sources=False, allowed_sources=[prefix[:8] + "nope/"])
    with pytest.raises(ConfigurationError):
        store.point(spec.lon, spec.lat, YEAR)


SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY7TESSERA1",
    "AWS_SECRET_ACCESS_KEY": "fake/Secret+Key/tessera/0123456789abcdefXYZ",
    "AWS_SESSION_TOKEN": "FakeSessionTokenTesseraVZ987654321",
    "GITHUB_TOKEN": "ghp_FakeTesseraTokenAbCdEf0123456789",
    "HF_TOKEN": "hf_FakeTesseraTokenQwErTy0123456789",
}


def test_no_credential_lands_in_repo_report_or_log(
    tree: tuple[Path, list[TileSpec]], nginx: NginxServer, tmp_path: Path
) -> None:
    root, specs = tree
    out = tmp_path / "index"
    env = {**os.environ, **SECRETS}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tessera_vz.cli", "-vv", *argv],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    runs = [
        cli("index", nginx.url, "--out", str(out), "--manifest", str(root / "manifest.parquet"),
            "--json", "--quiet"),
        cli("info", str(out), "--json"),
        cli("verify", str(out), "--json"),
        cli("point", str(specs[0].lon), str(specs[0].lat), "--year", str(YEAR),
            "--store", str(out), "--json"),
    ]  # fmt: skip
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(runs[0].stdout)["indexed"] == 4
    assert "DEBUG" in runs[0].stderr  # the logs really were verbose
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 20
    blobs = [(str(p), p.read_bytes()) for p in written]
    blobs += [
        (f"stdout/stderr of run {i}", (r.stdout + r.stderr).encode()) for i, r in enumerate(runs)
    ]
    for name, value in SECRETS.items():
        for where, data in blobs:
            assert value.encode() not in data, f"{name} leaked into {where}"
    # Also not in the repository config as icechunk reports it.
    cfg = ic.Repository.fetch_config(ic.local_filesystem_storage(str(out / repo_name(ZONE))))
    assert not any(v in repr(cfg) for v in SECRETS.values())
    assert np.isfinite(np.asarray(json.loads(runs[3].stdout)["embedding"], dtype=float)).any()
