"""Tile geometry and naming: where a tile's pixels sit, and how tiles are named.

Readers place pixels on the map from these numbers, and the indexer checks
every header's shape against them, so their edge cases are pinned here.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessera_vz.core.geometry import (
    PIXEL,
    cell_centre,
    pixel_centres,
    project,
    tile_grids,
    utm_epsg,
    utm_zone,
)
from tessera_vz.core.layout import (
    CHUNK_BUDGET,
    chunk_rows,
    parse_tag,
    parse_tile_name,
    repo_name,
    source_paths,
    tag_name,
    tile_name,
    zone_of_repo,
)

# -- zones and EPSG ---------------------------------------------------------


@pytest.mark.parametrize(
    ("lon", "zone"),
    [
        (-180.0, 1),
        (-179.99, 1),
        (-174.0, 2),
        (0.0, 31),
        (-0.0001, 30),
        (2.95, 31),
        (5.999, 31),
        (6.0, 32),
        (179.99, 60),
        (180.0, 60),
    ],
)
def test_utm_zone_edges(lon: float, zone: int) -> None:
    """Zones start at their western edge; 180 degrees stays in zone 60."""
    assert int(utm_zone(lon)) == zone


def test_utm_zone_is_vectorised() -> None:
    """Thousands of tiles get their zones in one call."""
    lons = np.array([-180.0, 0.0, 5.999, 6.0, 180.0])
    np.testing.assert_array_equal(utm_zone(lons), [1, 31, 31, 32, 60])


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (0.85, 49.95, 32631),
        (0.85, 0.0, 32631),
        (0.85, -0.05, 32731),
        (-70.05, -33.35, 32719),
        (179.95, -89.95, 32760),
        (-179.95, 89.95, 32601),
    ],
)
def test_utm_epsg_north_and_south(lon: float, lat: float, epsg: int) -> None:
    """326zz on or north of the equator, 327zz south of it."""
    assert int(utm_epsg(lon, lat)) == epsg


# -- cells ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lon", "lat", "centre"),
    [
        (0.1, 49.9, (0.15, 49.95)),  # exactly on a western/southern edge
        (0.0, 0.0, (0.05, 0.05)),
        (-0.05, -0.05, (-0.05, -0.05)),  # a centre maps to itself
        (-0.0001, -0.0001, (-0.05, -0.05)),
        (-0.1, -10.1, (-0.05, -10.05)),  # negative edge belongs to the cell east/north
        (-0.10001, -10.10001, (-0.15, -10.15)),  # 1 m west/south of that edge
        (0.85, 49.95, (0.85, 49.95)),
        (0.89999, 49.99999, (0.85, 49.95)),
        (179.99, 89.99, (179.95, 89.95)),
        (-180.0, -90.0, (-179.95, -89.95)),
    ],
)
def test_cell_centre(lon: float, lat: float, centre: tuple[float, float]) -> None:
    """Each point lies in the 0.1-degree cell whose centre names its tile."""
    clon, clat = cell_centre(lon, lat)
    assert (float(clon), float(clat)) == centre
    assert tile_name(float(clon), float(clat)) == tile_name(*centre)


def test_cell_centre_absorbs_float_noise_at_edges() -> None:
    """Coordinates a float error away from an edge (e.g. ``0.1 * 3``) count as on it.

    Points are snapped to micro-degrees (~10 cm) first, so 0.30000000000000004
    and 0.29999999999999998 both fall in the cell starting at 0.3.
    """
    clon, clat = cell_centre([0.1 * 3, 0.3 - 1e-15, 0.8999999], [0.7 * 3, 2.1 - 1e-15, 49.9999999])
    np.testing.assert_array_equal(clon, [0.35, 0.35, 0.95])
    np.testing.assert_array_equal(clat, [2.15, 2.15, 50.05])


def test_cell_centre_is_vectorised_and_prints_like_upstream() -> None:
    """Centres come back as two-decimal odd multiples of 0.05, for arrays of points."""
    rng = np.random.default_rng(0)
    lon = rng.uniform(-180, 180, 1000)
    lat = rng.uniform(-89.9, 89.9, 1000)
    clon, clat = cell_centre(lon, lat)
    assert np.all(np.abs(clon - lon) <= 0.05 + 1e-9)
    assert np.all(np.abs(clat - lat) <= 0.05 + 1e-9)
    hundredths = np.round(np.concatenate([clon, clat]) * 100).astype(int)
    assert np.all(hundredths % 10 == 5)


# -- tile rectangles --------------------------------------------------------


def test_height_is_about_a_tenth_of_a_degree_of_latitude() -> None:
    """H is ~11.1 km / 10 m whatever the latitude (meridian arc x UTM scale)."""
    g = tile_grids([0.85, 0.85, 0.85, 2.95, -70.05], [0.05, 45.05, 49.95, 49.95, -33.35])
    assert np.all((g.height >= 1100) & (g.height <= 1135)), g.height
    # Near the central meridian at 50N the cell is almost a rectangle: 0.1 deg ~ 11.13 km.
    assert 1110 <= g.height[3] <= 1114


def test_width_shrinks_with_latitude() -> None:
    """A 0.1-degree cell is ~1114 px wide at the equator, ~790 at 45N, ~380 at 70N."""
    g = tile_grids([3.05, 3.05, 3.05], [0.05, 45.05, 70.05])
    w0, w45, w70 = (int(w) for w in g.width)
    assert w0 > w45 > w70
    assert 1105 <= w0 <= 1120
    assert w45 == pytest.approx(w0 * np.cos(np.radians(45.05)), rel=0.02)
    assert w70 == pytest.approx(w0 * np.cos(np.radians(70.05)), rel=0.02)


def test_rectangle_sits_on_the_zone_lattice() -> None:
    """Left and top edges are multiples of 10 m and enclose the cell's corners."""
    lon = np.array([0.85, 2.95, -0.05, 179.95, -70.05])
    lat = np.array([49.95, 0.05, -0.05, -45.05, -33.35])
    g = tile_grids(lon, lat)
    np.testing.assert_array_equal(g.left % PIXEL, 0)
    np.testing.assert_array_equal(g.top % PIXEL, 0)
    west = np.minimum(g.corners[:, 0, 0], g.corners[:, 3, 0])
    north = np.maximum(g.corners[:, 0, 1], g.corners[:, 1, 1])
    assert np.all((g.left <= west) & (west - g.left < PIXEL))
    assert np.all((g.top >= north) & (g.top - north < PIXEL))
    np.testing.assert_array_equal(g.epsg, [32631, 32631, 32730, 32760, 32719])


