"""Footprints in EPSG:4326: every tile's outline holds its centre and its whole cell.

Tiles in several zones, north and south of the equator, at high latitude,
and on both sides of the antimeridian (zones 1 and 60), whose footprints
must be split there instead of wrapping around the globe.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from tessera_vz.catalog.footprints import footprints, stac_bbox, utm_bounds
from tessera_vz.core.geometry import HALF_CELL, PIXEL, project, tile_grids

CENTRES = [
    (0.85, 49.95),  # zone 31 north
    (5.95, -0.05),  # zone 31, just south of the equator (southern UTM)
    (6.05, 0.05),  # zone 32, just north of it
    (33.35, -33.95),  # zone 36 south
    (2.05, 70.05),  # high latitude
    (-70.15, 83.95),  # near UTM's northern limit
    (147.25, -42.85),  # zone 55 south
    (-122.45, 37.75),  # zone 10 north
]
ANTIMERIDIAN = [(179.95, 10.05), (-179.95, -45.05)]
NEAR_ANTIMERIDIAN = [(179.95, -0.05), (-179.95, 60.05)]


def _footprints(centres: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lon, lat = (np.array(v) for v in zip(*centres, strict=True))
    g = tile_grids(lon, lat)
    return footprints(g.epsg, utm_bounds(g.left, g.top, g.height, g.width), g.lon), lon, lat


@pytest.mark.parametrize(
    "centres", [CENTRES, ANTIMERIDIAN + NEAR_ANTIMERIDIAN], ids=["zones", "antimeridian"]
)
def test_footprint_holds_centre_and_matches_cell(centres: list[tuple[float, float]]) -> None:
    polys, lon, lat = _footprints(centres)
    g = tile_grids(lon, lat)
    bounds = utm_bounds(g.left, g.top, g.height, g.width)
    for poly, x, y, epsg, box in zip(polys, lon, lat, g.epsg, bounds, strict=True):
        assert poly.is_valid, poly
        assert poly.contains(shapely.Point(x, y)), (x, y)
        xmin, _, xmax, _ = poly.bounds
        assert xmin >= -180.0 and xmax <= 180.0
        # The tile's pixels are its cell snapped to the 10 m lattice, with sizes
        # rounded from the corners and parallels bowing between them: no point
        # of the cell's outline lies more than 1.5 pixels outside the footprint.
        cell = shapely.segmentize(
            shapely.box(x - HALF_CELL, y - HALF_CELL, x + HALF_CELL, y + HALF_CELL), 0.001
        )
        ring = shapely.get_coordinates(cell)
        e, n = project(ring[:, 0], ring[:, 1], int(epsg))
        left, bottom, right, top = box
        outside = np.maximum.reduce([left - e, e - right, bottom - n, n - top, np.zeros_like(e)])
        assert outside.max() <= 1.5 * PIXEL, (x, y, outside.max())


def test_footprint_follows_the_utm_rectangle() -> None:
    """Each footprint unprojects exactly the tile's rectangle: its corners map back onto it."""
    polys, lon, lat = _footprints(CENTRES)
    g = tile_grids(lon, lat)
    bounds = utm_bounds(g.left, g.top, g.height, g.width)
    for poly, epsg, (left, bottom, right, top) in zip(polys, g.epsg, bounds, strict=True):
        ring = np.asarray(poly.exterior.coords)
        e, n = project(ring[:, 0], ring[:, 1], int(epsg))
        on_edge = (
            np.isclose(e, left, atol=1e-3) | np.isclose(e, right, atol=1e-3)
            | np.isclose(n, bottom, atol=1e-3) | np.isclose(n, top, atol=1e-3)
        )  # fmt: skip
        assert on_edge.all()
        assert e.min() == pytest.approx(left, abs=1e-3) and e.max() == pytest.approx(
            right, abs=1e-3
        )
        # Densified: 4 segments per edge, not just the 4 corners.
        assert len(ring) == 17


def test_antimeridian_tiles_are_split() -> None:
    polys, lon, _ = _footprints(ANTIMERIDIAN)
    for poly, x in zip(polys, lon, strict=True):
        assert poly.geom_type == "MultiPolygon"
        west, _, east, _ = stac_bbox(poly)
        # STAC's rule for a box crossing the antimeridian: west > east.
        assert west > 0 > east
        assert west < x < 180.0 or -180.0 < x < east


def test_rows_wkb_is_shapelys_byte_for_byte() -> None:
    """``tiles.parquet``'s footprints (WKB by numpy) equal shapely's, split ones included."""
    import xarray as xr

    from tessera_vz.catalog.tables import UnitVersion, unit_rows

    centres = CENTRES + ANTIMERIDIAN + NEAR_ANTIMERIDIAN
    lon, lat = (np.array(v) for v in zip(*centres, strict=True))
    g = tile_grids(lon, lat)
    n = lon.size
    names = [f"grid_{a:.2f}_{b:.2f}" for a, b in centres]
    cols = {"lon": g.lon, "lat": g.lat, "zone": g.zone, "epsg": g.epsg, "left": g.left,
            "top": g.top, "height": g.height, "width": g.width, "bands": np.full(n, 128),
            "source": np.array(["https://example.org/t/"] * n),
            "emb_path": np.array([f"2024/{t}/{t}.npy" for t in names]),
            "scales_path": np.array([f"2024/{t}/{t}_scales.npy" for t in names]),
            "emb_size": np.ones(n), "scales_size": np.ones(n),
            "emb_checksum": np.array(["x"] * n),
            "scales_checksum": np.array(["x"] * n)}  # fmt: skip
    table = xr.Dataset({k: ("tile", np.asarray(v)) for k, v in cols.items()},
                       coords={"tile": names})  # fmt: skip
    rows = unit_rows(table, UnitVersion(31, 2024, "s" * 20, None, "../index/utm31.icechunk"))
    order = np.argsort(np.array(names), kind="stable")
    want = shapely.orient_polygons(
        footprints(
            g.epsg[order], utm_bounds(g.left, g.top, g.height, g.width)[order], g.lon[order]
        ),
        exterior_cw=False,
    )
    assert rows.table["geometry"].to_pylist() == list(shapely.to_wkb(want, output_dimension=2))
    box = rows.table["bbox"].combine_chunks()
    got = np.stack([box.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], axis=1)
    np.testing.assert_array_equal(got, shapely.bounds(want))
    assert rows.geometry_types == ["MultiPolygon", "Polygon"]
    assert all(shapely.equals_exact(rows.geometries, want, tolerance=0))
