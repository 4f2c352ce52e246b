"""The ``tessera-vz`` command line.

In the spirit of the geotessera CLI: progress on stderr (rich), one JSON
document on stdout with ``--json``, exit code 0 on success, 1 when some
tiles failed (the rest were committed), 2 for usage or configuration errors
(nothing written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tessera_vz.reader.errors import ConfigurationError, TesseraError

err = Console(stderr=True)
out = Console()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    if not enabled:
        yield lambda _label, _total: lambda _n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )

    def start(label: str, total: int) -> Callable[[int], None]:
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        yield start


def cmd_index(args: argparse.Namespace) -> int:
    from tessera_vz.indexer.run import IndexOptions, parse_int_list, run_index

    opts = IndexOptions(
        source=args.source,
        out=args.out,
        manifest=args.manifest,
        years=parse_int_list(args.years, "years"),
        zones=parse_int_list(args.zones, "zones"),
        concurrency=args.concurrency,
        chunk_budget=args.chunk_budget,
        retries=args.retries,
        timeout=args.timeout,
        batch_tiles=args.batch_tiles,
        scratch_max_age=args.scratch_max_age,
        s3_options=_s3_options(args, anonymous=False),
        source_options={"anonymous": True} if args.anonymous else {},
        scheduler=args.scheduler,
        workers=args.workers,
        allowed_sources=list(args.allow_source or []),
        ca_file=args.ca_file,
        reprobe=args.reprobe,
    )
    with _progress((not args.quiet and err.is_terminal) or args.progress) as start:
        report = run_index(opts, progress=start)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        err.print(
            f"indexed {report.indexed}, unchanged {report.unchanged} "
            f"({report.skipped} not probed), removed {report.removed}, "
            f"failed {len(report.failed)}, commits {len(report.commits)} "
            f"in {report.timings.get('total', 0):.2f}s"
        )
        for f in report.failed:
            err.print(f"[red]failed[/red] {f.year} {f.tile}: {f.reason}")
        for w in report.warnings:
            err.print(f"[yellow]warning[/yellow] {w.year} {w.tile}: {w.message}")
        for c in report.commits:
            err.print(f"committed utm{c.zone:02d} {c.year} as {c.tag} ({c.snapshot})")
    return report.exit_code


def info(path: str, options: Any = None) -> dict[str, Any]:
    """What an index holds: zones, years, tags, tile counts, sources.

    ``sources`` are the containers a repository wants to read from;
    ``authorised`` those this reader would read from with the same flags, so
    a user sees what an untrusted repository asks for before trusting it.
    """
    from tessera_vz.reader import ReadOptions, open_store
    from tessera_vz.reader.repos import credentials

    opts = options if options is not None else ReadOptions()
    store = open_store(path, options=opts)
    zones = []
    for zone in store.zones():
        repo = store.repo(zone)
        years = []
        for year in store.years(zone):
            tags = sorted(
                (t for t in repo.list_tags() if t.startswith(f"{year}-v")),
                key=lambda t: int(t.split("-v")[1]),
            )
            years.append(
                {
                    "year": year,
                    "tiles": int(store.tiles(year, zone).sizes["tile"]),
                    "latest_tag": tags[-1] if tags else None,
                    "tags": tags,
                    "snapshot": repo.lookup_branch(str(year)),
                }
            )
        zones.append(
            {
                "zone": zone,
                "repo": store._locations[zone],
                "years": years,
                "sources": store.containers(zone),
                "authorised": sorted(
                    credentials(
                        store.containers(zone),
                        allow_local_sources=opts.allow_local_sources,
                        allowed=opts.allowed_sources,
                    )
                ),
            }
        )
    return {"path": path, "zones": zones}


def cmd_info(args: argparse.Namespace) -> int:
    doc = info(args.store, _read_options(args))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    table = Table(title=f"tessera-vz index {args.store}")
    for col in ("zone", "year", "tiles", "latest tag", "sources"):
        table.add_column(col)
    for z in doc["zones"]:
        for y in z["years"]:
            table.add_row(
                f"{z['zone']:02d}",
                str(y["year"]),
                str(y["tiles"]),
                str(y["latest_tag"]),
                ", ".join(
                    s if s in z["authorised"] else f"{s} (not authorised)" for s in z["sources"]
                ),
            )
    out.print(table)
    return 0


def cmd_point(args: argparse.Namespace) -> int:
    import time

    from tessera_vz.reader import open_store

    store = open_store(args.store, options=_read_options(args))
    t0 = time.perf_counter()
    loc = store.locate(args.lon, args.lat, args.year)
    values = store.point(args.lon, args.lat, args.year)
    elapsed = time.perf_counter() - t0
    doc = {
        "lon": args.lon,
        "lat": args.lat,
        "year": args.year,
        "zone": loc.zone,
        "tile": loc.name,
        "row": loc.row,
        "col": loc.col,
        "embedding": [None if v != v else float(v) for v in values],
        "seconds": round(elapsed, 4),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        out.print(
            f"{loc.name} row {loc.row} col {loc.col} ({len(values)} bands, {elapsed * 1000:.1f} ms)"
        )
        out.print(values)
    return 0


def _add_allow_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-source",
        action="append",
        metavar="PREFIX",
        help="read only from sources whose URL starts with PREFIX (repeatable; also where "
        "redirects may lead, e.g. a CDN); default: every remote source the repo records",
    )


def _add_read_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that reads an index: one ReadOptions (:func:`_read_options`)."""
    p.add_argument(
        "--allow-local-sources",
        action="store_true",
        help="read tiles from file:// sources recorded in the repo",
    )
    _add_allow_source(p)
    p.add_argument("--retries", type=int, default=3, help="retries of a failed request")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per request")
    p.add_argument(
        "--ca-file", metavar="PEM", help="extra CA certificates to trust for HTTPS (private mirror)"
    )
    p.add_argument(
        "--through-icechunk",
        action="store_true",
        help="read pixels through Icechunk's own fetches instead of tessera-vz's checked reader",
    )
    _add_s3_flags(p)


