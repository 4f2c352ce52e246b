"""``tessera-vz change``: per-pixel cosine distance between two years (a float32 COG).

Both years are read strip by strip on the same grid; a pixel is no data
(NaN) where either year has none.
"""

from __future__ import annotations

import argparse

import numpy as np

from tessera_vz.commands.common import open_index, parse_years, progress, wants_progress
from tessera_vz.commands.mapping import area_of, check_area_years, check_out, report
from tessera_vz.core.errors import ConfigurationError


def cmd_change(args: argparse.Namespace) -> int:
    from tessera_vz.export import write_map
    from tessera_vz.maps.cosine import change

    years = parse_years(args.years)
    if len(years) != 2:
        raise ConfigurationError(
            f"--years names the two years compared, e.g. 2023,2024; got {args.years!r}"
        )
    area = area_of(args)
    out = check_out(args.out, overwrite=args.overwrite)
    store = open_index(args)
    check_area_years(store, area, years)
    with progress(wants_progress(args)) as start:
        ds = change(store, area, years, progress=start)
    written = [write_map(ds, "change", out, nodata=np.float32(np.nan))]
    report(args, ds, written, years=years)
    return 0
