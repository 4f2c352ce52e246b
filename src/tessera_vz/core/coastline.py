"""The land layer drawn under coverage maps and the viewer: shipped, so no network is needed.

``tessera_vz/data/land-50m.geojson`` is Natural Earth's 1:50m land
(public domain), simplified to about 0.02 degrees (about 600 kB), built by
``scripts/make_coastline.py``. ``coverage.png`` draws it with matplotlib
and the viewer fetches it from the app as a MapLibre layer, so both show
where the coasts are offline.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

#: The file name of the land layer inside the package's ``data`` folder.
LAND_FILE = "land-50m.geojson"


def land_file() -> Path:
    """Where the land GeoJSON is installed (a real file: package data is not zipped)."""
    return Path(str(resources.files("tessera_vz") / "data" / LAND_FILE))


@functools.lru_cache(maxsize=1)
def _land() -> Any:
    import shapely

    doc = json.loads(land_file().read_text(encoding="utf-8"))
    shapes = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
    return shapely.MultiPolygon([p for s in shapes for p in shapely.get_parts(s)])


def land_polygons(bbox: tuple[float, float, float, float]) -> list[Any]:
    """The land polygons inside ``bbox`` (west, south, east, north), clipped to it."""
    import shapely

    clipped = shapely.clip_by_rect(_land(), *bbox)
    return [g for g in shapely.get_parts(clipped) if g.geom_type == "Polygon" and not g.is_empty]
