"""Output grids of regions: a north-up block of whole pixels in one CRS (pure, no I/O).

A region is returned on one :class:`Grid`. By default that is the 10 m
lattice of the UTM zone holding the bbox centre, the lattice the zone's
tiles lie on, so none of that zone's pixels is resampled. Any CRS pyproj
understands can be asked for instead, with a resolution in the CRS's units
that defaults to about 10 m (:func:`default_resolution`). Grids are aligned
to whole multiples of their resolution, so regions of neighbouring bboxes
on the same CRS and resolution share one grid and tile without seams.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from tessera_vz.core.coords import check_bbox
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.geometry import FALSE_NORTHING, PIXEL, utm_zone
from tessera_vz.reader.windows import Window, window_for_bbox

#: What ``resolution`` aims at when not given: metres on the ground.
TARGET_METRES = 10.0
#: Points per bbox edge projected to find a grid's extent (edges bow in most CRSs).
_EDGE_POINTS = 65
#: Fraction of a pixel within which a bbox edge counts as lying on a grid line.
_SNAP = 1e-6


@dataclass(frozen=True)
class Grid:
    """A north-up grid: ``height`` x ``width`` pixels of ``xres`` x ``yres`` CRS units.

    ``crs`` is kept as text (``"EPSG:4326"``, or WKT for a CRS without an
    authority code) so a grid is hashable and pickles small. ``lattice``
    names the UTM zone whose 10 m tile lattice the grid is: its pixels are
    then that zone's own pixels, northings shifted by ``false_northing``
    (10,000,000 m for a southern UTM CRS) from the zone's northern lattice.
    """

    crs: str
    left: float
    top: float
    xres: float
    yres: float
    height: int
    width: int
    lattice: int | None = None
    false_northing: float = 0.0

    @classmethod
    def of_window(cls, window: Window, *, south: bool = False) -> Grid:
        """The grid of a zone window: on the zone's northern CRS, or its southern (``327zz``,
        northings 10,000,000 m higher, the same pixels) with ``south``."""
        if south:
            top = window.top + FALSE_NORTHING
            return cls(f"EPSG:{32700 + window.zone}", window.left, top, PIXEL, PIXEL,
                       window.height, window.width, window.zone, FALSE_NORTHING)  # fmt: skip
        return cls(f"EPSG:{window.epsg}", window.left, window.top, PIXEL, PIXEL,
                   window.height, window.width, window.zone)  # fmt: skip

    @property
    def size(self) -> int:
        return self.height * self.width

    def centres(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Pixel-centre ``y`` (descending) and ``x`` coordinates in the grid's CRS."""
        y = self.top - self.yres * (np.arange(self.height, dtype=np.float64) + 0.5)
        x = self.left + self.xres * (np.arange(self.width, dtype=np.float64) + 0.5)
        return y, x

    @property
    def transform(self) -> list[float]:
        """GDAL-order affine ``[a, b, c, d, e, f]`` (``x = a*col + b*row + c``)."""
        return [self.xres, 0.0, self.left, 0.0, -self.yres, self.top]

    @property
    def geo_transform(self) -> str:
        """GDAL's ``GeoTransform`` text: origin x, pixel width, 0, origin y, 0, -pixel height."""
        return f"{self.left!r} {self.xres!r} 0 {self.top!r} 0 {-self.yres!r}"

    def window(self) -> Window:
        """The zone window this grid is (only for a zone's own lattice)."""
        if self.lattice is None:
            raise ValueError(f"grid in {self.crs} is not a UTM zone's 10 m lattice")
        return Window(self.lattice, self.left, self.top - self.false_northing,
                      self.height, self.width)  # fmt: skip


@functools.lru_cache(maxsize=64)
def parse_crs(crs: Any) -> CRS:
    """A CRS from anything pyproj understands (``"EPSG:4326"``, ``4326``, WKT, PROJ)."""
    if isinstance(crs, CRS):
        return crs
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise ConfigurationError(
            f"crs {crs!r} is not a coordinate reference system pyproj understands ({exc}); "
            "give an EPSG code such as 'EPSG:4326' or 32631, or a WKT/PROJ string"
        ) from None


