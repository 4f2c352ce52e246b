"""Every tile group carries a CF grid mapping; older indexes gain it on their next run.

What a user relies on: ``xr.open_zarr`` on a tile group of the repository,
with only icechunk, xarray and rioxarray (or odc-geo) installed, knows the
tile's CRS (EPSG 326zz north of the equator, 327zz south) and its pixel
grid, and so does ``open_tile``. An index written before the grid mapping
existed gains it on its next index run, from the year's tiles table alone,
in the same commit as that run's other changes, and reads the same pixels
before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import LAYOUT_VERSION, repo_name
from tessera_vz.indexer import migration
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree, write_manifest

# Cells on both sides of the equator in UTM zone 31: EPSG 32631 and 32731.
BBOX = (2.6, -0.2, 2.8, 0.2)
ZONE = 31


def _repo(out: Path, zone: int = ZONE) -> Any:
    storage = ic.local_filesystem_storage(str(out / repo_name(zone)))
    config = ic.Repository.fetch_config(storage)
    containers = (config.virtual_chunk_containers if config else None) or {}
    return ic.Repository.open(
        storage,
        authorize_virtual_chunk_access=ic.containers_credentials(
            {p: ic.credentials.HttpAccess for p in containers}
        ),
    )


def _open(out: Path, spec: TileSpec) -> xr.Dataset:
    """A tile group as plain xarray opens it: no tessera-vz code involved."""
    store = _repo(out).readonly_session(branch=str(spec.year)).store
    return xr.open_zarr(store, group=spec.name)


def _transform(spec: TileSpec) -> Affine:
    g = tile_grids(np.array([spec.lon]), np.array([spec.lat]))
    return Affine(10.0, 0.0, float(g.left[0]), 0.0, -10.0, float(g.top[0]))


def _assert_georeferenced(ds: xr.Dataset, spec: TileSpec) -> None:
    assert ds.rio.crs is not None and ds.rio.crs.to_epsg() == spec.epsg
    assert ds.rio.transform() == _transform(spec)
    for var in ("embeddings", "scales"):
        assert ds[var].rio.crs.to_epsg() == spec.epsg, var
    geobox = ds.odc.geobox
    assert geobox is not None and geobox.crs.epsg == spec.epsg
    assert geobox.shape == (spec.height, spec.width)
    assert geobox.transform == _transform(spec)
    # The band coordinate is gone: readers take it from the dimension.
    assert "band" not in ds.coords and ds.sizes["band"] == spec.bands


def _assert_pixels(ds: xr.Dataset, root: Path, spec: TileSpec) -> None:
    np.testing.assert_array_equal(ds.embeddings.values, np.load(root / spec.emb_path))
    np.testing.assert_array_equal(ds.scales.values, np.load(root / spec.scales_path))


def _layout_on_main(out: Path) -> int:
    group = zarr.open_group(_repo(out).readonly_session(branch="main").store, mode="r")
    return int(group.attrs["tessera:layout_version"])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("tree")
    specs = make_tree(root, bbox=BBOX, years=(2024,), bands=4)
    out = tmp_path_factory.mktemp("index")
    with NginxServer(root) as server:
        opts = IndexOptions(
            source=server.url, out=str(out), manifest=str(root / "manifest.parquet")
        )
        assert run_index(opts).exit_code == 0
        yield {"root": root, "specs": specs, "out": out, "server": server}


def test_tile_groups_carry_crs_north_and_south(indexed: dict[str, Any]) -> None:
    root, specs, out = indexed["root"], indexed["specs"], indexed["out"]
    assert {s.epsg for s in specs} == {32631, 32731}
    for spec in specs:
        ds = _open(out, spec)
        _assert_georeferenced(ds, spec)
        _assert_pixels(ds, root, spec)


def test_open_tile_and_geotiff_carry_crs(indexed: dict[str, Any], tmp_path: Path) -> None:
    root, specs, out = indexed["root"], indexed["specs"], indexed["out"]
    store = open_store(str(out))
    for epsg in (32631, 32731):
        spec = next(s for s in specs if s.epsg == epsg)
        ds = store.open_tile(spec.lon, spec.lat, spec.year)
        _assert_georeferenced(ds, spec)
        _assert_pixels(ds, root, spec)
        # GDAL sees it too: a band written by rioxarray opens with CRS and transform.
        tif = tmp_path / f"{spec.name}.tif"
        ds.embeddings.isel(band=1).rio.to_raster(tif)
        with rasterio.open(tif) as src:
            assert src.crs.to_epsg() == epsg
            assert src.transform == _transform(spec)
            np.testing.assert_array_equal(src.read(1), np.load(root / spec.emb_path)[..., 1])


def _write_old_index(monkeypatch: pytest.MonkeyPatch, opts: IndexOptions) -> None:
    """Index as a release before layout 2 did (its documents are kept in indexer.documents)."""
    with monkeypatch.context() as m:
        m.setattr(migration, "LAYOUT_VERSION", 1)
        assert run_index(opts).exit_code == 0


def _assert_old(ds: xr.Dataset) -> None:
    assert ds.rio.crs is None and "spatial_ref" not in ds.variables
    np.testing.assert_array_equal(ds.coords["band"].values, np.arange(ds.sizes["band"]))


def _assert_reads(out: Path, root: Path, specs: list[TileSpec]) -> None:
    """The reader's own paths (point, open_tile) on whichever layout the index has."""
    store = open_store(str(out))
    for spec in specs:
        emb = np.load(root / spec.emb_path)
        sc = np.load(root / spec.scales_path)
        np.testing.assert_array_equal(
            store.open_tile(spec.lon, spec.lat, spec.year).embeddings.values, emb
        )
        loc = store.locate(spec.lon, spec.lat, spec.year)
        scale = np.broadcast_to(sc[loc.row, loc.col], emb.shape[-1:])
        valid = np.isfinite(scale) & (scale > 0) & (scale < 1)
        want = np.where(valid, emb[loc.row, loc.col] * scale, np.nan)
        got = store.point(spec.lon, spec.lat, spec.year)
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_old_index_gains_crs_on_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, out = tmp_path / "src", tmp_path / "index"
    # 2023 with per-band scales (older upstream runs), 2024 with 2-D scales.
    specs = make_tree(root, bbox=BBOX, years=(2023,), bands=4, scales_per_band=True)
    specs += make_tree(root, bbox=BBOX, years=(2024,), bands=4, manifest=False)
    write_manifest(root, specs)
    manifest = str(root / "manifest.parquet")
    with NginxServer(root) as server:
        _write_old_index(
            monkeypatch, IndexOptions(source=server.url, out=str(out), manifest=manifest)
        )
        assert _layout_on_main(out) == 1
        for spec in specs:
            _assert_old(_open(out, spec))
        _assert_reads(out, root, specs[::3])

        # The next run of 2024 also removes a tile and adds one; the batch size
        # makes the run several amended batches, the upgrade in the first.
        gone = next(s for s in specs if s.year == 2024)
        (root / gone.emb_path).unlink()
        (root / gone.scales_path).unlink()
        added = make_tree(root, centres=[(2.85, 0.05)], years=(2024,), bands=4, manifest=False)
        specs = [s for s in specs if s != gone] + added
        write_manifest(root, specs)
        repo = _repo(out)
        old_tip = repo.lookup_branch("2024")
        server.clear_log()
        opts = IndexOptions(
            source=server.url, out=str(out), manifest=manifest, years=[2024], batch_tiles=2
        )
        report = run_index(opts)
        doc = report.to_json()
        # No request beyond the run's own header probes: the upgrade reads the
        # tiles table, never a header (it works with the mirror down: below).
        assert len(server.requests(min_count=report.requests)) == report.requests
        assert doc["indexed"] == 1 and doc["removed"] == 1 and doc["failed"] == []
        assert [c["tag"] for c in doc["commits"]] == ["2024-v2"]
        repo = _repo(out)
        tip = repo.lookup_branch("2024")
        assert repo.lookup_snapshot(tip).parent_id == old_tip  # one commit for all of it
        new_2024 = [s for s in specs if s.year == 2024]
        for spec in new_2024:
            ds = _open(out, spec)
            _assert_georeferenced(ds, spec)
            _assert_pixels(ds, root, spec)
        with pytest.raises(FileNotFoundError):
            _open(out, gone)
        # 2023 was not part of this run: still layout 1, so main says 1.
        _assert_old(_open(out, next(s for s in specs if s.year == 2023)))
        assert _layout_on_main(out) == 1

        # Nothing changed in 2023 but its layout: the next full run upgrades it alone.
        doc = run_index(IndexOptions(source=server.url, out=str(out), manifest=manifest)).to_json()
        assert [c["tag"] for c in doc["commits"]] == ["2023-v2"] and doc["indexed"] == 0
        assert _layout_on_main(out) == LAYOUT_VERSION
        for spec in specs:
            ds = _open(out, spec)
            _assert_georeferenced(ds, spec)
            _assert_pixels(ds, root, spec)
        _assert_reads(out, root, specs[::3])
        # And then a run commits nothing.
        doc = run_index(IndexOptions(source=server.url, out=str(out), manifest=manifest)).to_json()
        assert doc["commits"] == [] and doc["indexed"] == 0 and doc["failed"] == []


