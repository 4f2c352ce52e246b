"""Build ``src/tessera_vz/data/land-50m.geojson`` from Natural Earth 1:50m land (world-atlas).

The coverage map and the viewer draw land from this file, so both show
coastlines with no network. Natural Earth is public domain; the TopoJSON
packaging is npm's ``world-atlas`` 2.0.2 (ISC, Mike Bostock), fetched with
``npm pack world-atlas@2.0.2``. Run once when the layer should change::

    python scripts/make_coastline.py package/land-50m.json src/tessera_vz/data/land-50m.geojson

The polygons are simplified to about 0.02 degrees and rounded to 0.001
degrees (about 100 m), small enough to ship (a few hundred kB) and finer
than either drawing shows.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

import shapely
import shapely.affinity
import shapely.geometry

#: Simplification tolerance (degrees) and coordinate precision (decimals).
TOLERANCE, DECIMALS = 0.02, 3


def decode_arcs(topo: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """The TopoJSON arcs as absolute lon/lat (delta-decoded, then de-quantised)."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring(arcs: list[list[tuple[float, float]]], indices: list[int]) -> list[tuple[float, float]]:
    """One ring from arc indices (``~i`` is arc ``i`` reversed), shared end points once."""
    points: list[tuple[float, float]] = []
    for i in indices:
        arc = arcs[i] if i >= 0 else arcs[~i][::-1]
        points.extend(arc[1:] if points else arc)
    return points


def land(topo: dict[str, Any]) -> shapely.MultiPolygon:
    """The ``land`` object as one MultiPolygon."""
    arcs = decode_arcs(topo)
    parts: list[shapely.Polygon] = []
    for geom in topo["objects"]["land"]["geometries"]:
        pieces = geom["arcs"] if geom["type"] == "MultiPolygon" else [geom["arcs"]]
        for rings in pieces:
            shell, *holes = (ring(arcs, r) for r in rings)
            parts.extend(split_antimeridian(shapely.Polygon(shell, holes)))
    return shapely.MultiPolygon(parts)


def unwrap(coords: Any) -> list[tuple[float, float]]:
    """A ring's points with longitudes made continuous (a jump over 180 degrees is a crossing)."""
    points = [tuple(c) for c in coords]
    out, offset = [points[0]], 0.0
    for (x0, _), (x, y) in itertools.pairwise(points):
        offset += -360.0 if x - x0 > 180 else 360.0 if x0 - x > 180 else 0.0
        out.append((x + offset, y))
    return out


def split_antimeridian(poly: shapely.Polygon) -> list[shapely.Polygon]:
    """A polygon whose ring jumps across +/-180 as pieces that stay within -180..180.

    In the TopoJSON such rings are drawn on a sphere; on a flat map they would
    cross the whole world. A ring that goes once round a pole (Antarctica) is
    closed along that pole.
    """
    xmin, _, xmax, _ = poly.bounds
    if xmax - xmin <= 180:
        return [poly]
    ring = unwrap(poly.exterior.coords)
    if abs(ring[-1][0] - ring[0][0]) > 180:  # round a pole
        pole = -90.0 if sum(y for _, y in ring) < 0 else 90.0
        ring = [*ring, (ring[-1][0], pole), (ring[0][0], pole)]
    whole = shapely.make_valid(shapely.Polygon(ring, [unwrap(h.coords) for h in poly.interiors]))
    parts = []
    for shift in (-360.0, 0.0, 360.0):
        moved = shapely.affinity.translate(whole, xoff=shift)
        parts += polygons(shapely.clip_by_rect(moved, -180.0, -90.0, 180.0, 90.0))
    return parts


def polygons(geom: Any) -> list[shapely.Polygon]:
    """Every polygon of ``geom``, through nested collections (``make_valid`` returns those)."""
    if geom.geom_type == "Polygon":
        return [geom]
    return [p for part in getattr(geom, "geoms", []) for p in polygons(part)]


def main(src: str, dst: str) -> None:
    with open(src) as f:
        topo = json.load(f)
    geom = shapely.make_valid(land(topo).simplify(TOLERANCE, preserve_topology=True))
    geom = shapely.set_precision(geom, 10.0**-DECIMALS)
    parts = [g for g in polygons(geom) if g.area > 0]
    doc = {
        "type": "FeatureCollection",
        "name": "land-50m",
        "features": [
            {
                "type": "Feature",
                "properties": {"source": "Natural Earth 1:50m land (public domain), simplified"},
                "geometry": shapely.geometry.mapping(shapely.MultiPolygon(parts)),
            }
        ],
    }
    text = json.dumps(doc, separators=(",", ":"))
    with open(dst, "w") as f:
        f.write(text)
    print(f"{dst}: {len(parts)} polygons, {len(text)} bytes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
