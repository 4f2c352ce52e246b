"""The viewer at archive size: counts, coverage and gaps without reading every tiles table.

A small two-zone, two-year index is written by the real indexer, which
records each zone-year's cells in the zone's repository (branch ``coverage``). The viewer must then
answer ``/api/info``, the coverage raster, gaps and footprints in a bbox
without loading any tiles table (none lands in the table cache), give the
same answers as when it computes them from the tables (records removed, or
a hostile record refused), keep low-zoom coverage a fixed-size PNG whatever
the tile count, and cap footprint answers. Gaps, now whole-array operations,
equal the former set-based rule on random layouts.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import pytest
import zarr
from PIL import Image

from tessera_vz.core import cells
from tessera_vz.core.layout import repo_name
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.serve import Limits, create_app
from tessera_vz.serve.coverage import Coverage, _gap_masks
from tessera_vz.serve.raster import ALPHA, TILE, Pyramid, tile_png
from tessera_vz.testing.tiles import cell_centres, make_tree

from .test_serve_api import running

#: 2024: zone 31, a 4x3 block with one hole; zone 32, a 2x2 block. 2025: zone 31's top row.
Z31 = (2.0, 45.0, 2.4, 45.3)
HOLE = (2.15, 45.15)
Z32 = (7.0, 45.0, 7.2, 45.2)
TOP = (2.0, 45.2, 2.4, 45.3)


#: Index folder -> the tree it was made from (a later run must read the same tree).
SOURCES: dict[Path, Path] = {}


def _tables(cache: Path) -> list[Path]:
    return sorted((cache / "tables").rglob("*.npz")) if (cache / "tables").exists() else []


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("scale-src")
    out = tmp_path_factory.mktemp("scale-index")
    block = [c for c in cell_centres(Z31) if c != HOLE] + cell_centres(Z32)
    make_tree(root, centres=block, years=(2024,), bands=4, sparse=True, manifest=False)
    make_tree(root, centres=cell_centres(TOP), years=(2025,), bands=4, sparse=True,
              manifest=False)  # fmt: skip
    report = run_index(IndexOptions(source=str(root), out=str(out), dataset="1.1/cambridge"))
    assert not report.failed and report.indexed == len(block) + 4
    SOURCES[out] = root
    yield out


def _answers(url: str) -> dict[str, Any]:
    def get(path: str) -> Any:
        with urllib.request.urlopen(url + path, timeout=60) as r:
            return json.loads(r.read())

    def cells_of(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
        return sorted(tuple(sorted(f["properties"].items())) for f in doc["features"])

    info = get("/api/info")
    return {
        "info": {k: info[k] for k in ("zones", "years", "tiles", "bounds")},
        **{f"{kind}{y}": cells_of(get(f"/api/{kind}?year={y}"))
           for kind in ("tiles", "gaps") for y in (2024, 2025)},
    }  # fmt: skip


def test_indexer_records_each_zone_year(index: Path) -> None:
    store = open_store(str(index))
    for zone in (31, 32):
        repo = store.repo(zone)
        root = zarr.open_group(repo.readonly_session(branch=cells.BRANCH).store, mode="r")
        doc = root.attrs[cells.ATTRIBUTE]
        assert doc["version"] == cells.VERSION
        for year in store.years(zone):
            cs = cells.decode(doc["years"][str(year)], zone, year)
            assert cs.snapshot == str(repo.lookup_branch(str(year)))
            table = store.tiles(year, zone)
            want = cells.cell_set(zone, year, "", table["lon"].values, table["lat"].values)
            assert (cs.col0, cs.row0) == (want.col0, want.row0)
            np.testing.assert_array_equal(cs.mask, want.mask)


def test_answers_without_reading_any_table(index: Path, tmp_path: Path) -> None:
    cache = Path(os.environ["TESSERA_VZ_CACHE"])
    store = open_store(str(index))
    with running(create_app(store)) as url:
        got = _answers(url)
        with urllib.request.urlopen(f"{url}/api/coverage/2024/0/0/0.png", timeout=60) as r:
            assert r.headers["content-type"] == "image/png"
        with urllib.request.urlopen(f"{url}/api/tiles?year=2024&bbox=7.0,45.0,7.2,45.2") as r:
            assert len(json.loads(r.read())["features"]) == 4
    assert got["info"] == {
        "zones": [31, 32], "years": [2024, 2025], "tiles": {"2024": 15, "2025": 4},
        "bounds": [2.0, 45.0, 7.2, 45.3],
    }  # fmt: skip
    assert _tables(cache) == []  # no tiles table was loaded (each load is cached there)
    assert [dict(c)["tile"] for c in got["gaps2024"]] == ["grid_2.15_45.15"]
    assert {dict(c)["reason"] for c in got["gaps2024"]} == {"hole inside the covered area"}
    # 2025: zone 31's cells of 2024 out of its top row, and all of zone 32 (2024 only).
    assert [dict(c)["zone"] for c in got["gaps2025"]].count(31) == 7
    assert len(got["gaps2025"]) == 11 and len(got["tiles2024"]) == 15


def _remove_records(index: Path, zone: int) -> None:
    repo = ic.Repository.open(ic.local_filesystem_storage(str(index / repo_name(zone))))
    repo.delete_branch(cells.BRANCH)


def _hostile_record(index: Path, zone: int) -> None:
    repo = ic.Repository.open(ic.local_filesystem_storage(str(index / repo_name(zone))))
    session = repo.writable_session(cells.BRANCH)
    group = zarr.open_group(session.store, mode="a")
    doc = dict(group.attrs[cells.ATTRIBUTE])
    record = dict(doc["years"]["2024"])
    record["tiles"] += 1  # the bitmap no longer says what the record claims
    group.attrs.put({cells.ATTRIBUTE: {**doc, "years": {**doc["years"], "2024": record}}})
    session.commit("a record that lies")


def test_tables_give_the_same_answers(index: Path, tmp_path: Path) -> None:
    """No record (an older index) or a refused one: the tables are read, answers unchanged."""
    cache = Path(os.environ["TESSERA_VZ_CACHE"])
    with running(create_app(open_store(str(index)))) as url:
        recorded = _answers(url)
    assert _tables(cache) == []
    _hostile_record(index, 31)
    _remove_records(index, 32)
    store = open_store(str(index))
    coverage = Coverage(store)
    assert coverage.count(2024) == 15 and coverage.table_reads == 2  # zone 31 2024, zone 32
    assert coverage.count(2025) == 4 and coverage.table_reads == 2  # 31/2025's record is good
    with running(create_app(store)) as url:
        assert _answers(url) == recorded
    assert len(_tables(cache)) == 2


def test_low_zoom_coverage_is_a_fixed_size_png() -> None:
    """A whole globe of cells and one cell: the same 256 x 256 tile, drawn where they are."""
    everywhere = cells.CellSet(31, 2024, "", -1800, -560, np.ones((1280, 3600), bool))
    one = cells.cell_set(31, 2024, "", [2.05], [45.05])
    for sets in ([everywhere], [one]):
        png = tile_png(Pyramid(sets, []), 0, 0, 0)
        img = np.asarray(Image.open(io.BytesIO(png)))
        assert img.shape == (TILE, TILE, 4) and len(png) < 300_000
    # The single cell (about 0.07 of a pixel at zoom 0) still shows, in zone 31's colour.
    x = int((2.05 + 180) / 360 * TILE)
    y = int((1 - np.arcsinh(np.tan(np.radians(45.05))) / np.pi) / 2 * TILE)
    assert img[y, x, 3] == ALPHA and tuple(img[y, x, :3]) == (0x5B, 0x6B, 0xD6)
    lit = np.argwhere(img[..., 3] > 0)
    assert np.abs(lit - [y, x]).max() <= 2  # and nothing far from it
    with pytest.raises(ValueError, match="does not exist"):
        tile_png(Pyramid([one], []), 1, 2, 0)


def test_footprints_only_in_a_bbox_and_capped(index: Path) -> None:
    with running(create_app(open_store(str(index)), limits=Limits(features=5))) as url:
        for path, says in (("/api/tiles?year=2024", "15 tiles of 2024"),
                           ("/api/tiles?year=2024&bbox=2,45,7.2,45.3", "15 tiles of 2024"),
                           ("/api/coverage/2023/0/0/0.png", "year 2023 is not indexed"),
                           ("/api/coverage/2024/3/9/0.png", "does not exist")):  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + path, timeout=60)
            assert err.value.code in (400, 404, 413)
            assert says in json.loads(err.value.read())["error"]
        with urllib.request.urlopen(f"{url}/api/tiles?year=2024&bbox=2.0,45.0,2.2,45.2") as r:
            names = {f["properties"]["tile"] for f in json.loads(r.read())["features"]}
        assert names == {"grid_2.05_45.05", "grid_2.15_45.05", "grid_2.05_45.15"}


def _gaps_by_sets(p: set[tuple[int, int]], other: set[tuple[int, int]]) -> tuple[set, set]:
    """The former rule, cell by cell with Python sets."""
    row_lo: dict[int, int] = {}
    row_hi: dict[int, int] = {}
    col_lo: dict[int, int] = {}
    col_hi: dict[int, int] = {}
    for c, r in p:
        row_lo[r], row_hi[r] = min(row_lo.get(r, c), c), max(row_hi.get(r, c), c)
        col_lo[c], col_hi[c] = min(col_lo.get(c, r), r), max(col_hi.get(c, r), r)
    enclosed = {(c, r) for r, lo in row_lo.items() for c in range(lo + 1, row_hi[r])
                if c in col_lo and col_lo[c] < r < col_hi[c]}  # fmt: skip
    return other - p, enclosed - p - other


@pytest.mark.parametrize("seed", range(6))
def test_gaps_equal_the_set_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mine = cells.CellSet(31, 2024, "", 5, -3, rng.random((9, 11)) < 0.6)
    other = cells.CellSet(31, 2023, "", 1, 0, rng.random((7, 6)) < 0.3)
    as_set = {(int(c), int(r)) for c, r in zip(*mine.cells(), strict=True)}
    other_set = {(int(c), int(r)) for c, r in zip(*other.cells(), strict=True)}
    want = _gaps_by_sets(as_set, other_set)
    got = _gap_masks(mine, [other])
    for g, w in zip(got, want, strict=True):
        assert g is not None
        assert {(int(c), int(r)) for c, r in zip(*g.cells(), strict=True)} == w


def test_a_new_year_does_not_carry_the_records(index: Path) -> None:
    """Year branches start from ``main``: the records live elsewhere, so none lands in a year."""
    root = SOURCES[index]
    make_tree(root, centres=cell_centres(TOP), years=(2026,), bands=4, sparse=True,
              manifest=False)  # fmt: skip
    report = run_index(IndexOptions(source=str(root), out=str(index), dataset="1.1/cambridge"))
    assert not report.failed
    store = open_store(str(index))
    repo = store.repo(31)
    year = zarr.open_group(repo.readonly_session(branch="2026").store, mode="r")
    names = [str(n) for n in store.tiles(2026, 31)["tile"].values]
    assert sorted(year.group_keys()) == sorted(["tiles", *names])
    assert cells.ATTRIBUTE not in year.attrs
    doc = zarr.open_group(repo.readonly_session(branch=cells.BRANCH).store, mode="r").attrs
    assert "2026" in doc[cells.ATTRIBUTE]["years"]
    assert Coverage(store).count(2026) == 4