def test_upgrade_needs_no_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the mirror down, a run still moves every group to the new layout."""
    root, out = tmp_path / "src", tmp_path / "index"
    specs = make_tree(root, bbox=BBOX, years=(2024,), bands=4)
    manifest = str(root / "manifest.parquet")
    with NginxServer(root) as server:
        port, url = server.port, server.url
        _write_old_index(monkeypatch, IndexOptions(source=url, out=str(out), manifest=manifest))
    opts = IndexOptions(source=url, out=str(out), manifest=manifest, retries=0, timeout=2.0)
    doc = run_index(opts).to_json()
    # Any header the run tried to read failed (connection refused) and its tile
    # is reported and kept as indexed; the layout moved all the same.
    assert doc["indexed"] == 0 and doc["removed"] == 0
    assert [c["tag"] for c in doc["commits"]] == ["2024-v2"]
    with NginxServer(root, port=port):
        for spec in specs:
            ds = _open(out, spec)
            _assert_georeferenced(ds, spec)
            _assert_pixels(ds, root, spec)


def test_older_code_refuses_a_newer_layout(
    indexed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing layout-1 groups into a layout-2 year would mix layouts: refused, unpublished."""
    import shutil

    out = tmp_path / "index"
    shutil.copytree(indexed["out"], out)
    tip = _repo(out).lookup_branch("2024")
    # The same tree from another server (another URL, a deliberate move to another mirror of
    # the same dataset): every tile must be re-indexed.
    root = indexed["root"]
    with NginxServer(root) as server:
        monkeypatch.setattr(migration, "LAYOUT_VERSION", 1)
        opts = IndexOptions(
            source=server.url,
            out=str(out),
            manifest=str(root / "manifest.parquet"),
            move_source=True,
        )
        with pytest.raises(ConfigurationError, match="newer tessera-vz"):
            run_index(opts)
    assert _repo(out).lookup_branch("2024") == tip
