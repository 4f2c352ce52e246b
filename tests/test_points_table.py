"""Points as a training table: ``tessera-vz points`` and ``TesseraStore.sample``.

The table keeps every input column, says per row why it has values or not
(``status``), and is GeoParquet 1.1 that geopandas and DuckDB read as points.
Expected values come from ``np.load`` of the source files, with the pixel
found from the tile geometry of the design brief (``tile_grids``), not from
the reader.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import shapely

from tessera_vz.cli import main as cli
from tessera_vz.core.geometry import cell_centre, project, tile_grids, unproject
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.testing.tiles import make_tree
from tests.crs84 import is_crs84

HERE = Path(__file__).parent
BANDS = 8
YEARS = (2024, 2025)
#: Two tiles astride lon 0 (zones 30 and 31) and one on zone 31's central meridian,
#: where the invalid-scale corner of a tile lies inside its own cell.
CENTRES = [(-0.05, 52.15), (0.05, 52.15), (3.05, 52.15)]
CM_TILE = "grid_3.05_52.15"


def truth(root: Path, year: int, lon: float, lat: float) -> np.ndarray | None:
    """The value at (lon, lat) from np.load, or None where no tile's pixel holds it."""
    clon, clat = (float(v) for v in cell_centre(lon, lat))
    name = f"grid_{clon:.2f}_{clat:.2f}"
    base = root / str(year) / name / name
    if not Path(f"{base}.npy").exists():
        return None
    g = tile_grids(clon, clat)
    e, n = project(lon, lat, int(g.epsg[0]))
    r, c = int(np.floor((g.top[0] - float(n)) / 10)), int(np.floor((float(e) - g.left[0]) / 10))
    emb = np.load(f"{base}.npy", mmap_mode="r")
    if not (0 <= r < emb.shape[0] and 0 <= c < emb.shape[1]):
        return None
    scale = np.load(f"{base}_scales.npy", mmap_mode="r")[r, c]
    return dequantise(np.asarray(emb[r, c])[None], np.array([scale]))[0]


def invalid_scale_point() -> tuple[float, float]:
    """A lon/lat inside CM_TILE's cell whose pixel has an invalid scale (rows < 2, cols < 6)."""
    g = tile_grids(3.05, 52.15)
    for r in range(2):
        for c in range(6):
            e = g.left[0] + c * 10 + 5
            n = g.top[0] - r * 10 - 5
            lon, lat = (float(v) for v in unproject(e, n, int(g.epsg[0])))
            if [round(float(v), 2) for v in cell_centre(lon, lat)] == [3.05, 52.15]:
                return lon, lat
    raise AssertionError("no invalid-scale pixel of the tile lies inside its cell")