def test_corners_are_the_projected_cell_corners() -> None:
    """Corners NW, NE, SE, SW are the cell's lon/lat corners projected to the tile's zone."""
    g = tile_grids(0.85, 49.95)
    e, n = project([0.8, 0.9, 0.9, 0.8], [50.0, 50.0, 49.9, 49.9], 32631)
    np.testing.assert_allclose(g.corners[0, :, 0], e)
    np.testing.assert_allclose(g.corners[0, :, 1], n)
    west = min(e[0], e[3])
    assert int(g.width[0]) == round((max(e[1], e[2]) - west) / PIXEL)
    assert int(g.height[0]) == round((max(n[0], n[1]) - min(n[2], n[3])) / PIXEL)


def test_southern_tile_northings_use_the_false_northing() -> None:
    """South of the equator northings count down from 10,000,000 m (EPSG 327zz)."""
    g = tile_grids(0.85, -0.05)
    assert int(g.epsg[0]) == 32731
    assert float(g.top[0]) == 10_000_000.0


def test_pixel_centres_are_offset_by_half_a_pixel() -> None:
    """Pixel (r, c) is centred at (left + 10c + 5, top - 10r - 5)."""
    y, x = pixel_centres(326600.0, 4996420.0, 3, 4)
    np.testing.assert_array_equal(y, [4996415.0, 4996405.0, 4996395.0])
    np.testing.assert_array_equal(x, [326605.0, 326615.0, 326625.0, 326635.0])
    g = tile_grids(0.85, 49.95)
    y, x = pixel_centres(float(g.left[0]), float(g.top[0]), int(g.height[0]), int(g.width[0]))
    assert y.size == g.height[0] and x.size == g.width[0]
    assert np.all(np.diff(y) == -PIXEL) and np.all(np.diff(x) == PIXEL)
    np.testing.assert_array_equal(x % PIXEL, 5.0)
    np.testing.assert_array_equal(y % PIXEL, 5.0)


# -- chunk rows -------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "row_nbytes", "budget", "rows"),
    [
        (1112, 1114 * 128, CHUNK_BUDGET, 4),  # 7 rows would fit, but 1112 = 2^3 x 139
        (1112, 1000 * 128, CHUNK_BUDGET, 8),
        (1110, 1114 * 4, CHUNK_BUDGET, 222),  # scales: 235 rows fit, 222 divides 1110
        (139, 1000, CHUNK_BUDGET, 139),  # whole array fits in one chunk
        (139, 1000, 100_000, 1),  # prime height: only 1 or all rows
        (12, 10, 60, 6),
        (12, 10, 59, 4),
        (5, 1 << 21, CHUNK_BUDGET, 1),  # a single row exceeds the budget
        (0, 100, CHUNK_BUDGET, 1),
        (7, 0, CHUNK_BUDGET, 7),
    ],
)
def test_chunk_rows(height: int, row_nbytes: int, budget: int, rows: int) -> None:
    """Rows per chunk: the largest divisor of H within budget, at least one."""
    assert chunk_rows(height, row_nbytes, budget) == rows


