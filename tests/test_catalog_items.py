"""A unit's Items are written in batches: memory does not grow with the unit, output is STAC.

Synthetic tiles tables of 600 and 2,400 tiles (real geometry, every column
set) go through :func:`write_unit_items` with batches of 150 rows; the peak
of Python allocations while writing (tracemalloc) must stay about the same
for four times the tiles, every Item file must open in pystac (the whole catalog validates in
test_catalog), and the
stac-geoparquet part must give back the very Items of the files.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr

from tessera_vz.catalog import items as catalog_items
from tessera_vz.catalog import stac
from tessera_vz.catalog.assemble import read_part
from tessera_vz.catalog.tables import UnitRows, UnitVersion, unit_rows
from tessera_vz.core.dataset import Dataset
from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import tile_name

UNIT = UnitVersion(31, 2024, "A" * 20, "2024-v1", "../index/utm31.icechunk", ("https://e.org/",))


def _rows(n: int) -> UnitRows:
    """``n`` tiles of zone 31 filling rows of 60 cells from 40 N."""
    lon = np.array([0.05 + 0.1 * (i % 60) for i in range(n)])
    lat = np.array([40.05 + 0.1 * (i // 60) for i in range(n)])
    g = tile_grids(lon, lat)
    names = [tile_name(round(a, 2), round(b, 2)) for a, b in zip(lon, lat, strict=True)]
    cols = {
        "lon": g.lon, "lat": g.lat, "zone": g.zone, "epsg": g.epsg, "left": g.left, "top": g.top,
        "height": g.height, "width": g.width, "bands": np.full(n, 128),
        "source": np.full(n, "https://e.org/"),
        "emb_path": [f"2024/{t}/{t}.npy" for t in names],
        "scales_path": [f"2024/{t}/{t}_scales.npy" for t in names],
        "emb_size": np.full(n, 10), "scales_size": np.full(n, 4), "emb_checksum": np.full(n, "e"),
        "scales_checksum": np.full(n, "s"),
    }  # fmt: skip
    table = xr.Dataset({k: ("tile", np.asarray(v)) for k, v in cols.items()},
                       coords={"tile": names},
                       attrs=Dataset("1.1", "cambridge").attrs("https://e.org/"))  # fmt: skip
    return unit_rows(table, UNIT)


def _peak(tmp: Path, rows: UnitRows) -> int:
    stac_dir, part = tmp / "stac", tmp / "part.arrow"
    tracemalloc.start()
    try:
        written, deleted = catalog_items.write_unit_items(stac_dir, UNIT, rows, part, "c")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (written, deleted) == (rows.table.num_rows, 0)
    return peak


def test_memory_does_not_grow_with_the_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_items, "BATCH", 150)
    small, large = _rows(600), _rows(2400)
    stac.items_schema("c")  # built once per process, before measuring
    _peak(tmp_path / "warm", _rows(150))
    p_small, p_large = _peak(tmp_path / "s", small), _peak(tmp_path / "l", large)
    # Four times the Items, about the same peak (a run holding every Item would be ~4x).
    assert p_large < 1.5 * p_small, (p_small, p_large)


def test_items_are_stac_and_match_the_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stac_geoparquet.arrow import stac_table_to_items

    monkeypatch.setattr(catalog_items, "BATCH", 100)
    rows = _rows(250)
    stac_dir = tmp_path / "stac"
    folder = stac_dir / stac.unit_dir(31, 2024)
    folder.mkdir(parents=True)
    (folder / "grid_9.95_9.95.json").write_text("{}")  # an Item of a tile gone from the index
    written, deleted = catalog_items.write_unit_items(
        stac_dir, UNIT, rows, tmp_path / "p.arrow", "c"
    )
    assert (written, deleted) == (250, 1)
    files = sorted(folder.glob("grid_*.json"))
    assert len(files) == 250 and not (folder / "grid_9.95_9.95.json").exists()
    catalog = json.loads((folder / stac.UNIT_CATALOG).read_text())
    assert catalog["tessera:tiles"] == 250 and catalog["tessera:snapshot"] == UNIT.snapshot
    assert sorted(ln["href"][2:] for ln in catalog["links"] if ln["rel"] == "item") == [
        f.name for f in files
    ]
    on_disk = {}
    for f in files:
        doc = json.loads(f.read_text())
        on_disk[pystac.Item.from_dict(doc).id] = doc  # validated offline in test_catalog
    table = read_part(tmp_path / "p.arrow")  # the staged part (Arrow IPC)
    assert table.schema.remove_metadata() == stac.items_schema("c")
    back = {it["id"]: it for it in stac_table_to_items(table)}
    assert back.keys() == on_disk.keys()
    for key, it in back.items():
        d = on_disk[key]
        assert it["bbox"] == d["bbox"] and it["assets"]["embeddings"] == d["assets"]["embeddings"]
        assert it["assets"]["index"]["href"] == "../../index/utm31.icechunk"  # read from stac/
        assert d["assets"]["index"]["href"] == "../../../../index/utm31.icechunk"
        assert {k: v for k, v in it["properties"].items() if "datetime" not in k} == {
            k: v for k, v in d["properties"].items() if "datetime" not in k
        }
