"""S3 end to end against a real S3-protocol server (moto) on loopback.

Tiles on S3 (listed, or through a manifest that is itself on S3), the index
on S3, reads from a new process, ETag checksums enforced by the server,
anonymous access, and credentials that never reach the repository, the
report or the logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.errors import ConfigurationError, SourceChangedError
from tessera_vz.core.layout import repo_name
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.repos import container_for, credentials, storage_for
from tessera_vz.core.s3 import s3_settings
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.s3 import ACCESS_KEY, SECRET_KEY, MotoS3
from tessera_vz.testing.tiles import TileSpec, make_tree

YEAR = 2024
BBOX = (0.6, 49.7, 0.8, 49.9)  # 2 x 2 cells in UTM zone 31 north


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("s3tree")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=4, manifest=True)
    assert len(specs) == 4
    return root, specs


def _upload(server: MotoS3, root: Path, bucket: str) -> str:
    server.upload_tree(root, bucket, "tessera/v1")
    return f"s3://{bucket}/tessera/v1"


def _pixel(root: Path, spec: TileSpec, row: int, col: int) -> np.ndarray:
    emb = np.load(root / spec.emb_path, mmap_mode="r")[row, col].astype(np.float32)
    scale = np.float32(np.load(root / spec.scales_path, mmap_mode="r")[row, col])
    return emb * scale


def _probe_point(spec: TileSpec) -> tuple[float, float]:
    """A point well inside a tile, away from the invalid-scale patch."""
    return spec.lon + 0.013, spec.lat - 0.017


def test_settings_from_env_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-2"}
    s = s3_settings(env=env)
    assert (s.endpoint_url, s.region, s.allow_http, s.force_path_style, s.anonymous) == (
        "http://127.0.0.1:9000",
        "eu-west-2",
        True,
        True,
        False,
    )
    # explicit options win over the environment; aliases as obstore spells them
    s = s3_settings({"endpoint": "https://s3.example.org", "skip_signature": True}, env=env)
    assert (s.endpoint_url, s.allow_http, s.anonymous) == ("https://s3.example.org", False, True)
    # plain AWS: no endpoint, virtual-hosted requests, region from the env
    s = s3_settings(env={"AWS_REGION": "us-west-2"})
    assert (s.endpoint_url, s.region, s.force_path_style) == (None, "us-west-2", False)
    # an endpoint alone implies a region S3-compatible servers accept
    assert s3_settings({"endpoint_url": "http://localhost:9000"}, env={}).region == "us-east-1"
    with pytest.raises(ConfigurationError, match="allow_http"):
        s3_settings({"endpoint_url": "http://x:1", "allow_http": False}, env={})
    with pytest.raises(ConfigurationError, match="unknown S3 option"):
        s3_settings({"endpont": "http://x:1"}, env={})
    # explicit keys are kept but never shown
    s = s3_settings({"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}, env={})
    assert SECRET_KEY not in repr(s) and SECRET_KEY not in json.dumps(s.public())
    # the container config a repository saves carries the endpoint, not the keys
    c = container_for(
        "s3://b/p/",
        s3_options={"endpoint_url": "http://127.0.0.1:9000", "secret_access_key": SECRET_KEY},
    )
    assert "127.0.0.1:9000" in repr(c.store) and SECRET_KEY not in repr(c.store)
    creds = credentials(["s3://b/p/", "file:///x/"], ReadOptions.of(s3_options={"anonymous": True}))
    assert list(creds) == ["s3://b/p/"]


def test_index_listed_s3_to_s3_and_read_from_new_process(
    tree: tuple[Path, list[TileSpec]],
    s3_env: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, specs = tree
    source = _upload(s3_env, root, "tiles-listed")
    s3_env.create_bucket("index-listed")
    out = "s3://index-listed/runs/a"
    # Endpoint through the CLI flag this time, not the environment.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    caplog.set_level(logging.DEBUG, logger="tessera_vz")
    code = cli_main(["index", source, "--out", out, "--json", "--s3-endpoint", s3_env.endpoint])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(printed.out)
    assert report["indexed"] == 4 and report["failed"] == []
    assert [(c["zone"], c["year"], c["tag"]) for c in report["commits"]] == [(31, YEAR, "2024-v1")]
    # Credentials never leave the environment: not in output, logs or the bucket.
    assert SECRET_KEY not in printed.out + printed.err + caplog.text
    stored = s3_env.objects("index-listed")
    assert any(k.startswith(f"runs/a/{repo_name(31)}/") for k in stored)
    assert not any(SECRET_KEY.encode() in v or ACCESS_KEY.encode() in v for v in stored.values())

    # The tiles table holds the S3 ETags as checksums.
    store = open_store(out, s3_options={"endpoint_url": s3_env.endpoint})
    assert store.zones() == [31]
    table = store.tiles(YEAR, 31)
    etag = s3_env.client().head_object(
        Bucket="tiles-listed", Key=f"tessera/v1/{specs[0].emb_path}"
    )["ETag"]
    assert etag in set(table["emb_checksum"].values.tolist())
    assert store.containers(31) == [source + "/"]

    for spec in specs:
        lon, lat = _probe_point(spec)
        loc = store.locate(lon, lat, YEAR)
        expected = _pixel(root, spec, loc.row, loc.col)
        np.testing.assert_array_equal(store.point(lon, lat, YEAR), expected)

    # A NEW process, configured only through the environment, reads a pixel.
    env = {**os.environ, **s3_env.env()}
    for spec in specs[-1:]:
        lon, lat = _probe_point(spec)
        proc = subprocess.run(
            [sys.executable, "-m", "tessera_vz.cli", "point", str(lon), str(lat),
             "--year", str(YEAR), "--store", out, "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["tile"] == spec.name
        expected = _pixel(root, spec, doc["row"], doc["col"])
        np.testing.assert_array_equal(np.array(doc["embedding"], dtype=np.float32), expected)

    # `info` over S3 through the CLI.
    assert cli_main(["info", out, "--json", "--s3-endpoint", s3_env.endpoint]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["zones"][0]["years"][0]["tiles"] == 4

    # The table blocks (cold points) are in the bucket; an index that lost them (or was
    # written before them) gets them back from a run with nothing to index.
    tables = f"runs/a/{repo_name(31)}/tessera-tables/{YEAR}/"
    blocks = sorted(s3_env.objects("index-listed", tables))
    assert blocks and blocks[-1].endswith("/index.json")
    s3_env.client().delete_objects(
        Bucket="index-listed", Delete={"Objects": [{"Key": k} for k in blocks]}
    )
    argv = ["index", source, "--out", out, "--json", "--s3-endpoint", s3_env.endpoint]
    assert cli_main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["indexed"] == 0 and again["commits"] == []
    assert sorted(s3_env.objects("index-listed", tables)) == blocks


def test_index_s3_manifest_and_changed_object_fails_loudly(
    tree: tuple[Path, list[TileSpec]], s3_env: MotoS3, tmp_path: Path
) -> None:
    root, specs = tree
    source = _upload(s3_env, root, "tiles-manifest")
    spec = specs[1]
    # An extra object the manifest does not list: a manifest run must not index it.
    s3_env.client().put_object(
        Bucket="tiles-manifest", Key="tessera/v1/2024/grid_9.95_9.95/grid_9.95_9.95.npy", Body=b"x"
    )
    out = tmp_path / "index"
    opts = IndexOptions(source=source, out=str(out), manifest=f"{source}/manifest.parquet")
    report = run_index(opts)
    assert (report.indexed, report.failed) == (4, [])

    store = open_store(str(out))
    lon, lat = _probe_point(spec)
    loc = store.locate(lon, lat, YEAR)
    np.testing.assert_array_equal(store.point(lon, lat, YEAR), _pixel(root, spec, loc.row, loc.col))
    # A window over most of the tile: merged ranges read straight from S3 with
    # the ETag in If-Match, the same bytes as through Icechunk.
    bbox = (spec.lon - 0.04, spec.lat - 0.04, spec.lon + 0.04, spec.lat + 0.04)
    window = store.region(bbox, YEAR, dequantise=False)
    plain = open_store(str(out), direct_reads=False).region(bbox, YEAR, dequantise=False)
    np.testing.assert_array_equal(window.embeddings.values, plain.embeddings.values)
    np.testing.assert_array_equal(window.scales.values, plain.scales.values)

    # Overwrite the embeddings object in place with other bytes: S3 gives it a
    # new ETag, icechunk sends the old one in If-Match, the read fails loudly.
    key = f"tessera/v1/{spec.emb_path}"
    data = bytearray((root / spec.emb_path).read_bytes())
    data[-64:] = bytes(64)
    s3_env.client().put_object(Bucket="tiles-manifest", Key=key, Body=bytes(data))
    fresh = open_store(str(out))
    with pytest.raises(SourceChangedError, match=f"{source}/{spec.emb_path}"):
        fresh.point(lon, lat, YEAR)
    with pytest.raises(SourceChangedError, match=f"{source}/{spec.emb_path}"):
        fresh.region(bbox, YEAR)

    # The manifest does not show the overwrite; re-indexing with reprobe picks
    # up the new ETag and only that tile.
    report = run_index(dataclasses.replace(opts, reprobe=True))
    assert (report.indexed, report.unchanged, report.failed) == (1, 3, [])
    assert open_store(str(out)).point(lon, lat, YEAR).shape == (4,)


def test_anonymous_source_without_credentials(
    tree: tuple[Path, list[TileSpec]],
    s3_env: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A public bucket: no credentials anywhere, unsigned requests only."""
    root, specs = tree
    source = _upload(s3_env, root, "tiles-public")
    s3_env.make_public("tiles-public")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    out = tmp_path / "index"
    code = cli_main(["index", source, "--out", str(out), "--anonymous", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert json.loads(printed.out)["indexed"] == 4
    store = open_store(str(out), s3_options={"anonymous": True})
    spec = specs[2]
    lon, lat = _probe_point(spec)
    loc = store.locate(lon, lat, YEAR)
    np.testing.assert_array_equal(store.point(lon, lat, YEAR), _pixel(root, spec, loc.row, loc.col))
    code = cli_main(
        ["point", str(lon), str(lat), "--year", str(YEAR), "--store", str(out), "--anonymous",
         "--json"]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["tile"] == spec.name


def test_repo_storage_on_s3(s3_env: MotoS3) -> None:
    """storage_for builds icechunk S3 storage from the environment alone."""
    s3_env.create_bucket("bare")
    storage = storage_for("s3://bare/some/prefix/utm05.icechunk")
    ic.Repository.create(storage)
    assert ic.Repository.exists(storage)
    with pytest.raises(ConfigurationError, match="names no bucket"):
        storage_for("s3:///nobucket")
    with pytest.raises(ConfigurationError, match="no zone repositories"):
        open_store("s3://bare/elsewhere")
