"""Longitudes, latitudes and lon/lat boxes as every entry point accepts them.

The CLI, the viewer's API and the Python reader all take coordinates from
people, and an index run takes them from upstream manifests; all of them
check here, so a coordinate means the same everywhere: degrees in
EPSG:4326, finite, longitude in [-180, 180], latitude in [-90, 90], and a
box ``(west, south, east, north)`` with ``west < east`` and
``south < north`` (a box across the antimeridian is read as two boxes).

Failures are :class:`~tessera_vz.core.errors.ConfigurationError`, a
``ValueError``, saying what was expected, what was found and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tessera_vz.core.errors import ConfigurationError

#: Largest absolute longitude and latitude, in degrees.
LON_LIMIT = 180
LAT_LIMIT = 90
_RANGES = f"-{LON_LIMIT} <= lon <= {LON_LIMIT} and -{LAT_LIMIT} <= lat <= {LAT_LIMIT}"
_BOX = "the bbox is WEST SOUTH EAST NORTH in degrees"

BBox = tuple[float, float, float, float]


def is_valid_lonlat(lon: float, lat: float) -> bool:
    """Whether one coordinate is one a read may start from (finite and in range)."""
    return (
        math.isfinite(lon)
        and math.isfinite(lat)
        and abs(lon) <= LON_LIMIT
        and abs(lat) <= LAT_LIMIT
    )


def valid_lonlat_mask(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]:
    """:func:`is_valid_lonlat` of many coordinates at once (NaN is invalid, without a warning)."""
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(x) & np.isfinite(y) & (np.abs(x) <= LON_LIMIT) & (np.abs(y) <= LAT_LIMIT)
    return np.asarray(ok, dtype=np.bool_)


def check_lonlat(lon: float, lat: float, what: str = "the point") -> None:
    """Refuse a coordinate a read may not start from.

    Raises
    ------
    ConfigurationError
        Naming the coordinate that is out of range (``lat must lie in
        [-90, 90]``), the values found, and the ranges expected.
    """
    if is_valid_lonlat(lon, lat):
        return
    bad_lon = not (math.isfinite(lon) and abs(lon) <= LON_LIMIT)
    name, limit = ("lon", LON_LIMIT) if bad_lon else ("lat", LAT_LIMIT)
    raise ConfigurationError(
        f"{what} has lon={lon}, lat={lat}: {name} must lie in [-{limit}, {limit}]; expected "
        f"{_RANGES} (longitude first)"
    )


def check_bbox(bbox: Sequence[float]) -> BBox:
    """A lon/lat box ``(west, south, east, north)`` as floats, or a clear refusal.

    Raises
    ------
    ConfigurationError
        The box is not four numbers, a side is not finite or out of range,
        or ``west >= east`` / ``south >= north``.
    """
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"bbox must be four numbers (west, south, east, north); got {bbox!r}"
        ) from None
    for name, v, limit in (("west", w, LON_LIMIT), ("south", s, LAT_LIMIT),
                           ("east", e, LON_LIMIT), ("north", n, LAT_LIMIT)):  # fmt: skip
        if not math.isfinite(v):
            raise ConfigurationError(
                f"bbox {name} is {v} (non-finite); expected a number within +-{limit} "
                f"degrees ({_BOX})"
            )
        if abs(v) > limit:
            raise ConfigurationError(
                f"bbox {name} is {v}; expected a number within +-{limit} degrees ({_BOX})"
            )
    if not w < e:
        raise ConfigurationError(
            f"bbox west ({w}) must be less than east ({e}): expected west < east; {_BOX} "
            "(a box across the antimeridian is not supported: read it in two parts)"
        )
    if not s < n:
        raise ConfigurationError(
            f"bbox south ({s}) must be less than north ({n}): expected south < north; {_BOX}"
        )
    return w, s, e, n