#: Observations: (id, label, lon, lat, expected status); None is an empty cell.
ROWS: list[tuple[int, str, Any, Any, str]] = [
    (1, "wheat", -0.06, 52.12, "ok"),  # zone 30
    (2, "barley", 0.04, 52.17, "ok"),  # zone 31
    (3, "water", 200.0, 52.15, "invalid coordinate"),  # never read, never wrapped
    (4, "urban", None, 52.15, "empty"),
    (5, "forest", 0.05, None, "empty"),
    (6, "desert", 30.0, 10.0, "no tile"),
    (7, "grass", 0.05, -95.0, "invalid coordinate"),
    (8, "corner", *invalid_scale_point(), "no data"),
    (9, "east", 3.07, 52.16, "ok"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("points-src")
    make_tree(root, centres=CENTRES, years=YEARS, bands=BANDS, manifest=False)
    out = tmp_path_factory.mktemp("points-index")
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    return {"root": root, "out": out}


@pytest.fixture(scope="module")
def store(tree: dict[str, Any]) -> TesseraStore:
    return open_store(str(tree["out"]), allow_local_sources=True)


def write_csv(path: Path, header: str = "id,label,lon,lat") -> Path:
    lines = [header]
    for i, label, lon, lat, _ in ROWS:
        lines.append(f"{i},{label},{'' if lon is None else lon},{'' if lat is None else lat}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_points(tree: dict[str, Any], *argv: str) -> int:
    return cli(["points", *argv, "--store", str(tree["out"]), "--allow-local-sources"])


def check_table(df: pd.DataFrame, root: Path, years: tuple[int, ...]) -> None:
    """Every input row once per year, in input order; statuses and values as the sources say."""
    assert len(df) == len(ROWS) * len(years)
    assert df.point_id.tolist() == [i for i in range(len(ROWS)) for _ in years]
    assert df.year.tolist() == [y for _ in ROWS for y in years]
    bands = [f"b{b:03d}" for b in range(BANDS)]
    for (i, label, lon, lat, status), (_, row) in zip(
        [r for r in ROWS for _ in years], df.iterrows(), strict=True
    ):
        assert (row.id, row.label, row.status) == (i, label, status), row
        want = truth(root, row.year, lon, lat) if status in ("ok", "no data") else None
        if status == "ok":
            assert want is not None
            np.testing.assert_array_equal(row[bands].to_numpy(np.float32), want)
            assert row.tile == f"grid_{cell_centre(lon, lat)[0]:.2f}_{cell_centre(lon, lat)[1]:.2f}"
        else:
            assert row[bands].isna().all(), row  # null, not a plausible number
        if status == "no data":
            assert want is not None and np.isnan(want).all()
        if status in ("invalid coordinate", "empty", "no tile"):
            assert pd.isna(row.tile) and pd.isna(row.row) and pd.isna(row.col)


def test_csv_to_geoparquet_keeps_columns_and_says_why(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_csv(tmp_path / "obs.csv")
    out = tmp_path / "obs-emb.parquet"
    assert run_points(tree, str(csv), "--year", "2024,2025", "--out", str(out), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == len(ROWS) * 2 and doc["format"] == "GeoParquet"
    assert doc["status"] == {"empty": 4, "invalid coordinate": 4, "no data": 2, "no tile": 2,
                             "ok": 6}  # fmt: skip
    gdf = gpd.read_parquet(out)
    assert is_crs84(gdf.crs) and gdf.geometry.name == "geometry"
    check_table(pd.DataFrame(gdf.drop(columns="geometry")), tree["root"], YEARS)
    for (_, _, lon, lat, status), geom in zip(
        [r for r in ROWS for _ in YEARS], gdf.geometry, strict=True
    ):
        if status in ("empty", "invalid coordinate"):
            assert geom is None
        else:
            assert (geom.x, geom.y) == (lon, lat)
    meta = pq.read_schema(out).metadata
    geo = json.loads(meta[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["geometry_types"] == ["Point"]
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    # Provenance: the versions read, enough to read the same snapshots again.
    versions = meta[b"tessera:versions"].decode()
    assert versions == "utm30/2024-v1 utm30/2025-v1 utm31/2024-v1 utm31/2025-v1"
    assert meta[b"tessera:snapshots"].decode().count("@") == 4
    assert doc["tessera:versions"] == versions
    assert not list(tmp_path.glob(".*partial"))  # written into place, nothing left over


def test_readme_duckdb_query_over_the_table(tree: dict[str, Any], tmp_path: Path) -> None:
    """The README's DuckDB block runs, as written, on the table `points` wrote."""
    out = tmp_path / "obs-emb.parquet"
    assert run_points(tree, str(write_csv(tmp_path / "obs.csv")), "--year", "2024,2025",
                      "--out", str(out)) == 0  # fmt: skip
    text = (HERE.parent / "README.md").read_text()
    m = re.search(r"<!-- points-duckdb-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no python block after <!-- points-duckdb-example -->"
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    done = subprocess.run([sys.executable, "-c", m.group(1)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    gdf = gpd.read_parquet(out)
    box = shapely.box(-0.2, 52.0, 0.2, 52.3)
    want = gdf[(gdf.status == "ok") & gdf.within(box)].sort_values(["id", "year"])
    got = [line.split() for line in done.stdout.splitlines()]
    assert [(int(r[0]), r[1], int(r[2])) for r in got] == list(
        zip(want.id, want.label, want.year, strict=True)
    )
    assert [float(r[3]) for r in got] == pytest.approx(want.b000.tolist(), abs=1e-4)


def test_xy_columns_are_not_taken_for_lonlat(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_csv(tmp_path / "obs.csv", header="id,label,x,y")
    out = tmp_path / "o.parquet"
    assert run_points(tree, str(csv), "--year", "2024", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "['id', 'label', 'x', 'y']" in err and "--lon" in err
    assert not out.exists()
    assert run_points(tree, str(csv), "--year", "2024", "--out", str(out), "--lon", "x",
                      "--lat", "y") == 0  # fmt: skip
    df = pq.read_table(out).to_pandas()
    assert {"x", "y", "status"} <= set(df.columns)
    assert df.status.tolist() == [r[4] for r in ROWS]


def test_geoparquet_and_parquet_inputs_give_the_same_table(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    """GeoParquet input (in EPSG:3857, nulls included) and plain Parquet read the same points."""
    ok = [r for r in ROWS if r[4] in ("ok", "no data", "no tile")]
    gdf = gpd.GeoDataFrame(
        {"id": [r[0] for r in ok], "label": [r[1] for r in ok]},
        geometry=gpd.points_from_xy([r[2] for r in ok], [r[3] for r in ok]),
        crs="EPSG:4326",
    ).to_crs(3857)
    gdf.loc[len(gdf)] = [99, "nowhere", None]  # a missing geometry
    gdf.to_parquet(tmp_path / "obs.geoparquet")
    plain = pd.DataFrame({"id": [r[0] for r in ok], "lon": [r[2] for r in ok],
                          "latitude": [r[3] for r in ok]})  # fmt: skip
    plain.to_parquet(tmp_path / "obs.parquet")
    out_geo, out_plain = tmp_path / "geo-emb.parquet", tmp_path / "plain-emb.parquet"
    assert run_points(tree, str(tmp_path / "obs.geoparquet"), "--year", "2024",
                      "--out", str(out_geo)) == 0  # fmt: skip
    assert run_points(tree, str(tmp_path / "obs.parquet"), "--year", "2024",
                      "--out", str(out_plain)) == 0  # fmt: skip
    g = gpd.read_parquet(out_geo)
    p = gpd.read_parquet(out_plain)
    assert g.status.tolist() == [r[4] for r in ok] + ["empty"]
    assert p.status.tolist() == [r[4] for r in ok]
    bands = [f"b{b:03d}" for b in range(BANDS)]
    np.testing.assert_array_equal(g[bands].to_numpy()[:-1], p[bands].to_numpy())
    np.testing.assert_array_equal(
        p[bands].to_numpy(np.float32)[0], truth(tree["root"], 2024, ok[0][2], ok[0][3])
    )
    # The points came back from EPSG:3857 to lon/lat (within float error).
    np.testing.assert_allclose(g.geometry.x[:-1], [r[2] for r in ok], atol=1e-9)
    assert is_crs84(g.crs) and "geometry_input" not in g.columns


def test_csv_output(tree: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "obs-emb.csv"
    assert run_points(tree, str(write_csv(tmp_path / "obs.csv")), "--year", "2024",
                      "--out", str(out)) == 0  # fmt: skip
    df = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    df = df.to_pandas()
    check_table(df, tree["root"], (2024,))
    first = shapely.from_wkt(df.geometry[0])
    assert (first.x, first.y) == (ROWS[0][2], ROWS[0][3])


def test_sample_api_equals_the_cli_and_batches_do_not_matter(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    df = pd.DataFrame(
        {"id": [r[0] for r in ROWS], "label": [r[1] for r in ROWS],
         "Longitude": [math.nan if r[2] is None else r[2] for r in ROWS],
         "lat": [r[3] for r in ROWS], "year": 1999, "status": "observed"}
    )  # fmt: skip
    whole = store.sample(df, [2024, 2025])
    batched = store.sample(df, [2024, 2025], batch_size=2)
    assert whole.equals(batched)
    # Input columns that the table adds are kept under another name.
    assert whole.column("year_input").to_pylist()[0] == 1999
    assert whole.column("status_input").to_pylist()[0] == "observed"
    got = whole.drop_columns(["year_input", "status_input"]).to_pandas()
    check_table(got, tree["root"], YEARS)  # pandas' NaN is a missing value: "empty"
    # Written with plain pyarrow, the table is GeoParquet already.
    pq.write_table(whole, tmp_path / "api.parquet")
    gdf = gpd.read_parquet(tmp_path / "api.parquet")
    assert is_crs84(gdf.crs)
    arrow = gpd.GeoDataFrame.from_arrow(whole)  # GeoArrow field metadata: no file needed
    assert is_crs84(arrow.crs) and arrow.geometry.x.iloc[0] == ROWS[0][2]
    # A GeoDataFrame in, its geometry used in its CRS.
    pts = gpd.GeoDataFrame({"id": [1]}, geometry=gpd.points_from_xy([ROWS[0][2]], [ROWS[0][3]]),
                           crs=4326).to_crs(32630)  # fmt: skip
    one = store.sample(pts, 2024).to_pandas()
    np.testing.assert_allclose(
        one[[f"b{b:03d}" for b in range(BANDS)]].to_numpy(np.float32)[0],
        truth(tree["root"], 2024, ROWS[0][2], ROWS[0][3]),
    )
    nothing = pa.table({"lon": pa.array([], pa.float64()), "lat": pa.array([], pa.float64())})
    assert store.sample(nothing, 2024).num_rows == 0


def test_a_broken_tile_fails_only_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tile whose source vanished: its rows say `error`, the rest are read; exit code 1."""
    root, out = tmp_path / "src", tmp_path / "index"
    make_tree(root, centres=CENTRES[:2], years=(2024,), bands=4, manifest=False)
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    (root / "2024" / "grid_0.05_52.15" / "grid_0.05_52.15.npy").unlink()
    csv = write_csv(tmp_path / "obs.csv")
    target = tmp_path / "emb.parquet"
    code = cli(["points", str(csv), "--year", "2024", "--store", str(out), "--out", str(target),
                "--allow-local-sources", "--json"])  # fmt: skip
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    df = pq.read_table(target).to_pandas()
    assert df.status.tolist()[:2] == ["ok", "error"] and doc["status"]["error"] == 1
    np.testing.assert_array_equal(
        df[[f"b{b:03d}" for b in range(4)]].to_numpy(np.float32)[0],
        truth(root, 2024, ROWS[0][2], ROWS[0][3]),
    )


def test_progress_bar_on_stderr(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.parquet"
    csv = write_csv(tmp_path / "obs.csv")
    assert run_points(tree, str(csv), "--year", "2024", "--out", str(out), "--progress",
                      "--batch-size", "3") == 0  # fmt: skip
    captured = capsys.readouterr()
    assert f"{len(ROWS)} points x 1 years" in captured.err and captured.out == ""
    assert f"{len(ROWS)}/{len(ROWS)}" in captured.err


def test_interrupted_run_leaves_no_file(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Ctrl-C mid-run: exit 130, one line, and no output file that looks complete."""

    def interrupted(self: TesseraStore, *args: Any, **kwargs: Any) -> Any:
        yield from original(self, *args, **{**kwargs, "batch_size": 2})
        raise KeyboardInterrupt

    original = TesseraStore.sample_batches
    monkeypatch.setattr(TesseraStore, "sample_batches", interrupted)
    out = tmp_path / "o.parquet"
    assert run_points(tree, str(write_csv(tmp_path / "obs.csv")), "--year", "2024",
                      "--out", str(out)) == 130  # fmt: skip
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs.csv"]


def test_cli_point_reads_several_years(
    tree: dict[str, Any], store: TesseraStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """``point --year 2024,2025`` prints one row per year, as ``points`` and ``region`` accept."""
    argv = ["point", "0.04", "52.17", "--year", "2024,2025", "--json", "--store",
            str(tree["out"]), "--allow-local-sources"]  # fmt: skip
    assert cli(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["year"] for r in rows] == [2024, 2025]
    for r in rows:
        got = np.array([np.nan if v is None else v for v in r["embedding"]], np.float32)
        np.testing.assert_array_equal(got, store.point(0.04, 52.17, r["year"]))
        np.testing.assert_array_equal(got, truth(tree["root"], r["year"], 0.04, 52.17))
    assert cli([*argv[:-4], "--store", str(tree["out"]), "--allow-local-sources"]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[:2] for line in text.splitlines() if "grid_0.05_52.15" in line]
    assert rows == [["2024", "grid_0.05_52.15"], ["2025", "grid_0.05_52.15"]]  # a table row each
    assert "2024 embedding" in text and "2025 embedding" in text
