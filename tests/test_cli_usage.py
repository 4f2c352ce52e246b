"""The command line's habits: one-line errors before any read, exit codes, --version, -v anywhere.

Every bad input of the table below must end with the expected exit code
(2: usage, nothing read or written) and exactly one line on stderr naming the
problem, without a traceback, whichever command it reaches and whether
argparse or a check of ours refuses it. A few run through the installed entry
point in a new process too, so logging and the real exit path are included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest

from tessera_vz.cli import main as cli
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tiles import make_tree

YEAR = 2024


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("usage")
    src, ix = base / "src", base / "index"
    make_tree(src, centres=[(0.05, 52.15)], years=(YEAR,), bands=4, manifest=False)
    assert not run_index(IndexOptions(source=str(src), out=str(ix))).failed
    (base / "pts.csv").write_text("lon,lat\n0.05,52.15\n")
    (base / "xy.csv").write_text("id,x,y\n1,0.05,52.15\n")
    (base / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (base / "empty").mkdir()
    (base / "out.tif").mkdir()  # a folder where a file should go
    (base / "there.zarr").mkdir()  # an existing output
    (base / "bad-wkt.csv").write_text("id;geometry\n1;POINT (0.05\n")
    for name, wkt in [
        ("line.geojson", "LINESTRING (0.04 52.14, 0.06 52.16)"),
        ("field.geojson", "POLYGON ((0.04 52.14, 0.06 52.14, 0.06 52.16, 0.04 52.14))"),
    ]:
        gpd.GeoDataFrame({"id": [1]}, geometry=gpd.GeoSeries.from_wkt([wkt]),
                         crs=4326).to_file(base / name)  # fmt: skip
    return {"base": base, "src": src, "ix": ix}


def _cases(s: dict[str, Any]) -> list[tuple[list[str], int, str]]:
    b, ix, src = s["base"], str(s["ix"]), str(s["src"])
    read = ["--store", ix, "--allow-local-sources"]
    pt = ["point", "0.05", "52.15", "--year", str(YEAR), *read]
    rg = ["region", "0.04", "52.14", "0.06", "52.16", "--year", str(YEAR), *read]
    rg_out = [*rg, "--out", str(b / "r.tif")]
    pts = ["points", str(b / "pts.csv"), "--year", str(YEAR), *read]
    pts_out = [*pts, "--out", str(b / "p.parquet")]
    ixc = ["index", src, "--out", str(b / "new-index")]
    area = ["--bbox", "0.04", "52.14", "0.06", "52.16", *read, "--out", str(b / "m.tif")]
    place = ["--lon", "0.05", "--lat", "52.15"]
    return [
        # argparse's own usage errors
        ([], 2, "required: COMMAND"),
        (["frobnicate"], 2, "invalid choice"),
        (["point"], 2, "required"),
        (["point", "east", "52", "--year", "2024", *read], 2, "invalid float value"),
        ([*pt[:4], "twenty", *read], 2, "--year expects a year or comma-separated years"),
        ([*rg_out, "--bogus"], 2, "unrecognized arguments"),
        (["demo", "--bogus"], 2, "unrecognized arguments"),
        # point
        (["point", "200", "52.1", "--year", "2024", *read], 2, "lon=200.0"),
        (["point", "0.05", "-95", "--year", "2024", *read], 2, "-90 <= lat <= 90"),
        (["point", "0.05", "52.15", "--year", "2019", *read], 2, "year 2019 not indexed"),
        (["point", "0.05", "52.15", "--year", "2024,2019", *read], 2, "year 2019 not indexed"),
        (["point", "0.05", "52.15", "--year", "2024,2024", *read], 2, "names a year twice"),
        # lat lon given for lon lat: no index is near, and the swap is named
        (["point", "52.15", "0.05", "--year", "2024", *read], 2,
         "no indexed tile is near lon=52.15, lat=0.05: UTM zone(s) 39 are not in"),
        (["point", "52.15", "0.05", "--year", "2024", *read], 2, "lon/lat may be swapped"),
        (["point", "100", "10", "--year", "2024", *read], 2, "(its zones: 31)"),
        (["point", "0.05", "52.15", "--year", "2024", "--store", str(b / "nope")], 2,
         "not a directory"),
        ([*pt, "--version-tag", "2024-v9"], 2, "tag 2024-v9 does not exist"),
        ([*pt, "--version-tag", "latest"], 2, "is not a tag"),
        ([*pt, "--retries", "-1"], 2, "--retries"),
        ([*pt, "--timeout", "0"], 2, "--timeout"),
        ([*pt, "--ca-file", str(b / "nope.pem")], 2, "does not exist"),
        # region: output, format, bbox, grid, years
        ([*rg, "--out", str(b / "r.png")], 2, "must end in .tif"),
        ([*rg, "--out", str(b / "r")], 2, "no suffix"),
        (["region", "0.04", "52.14", "0.06", "52.16", "--year", "2024,2025", *read,
          "--out", str(b / "r.tif")], 2, "a GeoTIFF holds one year"),
        ([*rg, "--out", str(b / "no" / "such" / "r.tif")], 2, "does not exist"),
        ([*rg, "--out", "/proc/r.tif"], 2, "not writable"),
        ([*rg, "--out", str(b / "out.tif")], 2, "a folder of that name exists"),
        (["region", "0.06", "52.14", "0.04", "52.16", "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "west (0.06) must be less than east"),
        (["region", "0.04", "52.16", "0.06", "52.14", "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "south (52.16) must be less than north"),
        (["region", "0.04", "52.14", "0.06", "95", "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "bbox north is 95.0"),
        (["region", "nan", "52.14", "0.06", "52.16", "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "bbox west is nan"),
        ([*rg_out, "--resolution", "ten"], 2, "--resolution must be"),
        ([*rg_out, "--resolution", "-5"], 2, "--resolution must be"),
        ([*rg_out, "--crs", "EPSG:99999"], 2, "not a coordinate reference system"),
        ([*rg_out, "--zone", "61"], 2, "UTM zones are 1-60"),
        ([*rg_out, "--crs", "EPSG:4326", "--zone", "31"], 2, "not both"),
        # a resolution in the wrong units: said so, with the number to give instead
        ([*rg_out, "--crs", "EPSG:4326", "--resolution", "10"], 2,
         "resolution 10 x 10 is in the units of EPSG:4326 (degree): pixels of about"),
        ([*rg_out, "--crs", "EPSG:4326", "--resolution", "10"], 2, "give about 0.00015,9e-05"),
        ([*rg_out, "--crs", "EPSG:32631", "--resolution", "0.0001"], 2,
         "in the units of EPSG:32631 (metre)"),
        (["region", "0", "40", "6", "56", "--year", "2024", *read, "--out", str(b / "r.tif")],
         2, "pixel limit"),
        (["region", "0.04", "52.14", "0.06", "52.16", "--year", "2024,abc", *read, "--out",
          str(b / "r.zarr")], 2, "comma-separated years"),
        (["region", "0.04", "52.14", "0.06", "52.16", "--year", "24", *read, "--out",
          str(b / "r.zarr")], 2, "four-digit years"),
        (["region", "0.04", "52.14", "0.06", "52.16", "--year", "2019", *read, "--out",
          str(b / "r.tif")], 2, "year 2019 not indexed"),
        # points: input, columns, output
        (["points", str(b / "nope.csv"), "--year", "2024", *read, "--out", str(b / "p.parquet")],
         2, "does not exist"),
        (["points", str(b / "pts.txt"), "--year", "2024", *read, "--out", str(b / "p.parquet")],
         2, "does not exist"),
        (["points", str(b / "empty"), "--year", "2024", *read, "--out", str(b / "p.parquet")],
         2, "is a folder"),
        ([*pts, "--out", str(b / "p.json")], 2, "must end in .parquet"),
        ([*pts, "--out", str(b / "no" / "p.parquet")], 2, "does not exist"),
        (["points", str(b / "xy.csv"), "--year", "2024", *read, "--out", str(b / "p.parquet")],
         2, "['id', 'x', 'y']"),
        ([*pts_out, "--lon", "x"], 2, "--lon and --lat go together"),
        ([*pts_out, "--lon", "long", "--lat", "lat"], 2, "no column 'long'"),
        (["points", str(b / "broken.parquet"), "--year", "2024", *read, "--out",
          str(b / "p.parquet")], 2, "cannot read"),
        ([*pts_out, "--batch-size", "0"], 2, "--batch-size must be at least 1"),
        ([*pts_out[:3], "2030", *pts_out[4:]], 2, "year 2030 not indexed"),
        # points: a year per row, vector files, WKT
        ([*pts_out, "--year-column", "year"], 2, "--year and --year-column exclude each other"),
        (["points", str(b / "pts.csv"), *read, "--out", str(b / "p.parquet")], 2,
         "no --year given and points file"),
        (["points", str(b / "pts.csv"), *read, "--out", str(b / "p.parquet"), "--year-column",
          "obs_year"], 2, "no year column 'obs_year'"),
        ([*pts_out, "--geometry", "wkt", "--lon", "lon", "--lat", "lat"], 2,
         "--lon/--lat or --geometry"),
        ([*pts_out, "--geometry", "wkt"], 2, "no geometry column 'wkt'"),
        (["points", str(b / "field.geojson"), "--year", "2024", *read, "--out",
          str(b / "p.parquet")], 2, "holds a Polygon in row 0"),
        (["points", str(b / "bad-wkt.csv"), "--year", "2024", *read, "--out",
          str(b / "p.parquet")], 2, "not WKT"),
        # region: existing outputs, --region-file
        ([*rg, "--out", str(b / "there.zarr")], 2, "exists; pass --overwrite"),
        (["region", "0.04", "52.14", "--year", "2024", *read, "--out", str(b / "r.zarr")], 2,
         "a bbox WEST SOUTH EAST NORTH"),
        ([*rg_out, "--region-file", str(b / "field.geojson")], 2, "not both"),
        (["region", "--region-file", str(b / "nope.geojson"), "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "does not exist"),
        (["region", "--region-file", str(b / "pts.csv"), "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "must be .geojson, .gpkg or .shp"),
        (["region", "--region-file", str(b / "line.geojson"), "--year", "2024", *read, "--out",
          str(b / "r.tif")], 2, "a region needs polygons"),
        # classify, similar, change: training, model, references, area, years
        (["classify", "--year", "2024", *area], 2, "TRAINING"),
        (["classify", str(b / "pts.csv"), "--label", "crop", "--year", "2024", *area], 2,
         "--label 'crop' is not a column"),
        (["classify", str(b / "pts.csv"), "--label", "lat", "--year", "2024,2025", *area], 2,
         "one year"),
        (["classify", "--model-in", str(b / "nope.joblib"), "--year", "2024", *area], 2,
         "does not exist"),
        (["classify", "--model-in", str(b / "pts.csv"), "--year", "2024", *area], 2,
         "cannot load model"),
        (["similar", *place, "--year", "2024", *area[:-1], str(b / "m.png")], 2,
         "must end in .tif"),
        (["similar", "--lon", "500", "--lat", "52", "--year", "2024", *area], 2, "lon=500.0"),
        (["similar", *place, "--year", "2024", *area, "--top", "3"], 2, "--matches"),
        (["change", "--years", "2024,2025", *area], 2, "year 2025 not indexed"),
        (["change", "--years", "2023,2024", "--region-file", str(b / "nope.geojson"), *area[5:]], 2,
         "does not exist"),
        (["change", "--years", "2024,2025", "--region-file", str(b / "pts.csv"), *area[5:]], 2,
         "must be .geojson, .gpkg or .shp"),
        (["change", "--years", "2023,2024", *area[:-1], str(b / "pts.csv")], 2, "must end in .tif"),
        (["rgb", "--year", "2024", *area[:-1], str(b / "m.jpg")], 2, "or .png"),
        (["classify", "--model-in", str(b / "m.joblib"), "--year", "2024", *area[:-1],
          str(b / "there.zarr")], 2, "must end in .tif"),
        # index: selections that select nothing, bad sources
        ([*ixc, "--zones", "99"], 2, "UTM zones are 1-60"),
        ([*ixc, "--zones", "thirty"], 2, "comma-separated integers"),
        ([*ixc, "--zones", "5"], 2, "nothing to index"),
        ([*ixc, "--years", "2019"], 2, "nothing to index"),
        (["index", str(b / "empty"), "--out", str(b / "new-index")], 2, "nothing to index"),
        (["index", str(b / "nope"), "--out", str(b / "new-index")], 2, "not a directory"),
        (["index", "https://127.0.0.1:9/a/../tiles/", "--out", str(b / "new-index")], 2,
         "has '.' or '..' segments"),
        (["index", "http://127.0.0.1:9/tiles", "--out", str(b / "new-index")], 2,
         "--manifest"),
        ([*ixc, "--concurrency", "0"], 2, "--concurrency must be at least 1"),
        # output folders checked before any work: what, why, what to do
        (["index", src, "--out", "/proc/x"], 2, "the folder '/proc' is not writable"),
        (["index", src, "--out", "/proc/x/y"], 2, "choose a folder you can write to"),
        (["index", src, "--out", str(b / "pts.csv")], 2, "is a file, not a folder"),
        (["catalog", ix, "--out", "/proc/x"], 2, "the folder '/proc' is not writable"),
        # info, verify, catalog, serve
        (["info", str(b / "nope")], 2, "not a directory"),
        (["info", str(b / "pts.csv")], 2, "not a directory"),
        (["verify", str(b / "nope")], 2, "not a directory"),
        # an empty selection is refused, naming what is indexed
        (["verify", ix, "--years", "1999"], 2,
         f"nothing to verify: {ix} has no tiles of years 1999; it indexes utm31: {YEAR}"),
        (["verify", ix, "--zones", "30"], 2, "has no tiles of UTM zones 30; it indexes utm31"),
        (["verify", ix, "--zones", "31", "--years", "2019"], 2,
         "no tiles of UTM zones 31 and years 2019"),
        (["verify", ix, "--zones", "99"], 2, "UTM zones are 1-60"),
        (["catalog", ix, "--out", str(b / "no" / "such" / "cat")], 2, "does not exist"),
        (["catalog", ix, "--out", str(b / "pts.csv")], 2, "is not a directory but a file"),
        (["catalog", str(b / "nope"), "--out", str(b / "cat")], 2, "not a directory"),
        (["serve", ix, "--port", "70000"], 2, "--port must be 0-65535"),
        (["serve", str(b / "nope")], 2, "not a directory"),
    ]  # fmt: skip


def test_bad_inputs_fail_first_with_one_line(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _cases(setup)
    assert len(cases) >= 30
    commands = {argv[0] for argv, _, _ in cases if argv}
    assert commands >= {"index", "info", "point", "points", "region", "verify", "catalog",
                        "serve", "demo", "classify", "similar", "change", "rgb"}  # fmt: skip
    failures = []
    for argv, code, message in cases:
        t0 = time.perf_counter()
        got = cli(argv)
        elapsed = time.perf_counter() - t0
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        if (
            got != code
            or len(lines) != 1
            or message not in lines[0]
            or "Traceback" in captured.err
            or captured.out
        ):
            failures.append((argv, got, captured.err, captured.out))
        assert elapsed < 60, (argv, elapsed)  # refused before any long read
    assert not failures, "\n".join(map(repr, failures))
    # Nothing was written by a refused command.
    base = setup["base"]
    assert not (base / "new-index").exists() and not (base / "r.tif").exists()
    assert not (base / "p.parquet").exists() and not list(base.glob(".*partial"))
    assert not (base / "m.tif").exists()


def test_entry_point_errors_in_a_new_process(setup: dict[str, Any]) -> None:
    """The installed command: one line on stderr (logging included), exit code 2."""
    b, ix = setup["base"], str(setup["ix"])
    for argv, message in (
        (["region", "0.04", "52.14", "0.06", "52.16", "--year", "2024", "--store", ix,
          "--out", str(b / "r.png")], "must end in .tif"),
        (["point", "0.05", "52.15", "--year", "2019", "--store", ix, "--allow-local-sources"],
         "not indexed"),
        (["points", str(b / "xy.csv"), "--year", "2024", "--store", ix, "--out",
          str(b / "p.parquet"), "--allow-local-sources", "-v"], "['id', 'x', 'y']"),
        (["region", "1", "2"], "the following arguments are required"),
    ):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "tessera_vz.cli", *argv],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and message in lines[0], done.stderr
        assert done.stdout == ""


def test_version_and_verbose_anywhere(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from tessera_vz import __version__

    for argv in (["--version"], ["info", "--version"], ["region", "--version"]):
        assert cli(argv) == 0
        assert capsys.readouterr().out.strip() == f"tessera-vz {__version__}"
    ix = str(setup["ix"])
    assert cli(["info", ix, "--json", "-v", "--allow-local-sources"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["zones"][0]["years"][0]["latest_tag"] == f"{YEAR}-v1"
    assert cli(["-v", "info", ix, "--json", "-vv"]) == 0
    assert cli(["--help"]) == 0 and "COMMAND" in capsys.readouterr().out


def test_help_imports_no_heavy_library() -> None:
    """`tessera_vz.cli` loads argparse, not numpy/xarray/zarr/Icechunk: --help answers at once."""
    heavy = ("numpy", "xarray", "zarr", "icechunk", "pyarrow", "dask", "rasterio", "obstore")
    code = ("import sys, tessera_vz.cli; "
            f"print([m for m in {heavy!r} if m in sys.modules])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tessera_vz.cli", "--help"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "points" in done.stdout and time.perf_counter() - t0 < 5  # generous on a busy machine


def test_ctrl_c_exits_130_with_one_line(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tessera_vz.commands.info as info

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "info", interrupted)
    assert cli(["info", str(setup["ix"])]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_a_real_sigint_exits_130(setup: dict[str, Any], tmp_path: Path) -> None:
    """SIGINT to the running command (as Ctrl-C sends it): exit code 130, no traceback."""
    import signal

    csv = tmp_path / "many.csv"
    csv.write_text("lon,lat\n" + "0.05,52.15\n" * 200_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessera_vz.cli", "points", str(csv), "--year", str(YEAR),
         "--store", str(setup["ix"]), "--allow-local-sources", "--batch-size", "1000",
         "--out", str(tmp_path / "many.parquet")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".many.parquet.*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "many.parquet").exists() and not list(tmp_path.glob(".many*"))


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_closed_pipe_ends_quietly(setup: dict[str, Any], json_flag: list[str]) -> None:
    """`tessera-vz point ... | head`: the reader leaves; no "Broken pipe", no traceback, 141."""
    argv = ["point", "0.05", "52.15", "--year", str(YEAR), "--store", str(setup["ix"]),
            "--allow-local-sources", *json_flag]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "tessera_vz.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
    # The same command with its reader present prints and exits 0.
    done = subprocess.run([sys.executable, "-m", "tessera_vz.cli", *argv], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "" and "grid_0.05_52.15" in done.stdout


def test_point_and_region_print_what_a_person_reads(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """point: a table and the values by band (no numpy repr); region: what was written."""
    import numpy as np

    from tessera_vz.reader import open_store

    ix, b = str(setup["ix"]), setup["base"]
    read = ["--store", ix, "--allow-local-sources"]
    assert cli(["point", "0.05", "52.15", "--year", str(YEAR), *read]) == 0
    text = capsys.readouterr().out
    assert "array(" not in text and "[" not in text  # neither numpy's repr nor a list
    header = next(line for line in text.splitlines() if "grid_0.05_52.15" in line)
    assert header.split()[:2] == [str(YEAR), "grid_0.05_52.15"] and f"{YEAR}-v1" in header
    values = open_store(ix, allow_local_sources=True).point(0.05, 52.15, YEAR)
    band_line = next(line for line in text.splitlines() if line.strip().startswith("b000"))
    shown = [float(v) for v in band_line.split()[1:]]
    np.testing.assert_allclose(shown, values[: len(shown)], atol=5e-5)
    out = b / "shown.zarr"
    assert cli(["region", "0.04", "52.14", "0.06", "52.16", "--year", str(YEAR), *read,
                "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "{" not in text  # not a Python dict
    rows = {line.split()[0]: line.split(maxsplit=1)[1].strip() for line in text.splitlines()
            if len(line.split()) > 1}  # fmt: skip
    assert rows["file"] == str(out) and rows["CRS"] == "EPSG:32631"
    assert rows["version"] == f"utm31/{YEAR}-v1" and rows["pixel"] == "10 x 10"
    assert rows["dataset"] == "unknown"  # a tree with no dataset directory or manifest
    assert rows["shape"].startswith("229 (y) x 146 (x) x 4 (band)")
