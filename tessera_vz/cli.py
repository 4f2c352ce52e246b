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
    )
    with _progress((not args.quiet and err.is_terminal) or args.progress) as start:
        report = run_index(opts, progress=start)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        err.print(
            f"indexed {report.indexed}, unchanged {report.unchanged}, removed {report.removed}, "
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


def info(path: str, allow_local: bool) -> dict[str, Any]:
    """What an index holds: zones, years, tags, tile counts, sources."""
    from tessera_vz.reader import open_store

    store = open_store(path, allow_local_sources=allow_local)
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
            }
        )
    return {"path": path, "zones": zones}


def cmd_info(args: argparse.Namespace) -> int:
    doc = info(args.store, args.allow_local_sources)
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
                ", ".join(z["sources"]),
            )
    out.print(table)
    return 0


def cmd_point(args: argparse.Namespace) -> int:
    import time

    from tessera_vz.reader import open_store

    store = open_store(args.store, allow_local_sources=args.allow_local_sources)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from tessera_vz.demo import run_demo

    return run_demo(args.dir, keep=args.keep)


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
    ix.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    ix.add_argument("--quiet", action="store_true", help="no progress bars")
    ix.add_argument("--progress", action="store_true", help="progress bars even when not a tty")
    ix.set_defaults(func=cmd_index)

    inf = sub.add_parser("info", help="zones, years, tags and tile counts of an index")
    inf.add_argument("store", help="the --out of `tessera-vz index`")
    inf.add_argument("--json", action="store_true")
    inf.add_argument("--allow-local-sources", action="store_true")
    inf.set_defaults(func=cmd_info)

    pt = sub.add_parser("point", help="the embedding of one pixel")
    pt.add_argument("lon", type=float)
    pt.add_argument("lat", type=float)
    pt.add_argument("--year", type=int, required=True)
    pt.add_argument("--store", required=True)
    pt.add_argument("--json", action="store_true")
    pt.add_argument(
        "--allow-local-sources",
        action="store_true",
        help="read tiles from file:// sources recorded in the repo",
    )
    pt.set_defaults(func=cmd_point)

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


if __name__ == "__main__":
    sys.exit(main())
