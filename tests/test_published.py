"""An index published on the web server that serves the tiles, read over https://.

The index folder is copied next to the tiles under nginx's root (as a mirror
operator would rsync it); readers open ``https://…/index/`` through the
``zones.json`` every index run writes, with Icechunk's read-only HTTP storage,
and read exactly what a local copy reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import ZONE_LIST
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import TestCA

from .conftest import published_over_https
from .test_reader import _check_region, expected_at

YEAR = 2024
BBOX = (5.8, -0.1, 6.2, 0.1)  # zones 31 and 32, both sides of the equator


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    www = tmp_path_factory.mktemp("www")
    specs = make_tree(www / "tiles", bbox=BBOX, years=(YEAR,), bands=4)
    with published_over_https(www, https) as server:
        yield {
            "www": www, "server": server, "url": server.url + "index/",
            "specs": {(s.year, s.name): s for s in specs}, "list": specs,
        }  # fmt: skip


def test_every_run_writes_the_zone_list(site: dict[str, Any]) -> None:
    doc = json.loads((site["www"] / "index" / ZONE_LIST).read_text())
    assert [z["zone"] for z in doc["zones"]] == [31, 32]
    assert [z["repo"] for z in doc["zones"]] == ["utm31.icechunk", "utm32.icechunk"]
    # A run that changes nothing still rewrites it from the repositories there.
    (site["www"] / "index" / ZONE_LIST).unlink()
    again = run_index(
        IndexOptions(source=site["server"].url + "tiles/", out=str(site["www"] / "index"),
                     manifest=str(site["www"] / "tiles" / "manifest.parquet"))
    )  # fmt: skip
    assert again.commits == []
    assert json.loads((site["www"] / "index" / ZONE_LIST).read_text())["zones"] == doc["zones"]


def test_a_published_index_reads_what_the_local_copy_reads(site: dict[str, Any]) -> None:
    local = open_store(str(site["www"] / "index"))
    # The tiles are on loopback: a published index reads them only with permission.
    remote = open_store(site["url"], allow_private_sources=True)
    assert remote.zones() == local.zones() == [31, 32]
    assert remote.years() == [YEAR]
    rng = np.random.default_rng(3)
    lons, lats = rng.uniform(5.8, 6.2, 300), rng.uniform(-0.1, 0.1, 300)
    got = remote.points(lons, lats, YEAR)
    np.testing.assert_array_equal(got, local.points(lons, lats, YEAR))
    for i in range(0, lons.size, 7):
        np.testing.assert_array_equal(got[i], expected_at(site["specs"], YEAR, lons[i], lats[i]))
    ds = remote.region((5.82, -0.04, 5.96, 0.04), YEAR)
    assert _check_region(site, ds, YEAR, every=4) > 500
    spec = site["list"][0]
    tile = remote.open_tile(spec.lon, spec.lat, YEAR)
    np.testing.assert_array_equal(
        tile.embeddings.values, local.open_tile(spec.lon, spec.lat, YEAR).embeddings.values
    )


def test_the_tiles_table_cache_serves_a_second_reader(site: dict[str, Any]) -> None:
    server: NginxServer = site["server"]
    spec = site["list"][1]
    open_store(site["url"], allow_private_sources=True).point(
        spec.lon, spec.lat, YEAR
    )  # fills the cache
    server.clear_log()
    open_store(site["url"], allow_private_sources=True).point(spec.lon, spec.lat, YEAR)
    tables = [r for r in server.requests() if "/index/" in r["uri"] and "/tiles/" in r["uri"]]
    assert tables == [], tables  # the tiles group of the repo was not read again


def test_the_cli_reads_a_published_index(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = site["list"][2]
    argv = ["point", str(spec.lon), str(spec.lat), "--year", str(YEAR), "--json"]
    assert cli_main([*argv, "--store", site["url"], "--allow-private"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert cli_main([*argv, "--store", str(site["www"] / "index")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert remote["embedding"] == local["embedding"] and remote["tile"] == spec.name
    assert cli_main(["info", site["url"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [z["zone"] for z in info["zones"]] == [31, 32]


def test_a_published_index_without_or_with_a_crafted_zone_list_is_refused(
    site: dict[str, Any], tmp_path: Path
) -> None:
    copy = site["www"] / "copy"
    shutil.copytree(site["www"] / "index", copy)
    try:
        (copy / ZONE_LIST).unlink()
        with pytest.raises(ConfigurationError, match=r"zones\.json"):
            open_store(site["server"].url + "copy/")
        crafted = {"format": "tessera-vz zone list", "version": 1,
                   "zones": [{"zone": 31, "repo": "../index/utm31.icechunk"}]}  # fmt: skip
        (copy / ZONE_LIST).write_text(json.dumps(crafted))
        with pytest.raises(ConfigurationError, match="not a tessera-vz zone list"):
            open_store(site["server"].url + "copy/")
    finally:
        shutil.rmtree(copy)


def test_a_catalog_of_a_published_index(
    site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import geopandas as gpd

    out = tmp_path / "catalog"
    assert cli_main(["catalog", site["url"], "--out", str(out), "--json", "--quiet"]) == 0
    capsys.readouterr()
    tiles = gpd.read_parquet(out / "tiles.parquet")
    assert sorted(tiles["tile"]) == sorted(s.name for s in site["list"])
    assert all(str(r).startswith(site["url"]) for r in tiles["repo"])