@pytest.mark.parametrize("height", [1, 2, 97, 360, 1106, 1112, 1132])
@pytest.mark.parametrize("row_nbytes", [1, 817 * 4, 1114 * 128, 3 << 20])
def test_chunk_rows_properties(height: int, row_nbytes: int) -> None:
    """Always a divisor of H; within budget unless one row alone exceeds it; maximal."""
    k = chunk_rows(height, row_nbytes)
    assert height % k == 0
    if row_nbytes > CHUNK_BUDGET:
        assert k == 1
    else:
        assert k * row_nbytes <= CHUNK_BUDGET
    bigger = [d for d in range(k + 1, height + 1) if height % d == 0]
    assert all(d * row_nbytes > CHUNK_BUDGET for d in bigger)


# -- names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lon", "lat", "name"),
    [
        (0.85, 49.95, "grid_0.85_49.95"),
        (-0.05, -10.15, "grid_-0.05_-10.15"),
        (-179.95, 89.95, "grid_-179.95_89.95"),
        (3.05, -0.05, "grid_3.05_-0.05"),
    ],
)
def test_tile_name_roundtrip(lon: float, lat: float, name: str) -> None:
    """Tile names print like upstream's and parse back to the same centre."""
    assert tile_name(lon, lat) == name
    assert parse_tile_name(name) == (lon, lat)


@pytest.mark.parametrize(
    "name",
    ["grid_0.85", "grid_0.85_49.9", "grid_a_b", "tile_0.85_49.95", "grid_0.85_49.95.npy", ""],
)
def test_parse_tile_name_refuses_other_names(name: str) -> None:
    """Anything that is not exactly ``grid_<lon>_<lat>`` is refused by name."""
    with pytest.raises(ValueError, match="not a TESSERA tile name"):
        parse_tile_name(name)


def test_source_paths_follow_the_upstream_tree() -> None:
    """Embeddings and scales live side by side under ``{year}/{name}/``."""
    assert source_paths(2024, "grid_-0.05_-10.15") == (
        "2024/grid_-0.05_-10.15/grid_-0.05_-10.15.npy",
        "2024/grid_-0.05_-10.15/grid_-0.05_-10.15_scales.npy",
    )


def test_repo_and_tag_names() -> None:
    """Repos are ``utmZZ.icechunk``, tags ``{year}-v{n}``; foreign names give None."""
    assert repo_name(1) == "utm01.icechunk"
    assert zone_of_repo(repo_name(31)) == 31
    assert zone_of_repo("utm31.zarr") is None
    assert parse_tag(tag_name(2024, 3)) == (2024, 3)
    assert parse_tag("release-1") is None
    with pytest.raises(ValueError):
        repo_name(61)


@pytest.mark.parametrize(
    "box",
    [
        (0.0, 49.5, 0.6, 50.0),  # mid-latitude: cell parallels bow ~1.2 m in UTM
        (1.0, 69.8, 1.6, 70.3),  # high latitude, skewed cells
        (5.4, -0.3, 5.99, 0.3),  # across the equator, at the zone's east edge
        (2.0, -45.4, 2.6, -44.9),  # southern tiles on the northern grid
    ],
)
def test_ownership_equals_unprojecting_every_pixel(box: tuple[float, ...]) -> None:
    """The quadrilateral shortcut gives exactly the owner the per-pixel rule gives."""
    from tessera_vz.core.geometry import FALSE_NORTHING, unproject
    from tessera_vz.reader.ownership import ownership
    from tessera_vz.reader.windows import TileRects, Window, cell_id

    lon0, lat0, lon1, lat1 = box
    lons, lats = np.meshgrid(np.arange(lon0 + 0.05, lon1, 0.1), np.arange(lat0 + 0.05, lat1, 0.1))
    keep = np.random.default_rng(1).random(lons.size) > 0.2  # some tiles absent
    lon, lat = np.round(lons.ravel()[keep], 2), np.round(lats.ravel()[keep], 2)
    g = tile_grids(lon, lat)
    top = g.top - np.where(g.epsg >= 32700, FALSE_NORTHING, 0)
    rects = TileRects(
        names=np.array([f"t{i}" for i in range(lon.size)]), left=g.left, top=top,
        height=g.height, width=g.width, cell=cell_id(lon, lat), facts={"lon": lon, "lat": lat},
    )  # fmt: skip
    win = Window(31, float(g.left.min()) + 3000, float(top.max()) - 2000, 900, 1300)
    got = ownership(win, rects)
    # Reference: unproject every pixel centre, its cell's tile if it covers it, else any.
    y, x = win.centres()
    xx, yy = np.meshgrid(x, y)
    plon, plat = unproject(xx, yy, win.epsg)
    right, bottom = rects.left + 10 * rects.width, rects.top - 10 * rects.height
    covers = [(xx > rects.left[t]) & (xx < right[t]) & (yy < rects.top[t]) & (yy > bottom[t])
              for t in range(lon.size)]  # fmt: skip
    want = np.full(xx.shape, -1)
    cells = cell_id(plon, plat)
    for t in range(lon.size):
        want[(cells == rects.cell[t]) & covers[t]] = t
    for t in range(lon.size):
        want[(want < 0) & covers[t]] = t
    assert (got >= 0).mean() > 0.5
    np.testing.assert_array_equal(got, want)
