"""What biodiversity users hold: GBIF downloads, vector files, WKT, a year per observation.

Each input is read by ``tessera-vz points`` and the values compared with
``np.load`` of the source tiles (``truth`` finds the pixel from the tile
geometry of the design brief, not from the reader).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tessera_vz.cli import main as cli
from tessera_vz.reader.store import TesseraStore
from tests import test_points_table as table
from tests.crs84 import is_crs84
from tests.test_points_table import BANDS, truth

YEARS = (2024, 2025)
COLS = [f"b{b:03d}" for b in range(BANDS)]
#: The same tree and index as the points table's tests (module-scoped fixtures).
tree, store = table.tree, table.store

#: GBIF's simple download columns (tab-separated, unquoted), in GBIF's order.
GBIF_COLUMNS = [
    "gbifID", "datasetKey", "occurrenceID", "kingdom", "phylum", "class", "order", "family",
    "genus", "species", "infraspecificEpithet", "taxonRank", "scientificName",
    "verbatimScientificName", "verbatimScientificNameAuthorship", "countryCode", "locality",
    "stateProvince", "occurrenceStatus", "individualCount", "publishingOrgKey",
    "decimalLatitude", "decimalLongitude", "coordinateUncertaintyInMeters",
    "coordinatePrecision", "elevation", "elevationAccuracy", "depth", "depthAccuracy",
    "eventDate", "day", "month", "year", "taxonKey", "speciesKey", "basisOfRecord",
    "institutionCode", "collectionCode", "catalogNumber", "recordNumber", "identifiedBy",
    "dateIdentified", "license", "rightsHolder", "recordedBy", "typeStatus",
    "establishmentMeans", "lastInterpreted", "mediaType", "issue",
]  # fmt: skip
#: Observations: (gbifID, species, lon, lat, year, expected status).
OBS: list[tuple[int, str, Any, Any, Any, str]] = [
    (4011111101, "Alauda arvensis", -0.06, 52.12, 2024, "ok"),
    (4011111102, "Vanellus vanellus", 0.04, 52.17, 2025, "ok"),
    (4011111103, "Perdix perdix", 3.07, 52.16, 2024, "ok"),
    (4011111104, "Emberiza calandra", 0.04, 52.17, 2019, "year not indexed"),
    (4011111105, "Passer montanus", 0.04, 52.17, None, "no year"),
    (4011111106, "Sturnus vulgaris", 30.0, 10.0, 2025, "no tile"),
    (4011111107, "Corvus frugilegus", None, 52.15, 2024, "empty"),
]


def gbif_tsv(path: Path) -> Path:
    """A GBIF simple download: tabs, no quoting, a stray quote and commas in free text."""
    lines = ["\t".join(GBIF_COLUMNS)]
    for gid, species, lon, lat, year, _ in OBS:
        row = dict.fromkeys(GBIF_COLUMNS, "")
        row.update(
            gbifID=str(gid), datasetKey="50c9509d-22c7-4a22-a47d-8c48425ef4a7",
            kingdom="Animalia", phylum="Chordata", **{"class": "Aves"}, species=species,
            taxonRank="SPECIES", scientificName=f"{species} L., 1758", countryCode="GB",
            locality='Field by the "old" mill, north side', occurrenceStatus="PRESENT",
            decimalLatitude="" if lat is None else str(lat),
            decimalLongitude="" if lon is None else str(lon),
            coordinateUncertaintyInMeters="30.0",
            eventDate=f"{year}-05-14" if year else "", day="14" if year else "",
            month="5" if year else "", year="" if year is None else str(year),
            basisOfRecord="HUMAN_OBSERVATION", license="CC_BY_4_0",
            issue="COORDINATE_ROUNDED;CONTINENT_DERIVED_FROM_COORDINATES",
        )  # fmt: skip
        lines.append("\t".join(row[c] for c in GBIF_COLUMNS))
    path.write_text("\n".join(lines) + "\n")
    return path


def points(tree: dict[str, Any], *argv: str) -> int:
    return cli(["points", *argv, "--store", str(tree["out"]), "--allow-local-sources"])


def check_own_years(df: pd.DataFrame, root: Path) -> None:
    """One row per observation, read in its own year, values as np.load says."""
    assert df.gbifID.tolist() == [o[0] for o in OBS]
    assert df.status.tolist() == [o[5] for o in OBS]
    for (_, _, lon, lat, year, status), (_, row) in zip(OBS, df.iterrows(), strict=True):
        if status == "ok":
            assert row.year == year
            np.testing.assert_array_equal(row[COLS].to_numpy(np.float32),
                                          truth(root, year, lon, lat))  # fmt: skip
        else:
            assert row[COLS].isna().all(), row  # never another year's value
        if status in ("year not indexed", "no year"):
            assert pd.isna(row.year) or row.year == year
            assert pd.isna(row.tile)


@pytest.mark.parametrize("name", ["occurrence.txt", "0012345-240506114902167.csv", "obs.tsv"])
def test_gbif_download_each_row_in_its_own_year(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """GBIF's TSV (as .txt, as the .csv GBIF names it, as .tsv) is read as columns."""
    tsv = gbif_tsv(tmp_path / name)
    out = tmp_path / "emb.parquet"
    assert points(tree, str(tsv), "--out", str(out), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["coordinates"] == "columns 'decimalLongitude'/'decimalLatitude'"
    assert doc["rows"] == len(OBS) and doc["years"] == "column 'year'"
    gdf = gpd.read_parquet(out)
    assert is_crs84(gdf.crs)
    df = pd.DataFrame(gdf.drop(columns="geometry"))
    check_own_years(df, tree["root"])
    # Every GBIF column is kept; its own year as year_input; the free text intact.
    assert set(GBIF_COLUMNS) - {"year"} <= set(df.columns) and "year_input" in df.columns
    assert df.locality[0] == 'Field by the "old" mill, north side'
    meta = pq.read_schema(out).metadata
    assert meta[b"tessera:years"] == b"2024 2025"


def test_year_flag_still_reads_every_row_in_the_years_named(
    tree: dict[str, Any], tmp_path: Path
) -> None:
    tsv = gbif_tsv(tmp_path / "occurrence.txt")
    out = tmp_path / "emb.parquet"
    assert points(tree, str(tsv), "--out", str(out), "--year", "2025") == 0
    df = pq.read_table(out).to_pandas()
    assert (df.year == 2025).all() and df.status.tolist()[:3] == ["ok", "ok", "ok"]
    np.testing.assert_array_equal(df.loc[0, COLS].to_numpy(np.float32),
                                  truth(tree["root"], 2025, -0.06, 52.12))  # fmt: skip


def test_year_column_named_and_the_api(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    """--year-column NAME; store.sample(df) takes a 'year' column, or year_column=."""
    df = pd.DataFrame({"gbifID": [o[0] for o in OBS],
                       "decimalLongitude": [np.nan if o[2] is None else o[2] for o in OBS],
                       "decimalLatitude": [o[3] for o in OBS],
                       "obs_year": [o[4] for o in OBS]})  # fmt: skip
    table = store.sample(df, year_column="obs_year")
    check_own_years(table.to_pandas(), tree["root"])
    same = store.sample(df.rename(columns={"obs_year": "Year"}), batch_size=2)
    assert same.drop_columns(["Year"]).equals(table.drop_columns(["obs_year"]))
    csv = tmp_path / "obs.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "emb.parquet"
    assert points(tree, str(csv), "--out", str(out), "--year-column", "obs_year") == 0
    check_own_years(pq.read_table(out).to_pandas(), tree["root"])


def gdf_of_obs() -> gpd.GeoDataFrame:
    ok = [o for o in OBS if o[2] is not None]
    return gpd.GeoDataFrame(
        {"gbifID": [o[0] for o in ok], "species": [o[1] for o in ok],
         "year": pd.array([o[4] for o in ok], "Int64")},
        geometry=gpd.points_from_xy([o[2] for o in ok], [o[3] for o in ok]), crs="EPSG:4326",
    )  # fmt: skip


@pytest.mark.parametrize(("suffix", "crs"), [("gpkg", 27700), ("geojson", 4326), ("shp", 32631)])
def test_vector_files_in_their_crs(
    tree: dict[str, Any], tmp_path: Path, suffix: str, crs: int
) -> None:
    """A GeoPackage (British National Grid), GeoJSON, a shapefile (UTM 31N), by geopandas."""
    src = tmp_path / f"obs.{suffix}"
    gdf_of_obs().to_crs(crs).to_file(src)
    out = tmp_path / "emb.parquet"
    assert points(tree, str(src), "--out", str(out), "--year", "2024,2025") == 0
    got = gpd.read_parquet(out)
    ok = [o for o in OBS if o[2] is not None]
    assert len(got) == 2 * len(ok) and got.gbifID.tolist() == [o[0] for o in ok for _ in YEARS]
    np.testing.assert_allclose(got.geometry.x[::2], [o[2] for o in ok], atol=1e-7)
    for (_, _, lon, lat, _, status), (_, row) in zip(
        [o for o in ok for _ in YEARS], got.iterrows(), strict=True
    ):
        want = truth(tree["root"], row.year, lon, lat)
        if status == "no tile":
            assert row.status == "no tile" and want is None
        else:  # a point a metre from where it was is the same 10 m pixel here
            assert row.status == "ok", row
            np.testing.assert_array_equal(row[COLS].to_numpy(np.float32), want)
    # And each observation in its own year, from the file's year column.
    own = tmp_path / "own.parquet"
    assert points(tree, str(src), "--out", str(own)) == 0
    assert pq.read_table(own).column("status").to_pylist() == [o[5] for o in ok]


def test_wkt_column_in_a_csv(tree: dict[str, Any], tmp_path: Path) -> None:
    ok = [o for o in OBS if o[2] is not None]
    csv = tmp_path / "obs.csv"
    lines = ["id;WKT;year"] + [f"{o[0]};POINT ({o[2]} {o[3]});{o[4] or ''}" for o in ok]
    lines.append("99;;2024")  # a missing geometry
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "emb.parquet"
    assert points(tree, str(csv), "--out", str(out)) == 0
    df = pq.read_table(out).to_pandas()
    assert df.status.tolist() == [o[5] for o in ok] + ["empty"]
    np.testing.assert_array_equal(df.loc[0, COLS].to_numpy(np.float32),
                                  truth(tree["root"], 2024, ok[0][2], ok[0][3]))  # fmt: skip
    np.testing.assert_array_equal(df.loc[1, COLS].to_numpy(np.float32),
                                  truth(tree["root"], 2025, ok[1][2], ok[1][3]))  # fmt: skip


def test_polygons_are_refused_for_points_with_the_way_out(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "fields.geojson"
    field = gpd.GeoSeries.from_wkt(["POLYGON ((0 52.1, 0.1 52.1, 0.1 52.2, 0 52.2, 0 52.1))"])
    gpd.GeoDataFrame({"id": [1]}, geometry=field, crs=4326).to_file(src)
    assert points(tree, str(src), "--out", str(tmp_path / "o.parquet"), "--year", "2024") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Polygon" in err and "--region-file" in err
