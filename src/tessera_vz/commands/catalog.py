"""``tessera-vz catalog``: GeoParquet, STAC and a coverage map of an index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import urlsplit

from rich.markup import escape

from tessera_vz.commands.common import err, progress, read_options_of, wants_progress
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.files import check_output_folder


def cmd_catalog(args: argparse.Namespace) -> int:
    from tessera_vz.catalog import CatalogOptions, build_catalog

    if "://" not in args.out:
        target = Path(args.out)
        if target.exists() and not target.is_dir():
            raise ConfigurationError(
                f"--out {args.out!r} is not a directory but a file; the catalog is a folder"
            )
        if not target.parent.is_dir():
            raise ConfigurationError(
                f"--out {args.out!r}: the folder {str(target.parent)!r} does not exist; create it"
            )
        check_output_folder(args.out, "--out")
    base_url = args.base_url
    if base_url is not None and urlsplit(base_url).scheme not in ("http", "https", "s3"):
        raise ConfigurationError(
            f"--base-url must be the index's published address, an http(s):// or s3:// URL; "
            f"got {base_url!r}"
        )
    if args.jobs is not None and args.jobs < 1:
        raise ConfigurationError(f"--jobs must be 1 or more processes, got {args.jobs}")
    opts = CatalogOptions(
        store=args.store,
        out=args.out,
        read=read_options_of(args),
        base_url=base_url,
        items=args.items,
        jobs=args.jobs,
    )
    with progress(wants_progress(args)) as start:
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
            err.print(
                f"[red]failed[/red] utm{f['zone']:02d} {f['year'] or ''}: {escape(f['reason'])}"
            )
        err.print(
            "wrote " + (", ".join(report.written) or f"nothing: {args.out} is up to date"),
            markup=False,
        )
    return report.exit_code