def crs_text(crs: CRS) -> str:
    """``AUTHORITY:CODE`` when the CRS has one (at full confidence), else its WKT."""
    auth = crs.to_authority(min_confidence=100)
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def utm_lattice(crs: CRS) -> tuple[int, float] | None:
    """(zone, false northing) when ``crs`` is a WGS 84 UTM zone (EPSG 326zz / 327zz)."""
    code = crs.to_epsg(min_confidence=100)
    if code is not None and (32601 <= code <= 32660 or 32701 <= code <= 32760):
        return code % 100, (FALSE_NORTHING if code > 32700 else 0.0)
    return None


def default_resolution(crs: CRS, lat: float) -> tuple[float, float]:
    """``(xres, yres)`` in the CRS's units giving about 10 m pixels on the ground.

    Projected CRSs: 10 m in their linear unit (10 for metres, 33 for US
    survey feet). Geographic CRSs: 10 m along the parallel and along the
    meridian at latitude ``lat`` (the bbox centre) on the CRS's ellipsoid,
    so pixels are about 10 m x 10 m there and not square in degrees (at
    50 degrees N: 0.00014 x 0.00009). Rounded to two significant digits, so
    that bboxes a little apart get the same grid and their regions tile.
    """
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    if not crs.is_geographic:
        res = _round2(TARGET_METRES / unit)
        return res, res
    ell = crs.ellipsoid
    a = ell.semi_major_metre if ell is not None else 6378137.0
    inv_f = ell.inverse_flattening if ell is not None and ell.inverse_flattening else 298.257223563
    e2 = (2 - 1 / inv_f) / inv_f
    phi = math.radians(max(-89.0, min(89.0, lat)))
    w = 1 - e2 * math.sin(phi) ** 2
    meridian = a * (1 - e2) / w**1.5  # metres per radian of latitude
    parallel = a / math.sqrt(w) * math.cos(phi)  # metres per radian of longitude
    return _round2(TARGET_METRES / parallel / unit), _round2(TARGET_METRES / meridian / unit)


def _round2(value: float) -> float:
    return float(f"{value:.1e}")


