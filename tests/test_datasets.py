"""The archive as upstream publishes it: dataset directories, manifests, one dataset per index.

Fixtures are laid out and written as geotessera 0.11's scanners write them
(:mod:`tessera_vz.testing.upstream`: ``npy/v1.1-cam/manifest.parquet`` with
pandas datetime mtimes, naive or tz-aware, and ``s3://`` URIs) and served by
nginx over TLS. Requests are counted in nginx's access log.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.dataset import Dataset, DatasetMismatchError, from_dir_name, parse_dataset
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import TestCA
from tessera_vz.testing.upstream import make_dataset, write_upstream_manifest

YEAR = 2024
BBOX = (0.7, 49.7, 0.9, 49.9)  # 2 x 2 cells in UTM zone 31 north


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``npy/`` with ``v1.1-cam`` (tz-aware mtimes) and ``v1`` (naive), same cells."""
    npy = tmp_path_factory.mktemp("mirror") / "npy"
    make_dataset(npy, "v1.1-cam", bbox=BBOX, bands=2, tz_aware=True)
    make_dataset(npy, "v1", bbox=BBOX, bands=2, tz_aware=False)
    return npy


@pytest.fixture
def mirror(pristine: Path, tmp_path: Path, https: TestCA) -> Iterator[tuple[Path, NginxServer]]:
    """A private copy of ``npy/`` served over HTTPS by nginx."""
    npy = tmp_path / "www" / "npy"
    shutil.copytree(pristine, npy)
    with NginxServer(npy, tls=https) as server:
        yield npy, server


def _requests(server: NginxServer, expected: int) -> list[dict[str, Any]]:
    server.requests(min_count=expected)
    time.sleep(0.2)
    return server.requests()


def _run(source: str, out: Path, **kw: Any) -> dict[str, Any]:
    return run_index(IndexOptions(source=source, out=str(out), **kw)).to_json()


# -- names, as upstream's registry maps them ------------------------------------


def test_dataset_names_follow_upstream() -> None:
    assert from_dir_name("v1") == Dataset("1.0", "vultr")
    assert from_dir_name("v1.1-cam") == Dataset("1.1", "cambridge")
    assert from_dir_name("v2-2B-L~beta1") == Dataset("2.0", "2B-L~beta1")
    assert from_dir_name("tiles") is None
    assert Dataset("1.1", "cambridge").path == "v1.1-cam"
    assert Dataset("1.0", "vultr").version_path == "v1"
    assert parse_dataset("1.1/cambridge") == parse_dataset("v1.1-cam") == parse_dataset("1.1")
    with pytest.raises(ValueError, match="VERSION/VARIANT"):
        parse_dataset("cambridge")


# -- discovery and timestamps ---------------------------------------------------


@pytest.mark.parametrize("dirname", ["v1.1-cam", "v1"])
def test_dataset_directory_needs_no_manifest_option_and_rerun_reads_no_npy(
    mirror: tuple[Path, NginxServer], tmp_path: Path, dirname: str
) -> None:
    """SOURCE/manifest.parquet is found; an unchanged re-run reads no .npy byte.

    ``v1.1-cam`` has tz-aware UTC mtimes (an S3 listing), ``v1`` naive ones
    (a local scan): both are facts a sync compares.
    """
    _npy, server = mirror
    out = tmp_path / "index"
    first = _run(server.url + dirname + "/", out)
    expected = from_dir_name(dirname)
    assert expected is not None
    assert (first["indexed"], first["failed"], first["dataset"]) == (4, [], expected.label)
    server.clear_log()
    again = _run(server.url + dirname + "/", out)
    reqs = _requests(server, 1)
    assert [r["uri"] for r in reqs] == [f"/{dirname}/manifest.parquet"]
    assert not any(r["uri"].endswith(".npy") for r in reqs)
    assert (again["skipped"], again["commits"], again["indexed"]) == (4, [], 0)


