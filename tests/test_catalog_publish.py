"""A catalog published as it is written: by a stock web server, beside its index.

The catalog and the index are written under a normal umask (022) into one
folder, which a TLS nginx serves with its workers as ``nobody``, as a packaged
nginx runs: every catalog file answers 200 with its bytes (a file written
0600 would be 403, shown by a control). pystac reads the collection over
HTTPS and validates every Item; each Item's ``index`` asset, relative to the
Item, resolves to the index on the same server, which opens and reads the
point that ``np.load`` of the source gives. ``--base-url`` puts the links
under the index's published address instead. ``coverage.png`` of a 0.3
degree dataset fits it, with land and the coast drawn where Natural Earth
has them; the GeoParquet tables leave the CRS to GeoParquet's default,
which geopandas and DuckDB read as OGC:CRS84.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import shapely
from PIL import Image
from pystac.validation import JsonSchemaSTACValidator, set_validator

from tessera_vz.catalog import CatalogOptions, build_catalog
from tessera_vz.catalog.coverage import BACKGROUND, COAST_COLOUR, LAND_COLOUR, PANELS_KEY
from tessera_vz.catalog.stac import PROJECTION_EXTENSION
from tessera_vz.cli import main as cli
from tessera_vz.core.coastline import land_polygons
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree
from tests.crs84 import is_crs84

HERE = Path(__file__).parent
YEAR = 2024
#: Tiles on the Normandy coast near Dieppe: land to the south, the Channel to the north.
BBOX = (0.7, 49.7, 1.0, 50.0)


@pytest.fixture(scope="module")
def site(https: Any) -> Iterator[dict[str, Any]]:
    """A folder nobody can read into: the index and its catalog, written under umask 022."""
    base = Path(tempfile.mkdtemp(prefix="tessera-vz-publish-", dir="/tmp"))
    base.chmod(0o755)  # mkdtemp makes 0700; a web server's folder is traversable
    old = os.umask(0o022)
    try:
        specs = make_tree(base / "src", bbox=BBOX, years=(YEAR,), bands=4, manifest=False)
        www = base / "www"
        www.mkdir()
        assert not run_index(IndexOptions(source=str(base / "src"), out=str(www / "index"))).failed
        report = build_catalog(CatalogOptions(store=str(www / "index"), out=str(www / "catalog"),
                                              allow_local_sources=True))  # fmt: skip
        assert report.exit_code == 0 and report.tiles == len(specs)
    finally:
        os.umask(old)
    group = "nogroup" if _group_exists("nogroup") else "nobody"
    server = NginxServer(www, tls=https, worker_user=f"nobody {group}").start()
    try:
        yield {"base": base, "www": www, "specs": specs, "server": server}
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _get(url: str) -> tuple[int, bytes]:
    """GET over HTTPS, trusting the test CA through SSL_CERT_FILE (as a user's client would)."""
    context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.fixture
def stac_over_https(site: dict[str, Any]) -> Iterator[None]:
    """pystac reads the served catalog; schemas come from local files, never the network."""
    real = pystac.stac_io.DefaultStacIO.read_text_from_href
    ours = site["server"].url

    def read(self: Any, href: str) -> str:
        if href.startswith(ours):
            status, body = _get(href)
            assert status == 200, href
            return body.decode()
        if urlsplit(href).scheme in ("http", "https"):
            raise AssertionError(f"pystac tried to fetch {href} over the network")
        return str(real(self, href))

    mp = pytest.MonkeyPatch()
    mp.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", read)
    validator = JsonSchemaSTACValidator()
    schema = json.loads((HERE / "schemas" / "projection-v2.0.0.json").read_text())
    validator.schema_cache[PROJECTION_EXTENSION] = schema
    set_validator(validator)
    yield
    set_validator(JsonSchemaSTACValidator())
    mp.undo()


def test_every_catalog_file_is_served(site: dict[str, Any]) -> None:
    """World-readable files (umask 022 gives 0644): nginx's `nobody` worker serves each, 200."""
    www, server = site["www"], site["server"]
    files = [p for p in (www / "catalog").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {"tiles.parquet", "coverage.png", "collection.json", "items.parquet"} <= {
        p.name for p in files
    }
    assert len(files) >= len(site["specs"]) + 5
    for path in files:
        status, body = _get(server.url + path.relative_to(www).as_posix())
        assert status == 200, (path, oct(path.stat().st_mode))
        assert body == path.read_bytes()
    # The control: the same server refuses a file only its owner may read.
    private = www / "catalog" / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    assert _get(server.url + "catalog/private.json")[0] == 403
    private.unlink()


def test_published_catalog_validates_and_finds_its_index(
    site: dict[str, Any], stac_over_https: None
) -> None:
    server, specs = site["server"], site["specs"]
    coll = pystac.Collection.from_file(server.url + "catalog/stac/collection.json")
    coll.validate_all()
    items = list(coll.get_items(recursive=True))
    assert len(items) == len(specs)
    local = str(site["www"] / "index")
    for item in items:
        href = item.assets["index"].href
        assert href.startswith("../") and local not in href  # no local path leaks
        zone = item.properties["tessera:zone"]
        assert (
            item.assets["index"].get_absolute_href() == f"{server.url}index/utm{zone:02d}.icechunk"
        )
    # The index beside the catalog opens from the server and reads what np.load reads.
    remote = open_store(server.url + "index", allow_local_sources=True)
    spec: TileSpec = specs[len(specs) // 2]
    loc = remote.locate(spec.lon, spec.lat, YEAR)
    root = site["base"] / "src"
    emb = np.load(root / spec.emb_path)[loc.row, loc.col].astype(np.float32)
    scale = np.load(root / spec.scales_path)[loc.row, loc.col]
    np.testing.assert_array_equal(remote.point(spec.lon, spec.lat, YEAR), emb * scale)


def test_base_url_puts_links_under_the_published_index(
    site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = str(site["www"] / "index")
    out = tmp_path / "catalog"
    base = "https://data.example.org/tessera/index/"
    argv = ["catalog", index, "--out", str(out), "--allow-local-sources", "--json"]
    assert cli([*argv, "--base-url", base]) == 0
    capsys.readouterr()
    rows = pq.read_table(out / "tiles.parquet", columns=["zone", "repo"]).to_pylist()
    assert {r["repo"] for r in rows} == {f"{base}utm{r['zone']:02d}.icechunk" for r in rows}
    coll = pystac.Collection.from_file(str(out / "stac" / "collection.json"))
    set_validator(_local_validator())
    try:
        coll.validate_all()
    finally:
        set_validator(JsonSchemaSTACValidator())
    hrefs = {it.assets["index"].href for it in coll.get_items(recursive=True)}
    assert hrefs == {f"{base}utm31.icechunk"}
    # Without it again, the links go back to relative: every Item is rewritten.
    assert cli(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["units"]["built"] and doc["items_written"] == len(site["specs"])
    item = json.loads(next((out / "stac").glob("utm31/*/grid_*.json")).read_text())
    assert item["assets"]["index"]["href"].startswith("../../../")
    # A base that is not a URL is refused before anything is read.
    assert cli([*argv, "--base-url", "/srv/www/index"]) == 2
    assert "--base-url must be" in capsys.readouterr().err


def _local_validator() -> JsonSchemaSTACValidator:
    validator = JsonSchemaSTACValidator()
    schema = json.loads((HERE / "schemas" / "projection-v2.0.0.json").read_text())
    validator.schema_cache[PROJECTION_EXTENSION] = schema
    return validator


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_coverage_fits_the_tiles_and_draws_the_coast(site: dict[str, Any]) -> None:
    img = Image.open(site["www"] / "catalog" / "coverage.png")
    img.load()
    (panel,) = json.loads(img.info[PANELS_KEY])["panels"]
    pixels = np.asarray(img.convert("RGB")).astype(int)
    w, s, e, n = panel["extent"]
    # The axes fit the 0.3-degree dataset with a margin, not a continent.
    assert w < BBOX[0] and s < BBOX[1] and e > BBOX[2] and n > BBOX[3]
    assert e - w <= 1.0 and n - s <= 1.0, panel["extent"]
    x0, y0, x1, y1 = panel["pixels"]

    def colour_at(lon: float, lat: float) -> np.ndarray:
        x = x0 + (lon - w) / (e - w) * (x1 - x0)
        y = y0 + (n - lat) / (n - s) * (y1 - y0)
        return pixels[int(y), int(x)]

    def nearest(c: np.ndarray) -> str:
        # The coastline is thin and antialiased: any pixel well darker than land is on it.
        if c.sum() < _rgb(LAND_COLOUR).sum() - 60:
            assert c.sum() >= _rgb(COAST_COLOUR).sum() - 10, c
            return "coast"
        named = {"land": LAND_COLOUR, "sea": BACKGROUND}
        return min(named, key=lambda k: int(np.abs(c - _rgb(named[k])).sum()))

    # Along a meridian east of the tiles: land, then the coast, then the Channel, where
    # the shipped Natural Earth layer puts the coastline.
    lon = BBOX[2] + 0.08
    land = shapely.union_all(land_polygons((w, s, e, n)))
    crossing = land.intersection(shapely.LineString([(lon, s), (lon, n)]))
    coast_lat = max(y for _, y in shapely.get_coordinates(crossing))
    assert s + 0.05 < coast_lat < n - 0.05
    lats = np.linspace(s + 0.01, n - 0.01, 400)
    seen = [nearest(colour_at(lon, lat)) for lat in lats]
    for lat, what in zip(lats, seen, strict=True):
        if lat < coast_lat - 0.02:
            assert what in ("land", "coast"), (lat, what)
        elif lat > coast_lat + 0.02:
            assert what == "sea", (lat, what)
    near = [what for lat, what in zip(lats, seen, strict=True) if abs(lat - coast_lat) < 0.02]
    assert "coast" in near, near  # the coastline is drawn, not only a change of fill


def test_geoparquet_leaves_the_crs_to_the_default(
    site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tiles.parquet and a points table: no `crs` (OGC:CRS84), read so by geopandas and DuckDB."""
    csv = tmp_path / "pts.csv"
    spec = site["specs"][0]
    csv.write_text(f"lon,lat\n{spec.lon},{spec.lat}\n")
    points = tmp_path / "pts.parquet"
    assert cli(["points", str(csv), "--year", str(YEAR), "--store", str(site["www"] / "index"),
                "--out", str(points), "--allow-local-sources", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    for path in (site["www"] / "catalog" / "tiles.parquet", points):
        geo = json.loads(pq.read_schema(path).metadata[b"geo"])
        assert "crs" not in geo["columns"]["geometry"], path
        gdf = gpd.read_parquet(path)
        assert is_crs84(gdf.crs), gdf.crs
        x, y = gdf.geometry.iloc[0].representative_point().coords[0]
        assert BBOX[0] - 0.1 < x < BBOX[2] + 0.1 and BBOX[1] - 0.1 < y < BBOX[3] + 0.1  # lon, lat
        kind = duckdb.sql(f"DESCRIBE SELECT geometry FROM '{path}'").fetchall()[0][1]
        assert kind == "GEOMETRY('OGC:CRS84')", kind
