"""``tessera-vz verify``: indexed tiles whose source files changed or vanished."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape

from tessera_vz.commands.common import (
    err,
    parse_zones,
    positive,
    progress,
    s3_options,
    wants_progress,
)


def cmd_verify(args: argparse.Namespace) -> int:
    from tessera_vz.indexer.run import parse_int_list
    from tessera_vz.verify import verify_index

    positive(args.concurrency, "--concurrency")
    with progress(wants_progress(args)) as start:
        report = verify_index(
            args.store,
            years=parse_int_list(args.years, "years"),
            zones=parse_zones(args.zones),
            allow_local_sources=args.allow_local_sources,
            allowed_sources=args.allow_source,
            allow_private_sources=args.allow_private,
            concurrency=args.concurrency,
            retries=args.retries,
            timeout=args.timeout,
            s3_options=s3_options(args),
            ca_file=args.ca_file,
            progress=start,
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
                err.print(f"[red]{c.status}[/red] utm{c.zone:02d} {c.year} {escape(c.tile)}")
                for problem in c.problems:
                    err.print(f"    {escape(str(problem))}")
    return report.exit_code
