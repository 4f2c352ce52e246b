"""``tessera-vz index``: index a TESSERA tree into per-zone Icechunk repositories."""

from __future__ import annotations

import argparse
import json

from tessera_vz.commands.common import (
    err,
    parse_zones,
    positive,
    progress,
    s3_options,
    wants_progress,
)
from tessera_vz.core.files import check_output_folder


def cmd_index(args: argparse.Namespace) -> int:
    from tessera_vz.indexer.run import IndexOptions, parse_int_list, run_index

    zones = parse_zones(args.zones)
    check_output_folder(args.out, "--out")
    positive(args.concurrency, "--concurrency")
    positive(args.batch_tiles, "--batch-tiles")
    opts = IndexOptions(
        source=args.source,
        out=args.out,
        manifest=args.manifest,
        years=parse_int_list(args.years, "years"),
        zones=zones,
        concurrency=args.concurrency,
        chunk_budget=args.chunk_budget,
        retries=args.retries,
        timeout=args.timeout,
        batch_tiles=args.batch_tiles,
        scratch_max_age=args.scratch_max_age,
        s3_options=s3_options(args, anonymous=False),
        source_options={"anonymous": True} if args.anonymous else {},
        scheduler=args.scheduler,
        workers=args.workers,
        allowed_sources=list(args.allow_source or []),
        ca_file=args.ca_file,
        reprobe=args.reprobe,
        dataset=args.dataset,
        move_source=args.move_source,
        follow_symlinks=args.follow_symlinks,
    )
    with progress(wants_progress(args)) as start:
        report = run_index(opts, progress=start)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        err.print(
            f"indexed {report.indexed}, unchanged {report.unchanged} "
            f"({report.skipped} not probed), removed {report.removed}, "
            f"failed {len(report.failed)}, commits {len(report.commits)} "
            f"in {report.timings.get('total', 0):.2f}s",
            markup=False,
        )
        for f in report.failed:
            err.print(f"[red]failed[/red] {f.year} {_plain(f.tile)}: {_plain(f.reason)}")
        for w in report.warnings:
            err.print(f"[yellow]warning[/yellow] {w.year} {_plain(w.tile)}: {_plain(w.message)}")
        for c in report.commits:
            err.print(f"committed utm{c.zone:02d} {c.year} as {c.tag} ({c.snapshot})", markup=False)
    return report.exit_code


def _plain(text: object) -> str:
    """Untrusted text (a tile name, a server's reason) as inert output: no markup, no control."""
    from rich.markup import escape

    from tessera_vz.core.text import printable

    return escape(printable(text, limit=4000))