def bbox_outline(
    bbox: tuple[float, float, float, float],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lon/lat points along a bbox's four edges (its outline, densified)."""
    w, s, e, n = bbox
    t = np.linspace(0.0, 1.0, _EDGE_POINTS)
    east, west = np.full(t.size, e), np.full(t.size, w)
    south, north = np.full(t.size, s), np.full(t.size, n)
    lons = np.concatenate([w + (e - w) * t, east, e - (e - w) * t, west])
    lats = np.concatenate([south, s + (n - s) * t, north, n - (n - s) * t])
    return lons, lats


@functools.lru_cache(maxsize=64)
def transformer(src: str, dst: str) -> Transformer:
    """A cached ``always_xy`` transformer between two CRSs given as text."""
    return Transformer.from_crs(parse_crs(src), parse_crs(dst), always_xy=True)


def grid_for_bbox(
    bbox: tuple[float, float, float, float],
    *,
    crs: Any = None,
    resolution: float | Sequence[float] | None = None,
    zone: int | None = None,
) -> tuple[Grid, str]:
    """The grid a region of ``bbox`` is returned on, and a sentence saying why.

    ``crs=None``: the 10 m lattice of UTM zone ``zone`` (default: the zone
    of the bbox centre), on the zone's northern CRS (``326zz``) as the
    tiles' mosaic is where the bbox reaches north of the equator (southern
    pixels then have negative northings), on its southern CRS (``327zz``)
    for a bbox wholly south of it (north edge at most 0). Otherwise the smallest grid
    of ``crs`` aligned to whole multiples of the resolution that covers the
    bbox's outline. ``resolution`` is one number or ``(xres, yres)`` in the
    CRS's units (default :func:`default_resolution`).
    """
    w, s, e, n = check_bbox(bbox)
    if crs is not None and zone is not None:
        raise ConfigurationError(f"give crs ({crs!r}) or zone ({zone}), not both")
    res = _resolution(resolution)
    if crs is None:
        z = int(utm_zone((w + e) / 2)) if zone is None else _zone(zone)
        why = "the zone of the bbox centre" if zone is None else "as requested"
        epsg = (32700 if n <= 0 else 32600) + z
        if res is None or res == (PIXEL, PIXEL):
            grid = Grid.of_window(window_for_bbox((w, s, e, n), z), south=n <= 0)
            return grid, f"10 m lattice of UTM zone {z} (EPSG:{epsg}), {why}"
        target = CRS.from_epsg(epsg)
    else:
        target = parse_crs(crs)
        why = "as requested"
    if res is not None:
        _check_units(target, res, (s + n) / 2)
    xres, yres = res if res is not None else default_resolution(target, (s + n) / 2)
    text = crs_text(target)
    lons, lats = bbox_outline((w, s, e, n))
    if text == "EPSG:4326":
        x, y = lons, lats
    else:
        with np.errstate(all="ignore"):
            x, y = transformer("EPSG:4326", text).transform(lons, lats)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigurationError(
            f"bbox {bbox!r} lies (partly) outside the area where {_name(target)} is defined; "
            "choose a CRS that covers it"
        )
    # Edges on a grid line (to rounding: -0.12 / 0.00015 is -800.0000000000001) stay on it.
    col0, col1 = math.floor(float(x.min()) / xres + _SNAP), math.ceil(float(x.max()) / xres - _SNAP)
    row0, row1 = math.floor(float(y.min()) / yres + _SNAP), math.ceil(float(y.max()) / yres - _SNAP)
    left, top = col0 * xres, row1 * yres
    width, height = max(1, col1 - col0), max(1, row1 - row0)
    lattice = utm_lattice(target) if (xres, yres) == (PIXEL, PIXEL) else None
    grid = Grid(text, left, top, xres, yres, height, width,
                lattice[0] if lattice else None, lattice[1] if lattice else 0.0)  # fmt: skip
    unit = target.axis_info[0].unit_name if target.axis_info else "unit"
    about = "" if res is not None else f", about {TARGET_METRES:g} m at latitude {(s + n) / 2:.2f}"
    return grid, f"{_name(target)} at {xres:g} x {yres:g} {unit}{about}, {why}"


#: Ground size (metres) of a pixel beyond which a resolution is taken for a unit mix-up:
#: 10 degrees asked as if metres, 0.0001 metres asked as if degrees.
_LARGEST_PIXEL, _SMALLEST_PIXEL = 100_000.0, 0.01


def _check_units(crs: CRS, res: tuple[float, float], lat: float) -> None:
    """Refuse a resolution absurd for the CRS's units (degrees given as metres, or back).

    A 10 m dataset read at 10 degrees a pixel is not a coarse view but a
    mistake: every pixel centre misses every tile, and the read would say
    nothing covers the bbox. The message says what the number means in this
    CRS and what to give instead.
    """
    unit = crs.axis_info[0].unit_name if crs.axis_info else "unit"
    metres = [r / g for r, g in zip(res, default_resolution(crs, lat), strict=True)]
    ground = max(metres) * TARGET_METRES
    if min(metres) * TARGET_METRES >= _SMALLEST_PIXEL and ground <= _LARGEST_PIXEL:
        return
    size = ground if ground > _LARGEST_PIXEL else min(metres) * TARGET_METRES
    about = f"{size / 1000:,.0f} km" if size >= 1000 else f"{size:.2g} m"
    good = default_resolution(crs, lat)
    raise ConfigurationError(
        f"resolution {res[0]:g} x {res[1]:g} is in the units of {_name(crs)} ({unit}): "
        f"pixels of about {about} on the ground, for 10 m data; give about "
        f"{good[0]:g},{good[1]:g} ({unit}, about 10 m here), or omit it for that default"
    )


def _name(crs: CRS) -> str:
    auth = crs.to_authority(min_confidence=100)
    return f"{auth[0]}:{auth[1]}" if auth else (crs.name or "the requested CRS")


def _zone(zone: Any) -> int:
    try:
        z = int(zone)
    except (TypeError, ValueError):
        z = 0
    if not 1 <= z <= 60 or z != zone:
        raise ConfigurationError(f"zone must be a UTM zone number 1-60; got {zone!r}")
    return z


def _resolution(resolution: float | Sequence[float] | None) -> tuple[float, float] | None:
    if resolution is None:
        return None
    try:
        pair = (
            (float(resolution), float(resolution))  # type: ignore[arg-type]
            if np.ndim(resolution) == 0
            else tuple(float(v) for v in resolution)  # type: ignore[union-attr]
        )
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        raise ConfigurationError(
            f"resolution must be a positive number or (xres, yres) in the CRS's units; "
            f"got {resolution!r}"
        )
    return pair[0], pair[1]
