"""Where a map is computed: a lon/lat bbox, or a polygon (its box, no data outside it).

A map covers the grid ``store.region`` returns for its bbox (the bbox
centre's UTM zone lattice by default, or a zone, a CRS and a resolution),
so a map and a region of the same bbox lie pixel on pixel. With a
``polygon`` (``--region-file``, read as ``region`` reads it:
:func:`tessera_vz.vectorfiles.read_area`) the bbox is the polygon's and
pixels whose centre lies outside it are no data, as in ``region``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tessera_vz.core.coords import check_bbox
from tessera_vz.reader.areas import area_bbox
from tessera_vz.reader.grids import Grid, grid_for_bbox


@dataclass(frozen=True)
class Area:
    """A lon/lat bbox (or a polygon in ``polygon_crs``) and the grid options of ``store.region``."""

    bbox: tuple[float, float, float, float] | None = None
    zone: int | None = None
    crs: Any = None
    resolution: float | Sequence[float] | None = None
    polygon: Any = None
    polygon_crs: Any = "EPSG:4326"

    def __post_init__(self) -> None:
        if (self.bbox is None) == (self.polygon is None):
            raise TypeError("an Area is a bbox (west, south, east, north) or a polygon")
        box = self.bbox if self.bbox is not None else area_bbox(self.polygon, self.polygon_crs)
        object.__setattr__(self, "bbox", check_bbox(box))

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The lon/lat bbox (the polygon's, for a polygon)."""
        assert self.bbox is not None
        return self.bbox

    def grid(self) -> tuple[Grid, str]:
        """The grid ``store.region(bbox, …)`` returns, and why (pure, no I/O)."""
        return grid_for_bbox(self.box, crs=self.crs, resolution=self.resolution, zone=self.zone)

    def region_keywords(self) -> dict[str, Any]:
        """The keywords of ``store.region`` reading this area (grid and polygon)."""
        mask = {} if self.polygon is None else {"area": self.polygon, "area_crs": self.polygon_crs}
        return {"zone": self.zone, "crs": self.crs, "resolution": self.resolution, **mask}