def _read_options(args: argparse.Namespace) -> Any:
    """The :class:`~tessera_vz.reader.options.ReadOptions` the read flags describe."""
    from tessera_vz.reader.options import ReadOptions

    return ReadOptions.of(
        retries=args.retries,
        timeout=args.timeout,
        allow_local_sources=args.allow_local_sources,
        allowed_sources=args.allow_source,
        s3_options=_s3_options(args),
        direct_reads=not args.through_icechunk,
        ca_file=args.ca_file,
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from tessera_vz.indexer.run import parse_int_list
    from tessera_vz.indexer.verify import verify_index

    report = verify_index(
        args.store,
        years=parse_int_list(args.years, "years"),
        zones=parse_int_list(args.zones, "zones"),
        allow_local_sources=args.allow_local_sources,
        allowed_sources=args.allow_source,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout=args.timeout,
        s3_options=_s3_options(args),
        ca_file=args.ca_file,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        doc = report.to_json()
        err.print(
            f"{doc['tiles']} tiles: {doc['healthy']} healthy, {len(doc['drifted'])} drifted, "
            f"{len(doc['missing'])} missing, {len(doc['unreachable'])} unreachable"
        )
        for c in report.checks:
            if c.status != "healthy":
                err.print(f"[red]{c.status}[/red] utm{c.zone:02d} {c.year} {c.tile}")
                for problem in c.problems:
                    err.print(f"    {problem}")
    return report.exit_code


def cmd_catalog(args: argparse.Namespace) -> int:
    from tessera_vz.catalog import CatalogOptions, build_catalog

    opts = CatalogOptions(store=args.store, out=args.out, read=_read_options(args))
    with _progress((not args.quiet and err.is_terminal) or args.progress) as start:
        report = build_catalog(opts, progress=start)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        err.print(
            f"{report.tiles} tiles: {len(report.built)} zone-years rebuilt, {len(report.kept)} "
            f"unchanged, {len(report.removed)} removed, {len(report.failed)} failed; "
            f"{report.items_written} items written in {report.timings.get('total', 0):.2f}s"
        )
        for f in report.failed:
            err.print(f"[red]failed[/red] utm{f['zone']:02d} {f['year'] or ''}: {f['reason']}")
        err.print("wrote " + (", ".join(report.written) or f"nothing: {args.out} is up to date"))
    return report.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from tessera_vz.demo import run_demo

    return run_demo(args.dir, keep=args.keep)


def _years(text: str) -> list[int]:
    try:
        years = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(
            f"--year expects a year or comma-separated years, got {text!r}"
        ) from None
    if not years:
        raise ConfigurationError("--year names no year")
    return years


def read_points_file(path: str) -> tuple[Any, Any]:
    """lon/lat columns of a CSV or Parquet file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = path.rsplit(".", 1)[-1].lower()
    try:
        table = pq.read_table(path) if suffix in ("parquet", "pq") else pacsv.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read points file {path!r}: {exc}") from None
    names = {n.lower(): n for n in table.column_names}
    lon = next((names[c] for c in ("lon", "longitude", "x") if c in names), None)
    lat = next((names[c] for c in ("lat", "latitude", "y") if c in names), None)
    if lon is None or lat is None:
        raise ConfigurationError(
            f"points file {path!r} needs lon and lat columns; found {table.column_names}"
        )
    return (table.column(lon).to_numpy(zero_copy_only=False).astype("f8"),
            table.column(lat).to_numpy(zero_copy_only=False).astype("f8"))  # fmt: skip


def cmd_points(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tessera_vz.reader import open_store

    lons, lats = read_points_file(args.input)
    store = open_store(args.store, options=_read_options(args))
    years = _years(args.year)
    t0 = time.perf_counter()
    values = store.points(lons, lats, years=years)
    elapsed = time.perf_counter() - t0
    tables = []
    for i, year in enumerate(years):
        loc = store.locate_points(lons, lats, year)
        cols: dict[str, Any] = {
            "lon": lons, "lat": lats, "year": np.full(lons.size, year, np.int32),
            "tile": loc.tile.astype(str), "row": np.where(loc.ok, loc.row, -1),
            "col": np.where(loc.ok, loc.col, -1),
        }  # fmt: skip
        for b in range(values.shape[2]):
            cols[f"b{b:03d}"] = values[i, :, b]
        tables.append(pa.table(cols))
    pq.write_table(pa.concat_tables(tables), args.out)
    found = int(np.isfinite(values).any(axis=2).sum())
    doc = {
        "points": int(lons.size),
        "years": years,
        "with_data": found,
        "out": args.out,
        "seconds": round(elapsed, 3),
        "points_per_s": round(lons.size * len(years) / max(elapsed, 1e-9)),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        err.print(
            f"{doc['points']} points x {len(years)} years -> {args.out} "
            f"({found} with data) in {elapsed:.2f}s"
        )
    return 0


def cmd_region(args: argparse.Namespace) -> int:
    from tessera_vz.export import write_region
    from tessera_vz.reader import open_store

    store = open_store(args.store, options=_read_options(args))
    years = _years(args.year)
    bbox = (args.west, args.south, args.east, args.north)
    ds = store.region(bbox, years if len(years) > 1 else years[0], zone=args.zone,
                      crs=args.crs, resolution=_resolution(args.resolution),
                      dequantise=not args.raw)  # fmt: skip
    out_path = args.out
    write_region(ds, out_path)
    doc = {"out": out_path, "zone": ds.attrs.get("tessera:zone"), "shape": dict(ds.sizes),
           "proj:code": ds.attrs.get("proj:code"), "grid": ds.attrs["tessera:grid"]}  # fmt: skip
    if args.json:
        print(json.dumps(doc))
    else:
        err.print(f"wrote {out_path}: {doc['shape']} in {doc['proj:code']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the map viewer (``tessera_vz.serve``) over an index until Ctrl-C."""
    try:
        import uvicorn

        from tessera_vz.serve import Limits, create_app
    except ImportError as exc:
        raise ConfigurationError(
            f"`tessera-vz serve` needs the serve extra ({exc.name} is missing): "
            "pip install 'tessera-vz[serve]'"
        ) from None
    from tessera_vz.reader import open_store

    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be 0-65535, got {args.port}")
    store = open_store(args.store, options=_read_options(args))
    limits = Limits(preview_pixels=args.max_preview_pixels, region_pixels=args.max_region_pixels)
    app = create_app(store, limits=limits, basemap=args.basemap)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning[/yellow] serving on {args.host}: anyone who reaches it can "
                  "read the index's data through this server")  # fmt: skip
    err.print(f"tessera-vz viewer of {args.store}: http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _resolution(text: str | None) -> tuple[float, float] | None:
    """``--resolution RES`` or ``RES,YRES`` as numbers (the reader checks they are > 0)."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ConfigurationError(f"--resolution must be RES or XRES,YRES; got {text!r}")
    return (values[0], values[-1])


def _add_s3_flags(
    parser: argparse.ArgumentParser,
    anonymous_help: str = "read S3 unsigned (public buckets such as TESSERA's)",
) -> None:
    """S3 endpoint, region and anonymous access; credentials only from the environment.

    There is deliberately no flag for keys: they would land in shell history
    and process listings. obstore and icechunk read ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``AWS_ALLOW_HTTP``) themselves.
    """
    parser.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint URL")
    parser.add_argument("--s3-region", metavar="R", help="S3 region")
    parser.add_argument("--anonymous", action="store_true", help=anonymous_help)


def _s3_options(args: argparse.Namespace, *, anonymous: bool = True) -> dict[str, Any]:
    """``s3_options`` from the S3 flags (only those given, so the environment fills the rest)."""
    opts: dict[str, Any] = {}
    if args.s3_endpoint:
        opts["endpoint_url"] = args.s3_endpoint
    if args.s3_region:
        opts["region"] = args.s3_region
    if anonymous and args.anonymous:
        opts["anonymous"] = True
    return opts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tessera-vz", description=__doc__.split("\n")[0] if __doc__ else None
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    ix = sub.add_parser("index", help="index a TESSERA tree into per-zone Icechunk repos")
    ix.add_argument("source", help="root of the tree: path, file://, http(s):// or s3://")
    ix.add_argument("--out", required=True, help="directory holding the utm??.icechunk repos")
    ix.add_argument("--manifest", help="upstream manifest.parquet (required over HTTP)")
    ix.add_argument("--years", help="comma-separated years, e.g. 2024,2025")
    ix.add_argument("--zones", help="comma-separated UTM zones, e.g. 30,31")
    ix.add_argument("--concurrency", type=int, default=64, help="header requests in flight")
    ix.add_argument("--chunk-budget", type=int, default=1 << 20, help="bytes per virtual chunk")
    ix.add_argument(
        "--retries", type=int, default=3, help="retries of a failed header read (with backoff)"
    )
    ix.add_argument(
        "--timeout", type=float, default=30.0, help="seconds allowed for each header request"
    )
    ix.add_argument(
        "--batch-tiles", type=int, default=1000, help="tiles per commit to the scratch branch"
    )
    ix.add_argument(
        "--scratch-max-age",
        type=float,
        default=3600.0,
        help="delete scratch branches of killed runs older than this many seconds",
    )
    ix.add_argument(
        "--reprobe",
        action="store_true",
        help="read every header again, even of tiles the inventory shows unchanged",
    )
    ix.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    ix.add_argument("--quiet", action="store_true", help="no progress bars")
    ix.add_argument("--progress", action="store_true", help="progress bars even when not a tty")
    ix.add_argument(
        "--scheduler", help="run the (zone, year) units on this Dask scheduler (tcp://host:8786)"
    )
    ix.add_argument(
        "--workers", type=int, help="run the units on a local Dask cluster of N worker processes"
    )
    ix.add_argument(
        "--allow-source",
        action="append",
        metavar="PREFIX",
        help="also trust PREFIX (repeatable): where SOURCE's redirects may lead, e.g. a CDN",
    )
    ix.add_argument(
        "--ca-file", metavar="PEM", help="extra CA certificates to trust for HTTPS (private mirror)"
    )
    _add_s3_flags(ix, "read the SOURCE bucket unsigned (public buckets); --out uses credentials")
    ix.set_defaults(func=cmd_index)

    inf = sub.add_parser("info", help="zones, years, tags and tile counts of an index")
    inf.add_argument("store", help="the --out of `tessera-vz index`")
    inf.add_argument("--json", action="store_true")
    _add_read_flags(inf)
    inf.set_defaults(func=cmd_info)

    pt = sub.add_parser("point", help="the embedding of one pixel")
    pt.add_argument("lon", type=float)
    pt.add_argument("lat", type=float)
    pt.add_argument("--year", type=int, required=True)
    pt.add_argument("--store", required=True)
    pt.add_argument("--json", action="store_true")
    _add_read_flags(pt)
    pt.set_defaults(func=cmd_point)

    vf = sub.add_parser("verify", help="find indexed tiles whose source files changed or vanished")
    vf.add_argument("store", help="the --out of `tessera-vz index`")
    vf.add_argument("--years", help="comma-separated years, e.g. 2024,2025")
    vf.add_argument("--zones", help="comma-separated UTM zones, e.g. 30,31")
    vf.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    vf.add_argument("--concurrency", type=int, default=64, help="HEAD requests in flight")
    _add_read_flags(vf)
    vf.set_defaults(func=cmd_verify)

    pts = sub.add_parser("points", help="embeddings of many points (CSV/Parquet in, Parquet out)")
    pts.add_argument("input", help="CSV or Parquet with lon and lat columns")
    pts.add_argument("--year", required=True, help="a year, or comma-separated years")
    pts.add_argument("--store", required=True)
    pts.add_argument("--out", required=True, help="output Parquet file")
    pts.add_argument("--json", action="store_true")
    _add_read_flags(pts)
    pts.set_defaults(func=cmd_points)

    rg = sub.add_parser("region", help="a lon/lat box as a zone-lattice mosaic (.zarr, .nc, .tif)")
    for name in ("west", "south", "east", "north"):
        rg.add_argument(name, type=float)
    rg.add_argument("--year", required=True, help="a year, or comma-separated years")
    rg.add_argument("--store", required=True)
    rg.add_argument("--out", required=True, help="FILE.zarr, FILE.nc or FILE.tif")
    rg.add_argument("--zone", type=int, default=None, help="UTM zone (default: bbox centre)")
    rg.add_argument("--crs", default=None, help="output CRS, e.g. EPSG:4326 (default: --zone's)")
    rg.add_argument("--resolution", default=None, metavar="RES[,YRES]",
                    help="pixel size in the CRS's units (default: about 10 m)")  # fmt: skip
    rg.add_argument("--raw", action="store_true", help="int8 embeddings plus scales")
    rg.add_argument("--json", action="store_true")
    _add_read_flags(rg)
    rg.set_defaults(func=cmd_region)

    sv = sub.add_parser("serve", help="a map viewer of an index in the browser (and its HTTP API)")
    sv.add_argument("store", help="the --out of `tessera-vz index` (path, s3:// or http(s)://)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    sv.add_argument(
        "--basemap",
        metavar="URL",
        help="XYZ raster tiles under the footprints, e.g. "
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png (default: none, no network)",
    )
    sv.add_argument(
        "--max-preview-pixels",
        type=int,
        default=2_000_000,
        help="largest preview box, in 10 m pixels",
    )
    sv.add_argument(
        "--max-region-pixels",
        type=int,
        default=1_000_000,
        help="largest download box, in 10 m pixels",
    )
    _add_read_flags(sv)
    sv.set_defaults(func=cmd_serve)

    ct = sub.add_parser(
        "catalog", help="GeoParquet, STAC and a coverage map of an index (incremental)"
    )
    ct.add_argument("store", help="the --out of `tessera-vz index` (path or s3://)")
    ct.add_argument("--out", required=True, help="catalog directory (tiles.parquet, stac/, ...)")
    ct.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    ct.add_argument("--quiet", action="store_true", help="no progress bars")
    ct.add_argument("--progress", action="store_true", help="progress bars even when not a tty")
    _add_read_flags(ct)
    ct.set_defaults(func=cmd_catalog)

    dm = sub.add_parser("demo", help="generate, serve, index and read a small sample tree")
    dm.add_argument("--dir", default="demo-out", help="working directory of the demo")
    dm.add_argument("--keep", action="store_true", help="keep serving until Ctrl-C")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    except (TesseraError, LookupError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1


def run() -> None:
    """The ``tessera-vz`` command: :func:`main`, then leave without finalizing Python.

    Once the output is flushed nothing is left to do, and skipping
    interpreter finalization avoids a crash of obstore's and Icechunk's
    native threads that could turn a finished run's exit code 0 into 134
    (see :mod:`tessera_vz.reader.settle`).
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
