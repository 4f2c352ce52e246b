"""scripts/make_zone.py: a full-width zone-year of real-size sparse tiles, with a manifest."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest

from tessera_vz.core.geometry import tile_grids, utm_zone
from tessera_vz.testing.tiles import MANIFEST_NAME


def _script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_zone.py"
    spec = importlib.util.spec_from_file_location("make_zone_script", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _script()
    out = tmp_path / "zone"
    assert mod.main([str(out), "--zone", "31", "--lat", "-0.2", "0.1", "--year", "2024"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # 60 columns (0.05 .. 5.95 E) x 3 rows (-0.15, -0.05, 0.05), across the equator
    assert summary["tiles"] == 180 and summary["files"] == 2 * 180 + 1
    assert summary["lon"] == [0.0, 6.0] and summary["bands"] == 128
    # real sizes, almost no disk
    assert summary["bytes"] > 180 * 90_000_000
    assert summary["disk_bytes"] < summary["bytes"] / 1000

    table = pq.read_table(out / MANIFEST_NAME).to_pydict()
    lons, lats = np.array(table["lon"]), np.array(table["lat"])
    assert len(lons) == 180 and set(utm_zone(lons).tolist()) == {31}
    assert lons.min() == pytest.approx(0.05) and lons.max() == pytest.approx(5.95)
    assert sorted(set(np.round(lats, 2).tolist())) == [-0.15, -0.05, 0.05]
    # every tile has its real geometry, southern ones their own EPSG
    g = tile_grids(lons, lats)
    i = int(np.argmin(lats))
    emb = np.load(out / table["grid_path"][i], mmap_mode="r")
    assert emb.shape == (g.height[i], g.width[i], 128) and emb.dtype == np.int8
    assert int(g.epsg[i]) == 32731 and int(g.epsg[int(np.argmax(lats))]) == 32631
    assert table["grid_size"][i] == emb.size + emb.offset


def test_make_zone_rejects_bad_span(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mod = _script()
    assert mod.main([str(tmp_path / "z"), "--zone", "31", "--lat", "50", "40"]) == 2
    assert "SOUTH NORTH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="1-60"):
        mod.zone_bounds(61)