def test_relative_manifest_is_looked_up_under_source(
    mirror: tuple[Path, NginxServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--manifest manifest.parquet`` (no such local file) is SOURCE's; the README's example."""
    _npy, server = mirror
    monkeypatch.chdir(tmp_path)
    code = cli_main(["index", server.url + "v1.1-cam/", "--out", "idx", "--manifest",
                     "manifest.parquet", "--json"])  # fmt: skip
    assert code == 0
    zones = json.loads((tmp_path / "idx" / "zones.json").read_text())
    assert zones["dataset"] == {"version": "1.1", "variant": "cambridge", "path": "v1.1-cam"}
    assert zones["source"] == server.url + "v1.1-cam/"


def test_https_source_without_manifest_says_what_to_pass(
    mirror: tuple[Path, NginxServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npy, server = mirror
    (npy / "v1" / "manifest.parquet").unlink()
    code = cli_main(["index", server.url + "v1/", "--out", str(tmp_path / "idx")])
    assert code == 2
    assert "no manifest.parquet; pass --manifest" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


def test_float_seconds_and_timestamps_of_any_unit_are_facts(tmp_path: Path) -> None:
    """A manifest's mtimes as float seconds, or timestamps in s/ms/us/ns, naive or UTC.

    Each is indexed, then re-run unchanged over a local tree: nothing is probed.
    """
    root, specs = make_dataset(tmp_path / "npy", "v1.1-cam", bbox=BBOX, bands=2)
    base = pq.read_table(root / "manifest.parquet")
    mt = base.column("grid_mtime")
    forms = {
        "seconds": lambda c: pa.compute.divide(
            pa.compute.cast(pa.compute.cast(c, pa.timestamp("us")), pa.int64()).cast(pa.float64()),
            1e6,
        ),
        "s-naive": lambda c: pa.compute.cast(c, pa.timestamp("s"), safe=False),
        "ms-utc": lambda c: pa.compute.cast(c, pa.timestamp("ms", tz="UTC"), safe=False),
        "ns-tokyo": lambda c: c.cast(pa.timestamp("ns", tz="Asia/Tokyo")),
    }
    assert mt.type == pa.timestamp("us", tz="UTC")
    for name, form in forms.items():
        t = base
        for col in ("grid_mtime", "scales_mtime"):
            t = t.set_column(t.schema.get_field_index(col), col, form(t.column(col)))
        manifest = tmp_path / f"{name}.parquet"
        pq.write_table(t, manifest)
        out = tmp_path / f"idx-{name}"
        opts = {"manifest": str(manifest), "allowed_sources": []}
        assert _run(str(root), out, **opts)["indexed"] == len(specs), name
        again = _run(str(root), out, **opts)
        assert (again["skipped"], again["requests"], again["commits"]) == (len(specs), 0, []), name


# -- one dataset per index --------------------------------------------------------


def test_another_dataset_or_tree_is_refused_and_nothing_changes(
    mirror: tuple[Path, NginxServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npy, server = mirror
    out = tmp_path / "index"
    assert _run(server.url + "v1.1-cam/", out)["indexed"] == 4
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    store = open_store(str(out))
    values = store.point(0.75, 49.75, YEAR)

    code = cli_main(["index", server.url + "v1/", "--out", str(out)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert "1.1/cambridge" in line and "1.0/vultr" in line
    # Another tree of the same dataset (a copy, its manifest naming the same dataset).
    shutil.copytree(npy / "v1.1-cam", tmp_path / "copy" / "v1.1-cam")
    code = cli_main(["index", str(tmp_path / "copy" / "v1.1-cam"), "--out", str(out)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and server.url + "v1.1-cam/" in line and "--move-source" in line
    after = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert after == before
    assert np.array_equal(open_store(str(out)).point(0.75, 49.75, YEAR), values, equal_nan=True)


def test_move_source_to_another_mirror_of_the_same_dataset(
    mirror: tuple[Path, NginxServer], tmp_path: Path, https: TestCA
) -> None:
    npy, server = mirror
    out = tmp_path / "index"
    assert _run(server.url + "v1.1-cam/", out)["indexed"] == 4
    other = tmp_path / "other" / "npy"
    shutil.copytree(npy / "v1.1-cam", other / "v1.1-cam")
    with NginxServer(other, tls=https) as second:
        with pytest.raises(DatasetMismatchError, match="--move-source"):
            _run(second.url + "v1.1-cam/", out)
        doc = _run(second.url + "v1.1-cam/", out, move_source=True)
        assert doc["failed"] == [] and doc["dataset"] == "1.1/cambridge"
        zones = json.loads((out / "zones.json").read_text())
        assert zones["source"] == second.url + "v1.1-cam/"
        # Another dataset stays refused, move or not.
        with pytest.raises(DatasetMismatchError, match=r"1\.0/vultr"):
            _run(server.url + "v1/", out, move_source=True)


def test_a_manifest_of_several_datasets_is_filtered_to_the_one_asked(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=2, manifest=False)
    a = write_upstream_manifest(root, specs[:3], Dataset("1.1", "cambridge"), path=tmp_path / "a")
    b = write_upstream_manifest(root, specs[3:], Dataset("1.0", "vultr"), path=tmp_path / "b")
    both = pa.concat_tables([pq.read_table(a), pq.read_table(b)])
    pq.write_table(both, root / "manifest.parquet")
    with pytest.raises(ValueError, match="several datasets"):
        _run(str(root), tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    doc = _run(str(root), tmp_path / "idx", dataset="1.0/vultr")
    assert (doc["indexed"], doc["dataset"]) == (1, "1.0/vultr")
    with pytest.raises(DatasetMismatchError, match=r"2\.0/2B-L~beta1"):
        _run(str(root), tmp_path / "idx2", dataset="2.0/2B-L~beta1")


def test_a_tree_without_a_name_takes_dataset_option(tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    make_tree(root, bbox=BBOX, years=(YEAR,), bands=2, manifest=False)
    doc = _run(str(root), tmp_path / "idx", dataset="1.1/cambridge")
    assert doc["dataset"] == "1.1/cambridge"
    unnamed = _run(str(root), tmp_path / "idx-unknown")
    assert unnamed["dataset"] == "unknown"


# -- every output names the dataset -------------------------------------------------


def test_every_output_names_the_dataset(
    mirror: tuple[Path, NginxServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Points table, GeoTIFF, Zarr, NetCDF, STAC items, the viewer's /api/info and ``info``."""
    import pandas as pd
    import pystac
    import rasterio
    import xarray as xr

    from tessera_vz.export import write_region
    from tessera_vz.reader import same_dataset
    from tessera_vz.serve import create_app

    from .test_serve_api import running

    _npy, server = mirror
    source = server.url + "v1.1-cam/"
    out = tmp_path / "index"
    assert _run(source, out)["indexed"] == 4
    store = open_store(str(out))
    want = {
        "tessera:dataset": "1.1/cambridge",
        "tessera:dataset_version": "1.1",
        "tessera:dataset_version_path": "v1.1",
        "tessera:dataset_variant": "cambridge",
        "tessera:dataset_path": "v1.1-cam",
        "tessera:source": source,
    }
    assert store.dataset() == want

    table = store.sample(pd.DataFrame({"lon": [0.75, 0.85], "lat": [49.75, 49.85]}), YEAR)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    assert {k: meta[k] for k in want} == want
    pq.write_table(table, tmp_path / "p.parquet")
    assert pq.read_schema(tmp_path / "p.parquet").metadata[b"tessera:dataset"] == b"1.1/cambridge"

    region = store.region((0.74, 49.74, 0.76, 49.76), YEAR)
    assert {k: region.attrs[k] for k in want} == want
    write_region(region, tmp_path / "r.tif")
    with rasterio.open(tmp_path / "r.tif") as f:
        tags = f.tags()
    assert tags["TESSERA_DATASET_VERSION"] == "1.1"
    assert tags["TESSERA_DATASET_VERSION_PATH"] == "v1.1"
    assert tags["TESSERA_DATASET_VARIANT"] == "cambridge"
    assert tags["TESSERA_DATASET_PATH"] == "v1.1-cam"
    assert tags["TESSERA_SOURCE"] == source
    write_region(region, tmp_path / "r.zarr")
    with xr.open_dataset(tmp_path / "r.zarr") as back:
        assert {k: back.attrs[k] for k in want} == want

    assert cli_main(["catalog", str(out), "--out", str(tmp_path / "cat")]) == 0
    items = list(pystac.Collection.from_file(str(tmp_path / "cat" / "stac" / "collection.json"))
                 .get_items(recursive=True))  # fmt: skip
    assert len(items) == 4
    assert all({k: it.properties[k] for k in want} == want for it in items)

    with running(create_app(store)) as url:
        import urllib.request

        with urllib.request.urlopen(url + "/api/info") as r:
            assert json.load(r)["dataset"] == want

    capsys.readouterr()
    assert cli_main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == want

    # Results of two datasets are never combined.
    other = tmp_path / "index-v1"
    assert _run(server.url + "v1/", other)["dataset"] == "1.0/vultr"
    v1 = open_store(str(other)).region((0.74, 49.74, 0.76, 49.76), YEAR)
    assert same_dataset(region, table) == "1.1/cambridge"
    with pytest.raises(DatasetMismatchError, match=r"1\.0/vultr and 1\.1/cambridge"):
        same_dataset(region, v1)


def test_an_index_without_a_recorded_dataset_reads_as_unknown(
    mirror: tuple[Path, NginxServer], tmp_path: Path
) -> None:
    """An index written before datasets were recorded reads, as ``unknown``, until re-indexed."""
    import icechunk as ic
    import zarr

    _npy, server = mirror
    source = server.url + "v1.1-cam/"
    out = tmp_path / "index"
    _run(source, out)
    repo = ic.Repository.open(ic.local_filesystem_storage(str(out / "utm31.icechunk")))
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="a", zarr_format=3)
    attrs = {k: v for k, v in group.attrs.items() if k not in ("tessera:dataset", "tessera:source")}
    group.attrs.put(attrs)  # as an older tessera-vz left it
    session.commit("an older index")
    store = open_store(str(out))
    assert store.dataset()["tessera:dataset"] == "unknown"
    assert np.isfinite(store.point(0.75, 49.75, YEAR)).any()
    # The same tree again records its dataset, probing nothing.
    doc = _run(source, out)
    assert (doc["dataset"], doc["indexed"], doc["skipped"]) == ("1.1/cambridge", 0, 4)
    assert open_store(str(out)).dataset()["tessera:dataset"] == "1.1/cambridge"


def test_netcdf_names_the_dataset(mirror: tuple[Path, NginxServer], tmp_path: Path) -> None:
    """A region written as NetCDF keeps the dataset attributes (h5netcdf, a test dependency)."""
    import xarray as xr

    from tessera_vz.export import write_region

    _npy, server = mirror
    out = tmp_path / "index"
    _run(server.url + "v1.1-cam/", out)
    region = open_store(str(out)).region((0.74, 49.74, 0.76, 49.76), YEAR)
    write_region(region, tmp_path / "r.nc")
    with xr.open_dataset(tmp_path / "r.nc") as back:
        assert back.attrs["tessera:dataset"] == "1.1/cambridge"
        assert back.attrs["tessera:dataset_path"] == "v1.1-cam"
