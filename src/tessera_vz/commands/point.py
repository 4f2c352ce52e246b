"""``tessera-vz point``: the embedding of one pixel."""

from __future__ import annotations

import argparse
import json
import time

from tessera_vz.commands.common import check_versions, check_years, open_index, out, parse_years
from tessera_vz.core.coords import check_lonlat


def cmd_point(args: argparse.Namespace) -> int:
    check_lonlat(args.lon, args.lat)
    years = parse_years(str(args.year))
    from tessera_vz.core.geometry import cell_centre, utm_zone

    store = open_index(args)
    zone = int(utm_zone(cell_centre(args.lon, args.lat)[0]))
    check_years(store, years, [zone])
    check_versions(store, years, [zone])
    t0 = time.perf_counter()
    loc = store.locate(args.lon, args.lat, args.year)
    values = store.point(args.lon, args.lat, args.year)
    elapsed = time.perf_counter() - t0
    tag, snapshot = store.version(loc.zone, args.year)
    doc = {
        "lon": args.lon,
        "lat": args.lat,
        "year": args.year,
        "zone": loc.zone,
        "tile": loc.name,
        "row": loc.row,
        "col": loc.col,
        "embedding": [None if v != v else float(v) for v in values],
        "version": tag,
        "snapshot": snapshot,
        "seconds": round(elapsed, 4),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        out.print(
            f"{loc.name} row {loc.row} col {loc.col} ({len(values)} bands, "
            f"{elapsed * 1000:.1f} ms, {tag or snapshot})",
            markup=False,
        )
        out.print(values)
    return 0
