"""The one coordinate and bbox validator (``tessera_vz.core.coords``).

The CLI, the viewer's API, the reader and the manifest inventory all check
coordinates here; every refusal says what was expected and what was found.
Points tables and the catalog build their GeoParquet metadata in one place too.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tessera_vz.catalog.tables import schema_with_geo
from tessera_vz.core.coords import (
    check_bbox,
    check_lonlat,
    is_valid_lonlat,
    valid_lonlat_mask,
)
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.geoparquet import GEOPARQUET_VERSION, geo_metadata


@pytest.mark.parametrize(
    ("lon", "lat", "ok"),
    [
        (0.0, 0.0, True),
        (-180.0, -90.0, True),
        (180.0, 90.0, True),
        (180.01, 0.0, False),
        (0.0, -90.5, False),
        (math.nan, 0.0, False),
        (0.0, math.inf, False),
    ],
)
def test_one_rule_for_one_and_for_many(lon: float, lat: float, ok: bool) -> None:
    assert is_valid_lonlat(lon, lat) is ok
    assert valid_lonlat_mask(np.array([lon]), np.array([lat])).tolist() == [ok]


def test_check_lonlat_names_the_coordinate_and_the_ranges() -> None:
    check_lonlat(0.85, 49.95)
    with pytest.raises(ConfigurationError) as lat:
        check_lonlat(0.8, 95.0)
    assert "lat must lie in [-90, 90]" in str(lat.value)
    assert "lon=0.8, lat=95.0" in str(lat.value) and "-90 <= lat <= 90" in str(lat.value)
    with pytest.raises(ValueError, match=r"lon must lie in \[-180, 180\]"):
        check_lonlat(math.nan, 49.9, "the pixel")


@pytest.mark.parametrize(
    ("bbox", "says"),
    [
        ((1.0, 2.0, 3.0), "four numbers"),
        (("a", 2.0, 3.0, 4.0), "four numbers"),
        ((math.nan, 49.8, 0.7, 50.0), "bbox west is nan (non-finite)"),
        ((0.0, 40.0, 1.0, 95.0), "bbox north is 95.0; expected a number within +-90"),
        ((1.0, 49.8, 0.7, 50.0), "west (1.0) must be less than east (0.7): expected west < east"),
        ((0.7, 50.0, 0.9, 49.8), "south (50.0) must be less than north (49.8)"),
    ],
)
def test_check_bbox_refuses_with_a_reason(bbox: tuple[float, ...], says: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        check_bbox(bbox)
    assert says in str(exc.value)


def test_check_bbox_gives_floats() -> None:
    box = check_bbox([np.float32(0.5), 49, "0.9", 50.0])  # type: ignore[list-item]
    assert box == (0.5, 49.0, 0.9, 50.0)
    assert all(type(v) is float for v in box)


def test_one_geoparquet_builder_for_points_and_footprints() -> None:
    points = geo_metadata(["Point"], [0.0, 1.0, 2.0, 3.0])
    tiles = json.loads(schema_with_geo(["Polygon"], None).metadata[b"geo"])
    for doc in (points, tiles):
        assert doc["version"] == GEOPARQUET_VERSION and doc["primary_column"] == "geometry"
        col = doc["columns"]["geometry"]
        assert col["encoding"] == "WKB" and col["edges"] == "planar"
        assert "crs" not in col  # GeoParquet's default, OGC:CRS84: what readers expect
    assert points["columns"]["geometry"]["bbox"] == [0.0, 1.0, 2.0, 3.0]
    assert "orientation" not in points["columns"]["geometry"]
    col = tiles["columns"]["geometry"]
    assert col["orientation"] == "counterclockwise" and "bbox" not in col
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
