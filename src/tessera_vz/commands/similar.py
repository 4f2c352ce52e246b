"""``tessera-vz similar``: cosine similarity of every pixel to reference places (a float32 COG).

The references are a table of points or polygons (any file ``points``
reads; a polygon's every pixel is a reference) or one place (``--lon X
--lat Y``); their embeddings are read first, then every pixel of the area
is scored strip by strip, ``max`` or ``mean`` over the references.
``--top K --matches FILE.parquet`` also writes the K most similar pixels as
GeoParquet.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from tessera_vz.commands.classify import _one_year
from tessera_vz.commands.common import open_index, progress, wants_progress
from tessera_vz.commands.mapping import area_of, check_area_years, check_out, report
from tessera_vz.core.coords import check_lonlat
from tessera_vz.core.errors import ConfigurationError


def cmd_similar(args: argparse.Namespace) -> int:
    from tessera_vz.export import write_map
    from tessera_vz.maps.cosine import reference_embeddings, similar
    from tessera_vz.maps.matches import write_matches

    year = _one_year(args.year)
    area = area_of(args)
    out = check_out(args.out, overwrite=args.overwrite)
    place = args.lon is not None or args.lat is not None
    if place == (args.reference is not None):
        raise ConfigurationError("give a REFERENCE table of points, or one place --lon X --lat Y")
    if place:
        if args.lon is None or args.lat is None:
            raise ConfigurationError("--lon and --lat go together: give both")
        check_lonlat(args.lon, args.lat)
    if args.top < 0:
        raise ConfigurationError(f"--top must be 0 or more, got {args.top}")
    if (args.top > 0) != (args.matches is not None):
        raise ConfigurationError("--top K and --matches FILE.parquet go together")
    if args.matches:
        check_out(args.matches, "--matches", (".parquet", ".geoparquet"), overwrite=args.overwrite)
    if place:
        import pyarrow as pa

        refs: Any = pa.table({"lon": [args.lon], "lat": [args.lat]})
    else:
        from tessera_vz.pointfiles import read_points_file

        refs = read_points_file(args.reference, areas=True)
    store = open_index(args)
    check_area_years(store, area, [year])
    embeddings = reference_embeddings(
        store, refs, year, max_pixels_per_polygon=args.max_pixels_per_polygon
    )
    with progress(wants_progress(args)) as start:
        ds, matches = similar(store, area, year, embeddings, how=args.how, top=args.top,
                              progress=start)  # fmt: skip
    written = [write_map(ds, "similarity", out, nodata=np.float32(np.nan))]
    if matches is not None:
        write_matches(matches, args.matches)
        written.append(args.matches)
    report(args, ds, written, references=int(embeddings.shape[0]), how=args.how,
           matches=None if matches is None else matches.num_rows)  # fmt: skip
    return 0
