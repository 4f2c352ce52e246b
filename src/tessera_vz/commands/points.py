"""``tessera-vz points``: a training table, the embeddings of many points.

Every check runs before the first pixel is read: the input is read and its
coordinate columns found, the output's format and folder, the years and
pinned versions. Then the points are sampled batch by batch (a progress bar
on stderr) and written as they come (:class:`~tessera_vz.pointfiles.TableWriter`).
Exit code 1 when some rows could not be read (status ``error``: their
tile's source failed), 0 otherwise, whatever the other statuses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from tessera_vz.commands.common import (
    check_versions,
    check_years,
    err,
    open_index,
    parse_years,
    positive,
    progress,
    wants_progress,
)
from tessera_vz.core.errors import ConfigurationError


def cmd_points(args: argparse.Namespace) -> int:
    from tessera_vz.pointfiles import (
        TableWriter,
        check_csv_columns,
        check_points_output,
        read_points_file,
    )
    from tessera_vz.reader.samples import geo_metadata

    if args.year is not None and args.year_column is not None:
        raise ConfigurationError(
            "--year and --year-column exclude each other: --year reads every row in the years "
            "named, --year-column each row in its own year"
        )
    years = parse_years(args.year) if args.year is not None else None
    positive(args.batch_size, "--batch-size")
    fmt = check_points_output(args.out)
    if (args.lon is None) != (args.lat is None):
        raise ConfigurationError("--lon and --lat go together: name both columns, or neither")
    if args.geometry is not None and args.lon is not None:
        raise ConfigurationError("give --lon/--lat or --geometry, not both")
    inp = read_points_file(args.input, lon=args.lon, lat=args.lat, geometry=args.geometry,
                           year=args.year_column, own_years=years is None)  # fmt: skip
    if fmt == "csv":
        check_csv_columns(inp)
    store = open_index(args)
    if years is not None:
        check_years(store, years)
    check_versions(store, years)

    provenance = store.sample_provenance(inp, years)

    t0 = time.perf_counter()
    counts: Counter[str] = Counter()
    metadata = {"geo": json.dumps(geo_metadata(inp)), **provenance}
    with (
        TableWriter(args.out, fmt, metadata) as writer,
        progress(wants_progress(args)) as start,
    ):
        per = f"x {len(years)} years" if years is not None else f"in their own {inp.year_source!r}"
        advance = start(f"{inp.size} points {per}", inp.size)
        for batch in store.sample_batches(inp, years, batch_size=args.batch_size, progress=advance):
            counts.update(batch.column("status").to_pylist())
            writer.write(batch)
        writer.close(store.empty_sample(inp, years))
    elapsed = time.perf_counter() - t0
    doc = {
        "points": inp.size,
        "years": years if years is not None else f"column {inp.year_source!r}",
        "rows": writer.rows,
        "with_data": counts.get("ok", 0),
        "status": dict(sorted(counts.items())),
        "coordinates": inp.source,
        "out": args.out,
        "format": "GeoParquet" if fmt == "parquet" else "CSV",
        **provenance,
        "seconds": round(elapsed, 3),
        "points_per_s": round(writer.rows / max(elapsed, 1e-9)),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        err.print(
            f"{inp.size} points {per} -> {args.out} ({summary}) in {elapsed:.2f}s; "
            f"read {provenance['tessera:versions'] or 'nothing'}",
            markup=False,
        )
    return 1 if counts.get("error") else 0
