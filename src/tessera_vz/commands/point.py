"""``tessera-vz point``: the embedding of one pixel, for one year or several (a row each)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from tessera_vz.commands.common import check_versions, check_years, open_index, out, parse_years
from tessera_vz.core.coords import check_lonlat
from tessera_vz.core.errors import ConfigurationError


def cmd_point(args: argparse.Namespace) -> int:
    check_lonlat(args.lon, args.lat)
    years = parse_years(str(args.year))
    from tessera_vz.reader.point_rule import reachable_zones

    store = open_index(args)
    zones = reachable_zones(_array(args.lon))
    check_near(store, args.lon, args.lat, years, zones)
    check_versions(store, years, zones)
    docs = []
    for year in years:
        t0 = time.perf_counter()
        loc = store.locate(args.lon, args.lat, year)
        values = store.point(args.lon, args.lat, year)
        elapsed = time.perf_counter() - t0
        tag, snapshot = store.version(loc.zone, year)
        embedding = [None if v != v else float(v) for v in values]
        doc = {
            "lon": args.lon, "lat": args.lat, "year": year, "zone": loc.zone, "tile": loc.name,
            "row": loc.row, "col": loc.col, "embedding": embedding, "version": tag,
            "snapshot": snapshot, "seconds": round(elapsed, 4),
        }  # fmt: skip
        if args.json:
            print(json.dumps(doc))  # one JSON line per year
        docs.append(doc)
    if not args.json:
        show_points(docs)
    return 0


#: Values per line when a point's embedding is printed for a person.
PER_LINE = 8


def show_points(docs: list[dict[str, Any]]) -> None:
    """What a person reads: a row per year (which tile, pixel and version), then the values.

    The values are the dequantised embedding, eight to a line labelled by
    their first band, so 128 bands take 16 short lines, under a line with
    their range and mean; ``--json`` gives them in full precision.
    """
    from rich import box
    from rich.table import Table

    table = Table(title=f"lon {docs[0]['lon']}, lat {docs[0]['lat']}", title_justify="left",
                  box=box.SIMPLE_HEAD)  # fmt: skip
    for name in ("year", "tile", "zone", "pixel", "version", "valid", "ms"):
        table.add_column(name, justify="left" if name in ("tile", "version") else "right",
                         no_wrap=True)  # fmt: skip
    for d in docs:
        valid = sum(v is not None for v in d["embedding"])
        table.add_row(str(d["year"]), d["tile"], str(d["zone"]), f"{d['row']},{d['col']}",
                      d["version"] or d["snapshot"], f"{valid}/{len(d['embedding'])}",
                      f"{d['seconds'] * 1000:.0f}")  # fmt: skip
    out.print(table)
    for d in docs:
        emb = d["embedding"]
        vals = [v for v in emb if v is not None]
        summary = (f"min {min(vals):+.4f}, mean {sum(vals) / len(vals):+.4f}, "
                   f"max {max(vals):+.4f}") if vals else "no data"  # fmt: skip
        out.print(f"{d['year']} embedding ({summary}):", markup=False, highlight=False)
        for start in range(0, len(emb), PER_LINE):
            chunk = emb[start : start + PER_LINE]
            cells = " ".join("    nan" if v is None else f"{v:+.4f}" for v in chunk)
            out.print(f"  b{start:03d}  {cells}", markup=False, highlight=False)


def check_near(store: Any, lon: float, lat: float, years: list[int], zones: list[int]) -> None:
    """The years are indexed where the point may be read (else exit 2, saying why).

    A point whose zones hold no index at all is "nowhere near an indexed
    tile", not "year not indexed"; with a hint when ``lat lon`` is a point
    that would be read (coordinates given latitude first).
    """
    here = [z for z in zones if z in store.zones()]
    indexed = sorted({y for z in here for y in store.years(z)})
    if indexed:
        check_years(store, years, zones)  # each year asked is indexed there
        return
    from tessera_vz.reader.pixels import swapped_hint

    def located(x: float, y: float) -> bool:
        try:
            return any(bool(store.locate_points([x], [y], year).ok[0]) for year in years)
        except LookupError:
            return False

    hint = swapped_hint(located, lon, lat)
    raise ConfigurationError(
        f"no indexed tile is near lon={lon}, lat={lat}: UTM zone(s) "
        f"{', '.join(map(str, zones))} are not in {store.root} (its zones: "
        f"{', '.join(map(str, store.zones())) or 'none'}){hint}"
    )


def _years(years: list[int]) -> str:
    return ", ".join(map(str, years))


def _array(value: float) -> Any:
    import numpy as np

    return np.array([value], dtype=np.float64)
