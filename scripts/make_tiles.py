"""Generate a synthetic TESSERA tile tree (and optionally serve it over nginx).

Usage::

    python scripts/make_tiles.py OUT --bbox W S E N [--years 2024,2025] [--bands 128]
        [--sparse] [--scales-per-band] [--no-manifest] [--url-base URL] [--serve]

Prints a JSON summary (tiles, bytes, seconds) on stdout, so benchmarks can
record what they generated. With ``--serve`` it then serves OUT over nginx
until Ctrl-C. Importable too: :func:`main` takes an argv list.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tessera_vz.testing.nginx import serve_forever
from tessera_vz.testing.tiles import make_tree

logger = logging.getLogger(__name__)


def _years(text: str) -> list[int]:
    """Parse ``2024,2025`` into years, for argparse."""
    try:
        years = [int(y) for y in text.split(",") if y.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"years must be comma-separated integers: {text!r}") from e
    if not years:
        raise argparse.ArgumentTypeError("at least one year is needed")
    return years


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (separate so tests and docs can inspect it)."""
    p = argparse.ArgumentParser(
        prog="make_tiles.py",
        description="Write a synthetic TESSERA tree with the real tile geometry.",
    )
    p.add_argument("out", type=Path, help="root directory of the tree to write")
    p.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        required=True,
        metavar=("W", "S", "E", "N"),
        help="every 0.1-degree cell whose centre lies inside this box",
    )
    p.add_argument("--years", type=_years, default=[2024], help="comma-separated years")
    p.add_argument("--bands", type=int, default=128, help="embedding bands (default 128)")
    p.add_argument(
        "--sparse",
        action="store_true",
        help="headers only, files extended to full size with holes (content reads as zeros)",
    )
    p.add_argument("--scales-per-band", action="store_true", help="write (H, W, bands) scales")
    p.add_argument("--no-manifest", action="store_true", help="do not write manifest.parquet")
    p.add_argument("--url-base", default=None, help="list absolute URLs under this base")
    p.add_argument("--serve", action="store_true", help="then serve OUT over nginx until Ctrl-C")
    p.add_argument("--port", type=int, default=None, help="port for --serve (default: free)")
    p.add_argument("--workers", type=int, default=None, help="writer threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    specs = make_tree(
        args.out,
        bbox=tuple(args.bbox),
        years=args.years,
        bands=args.bands,
        sparse=args.sparse,
        scales_per_band=args.scales_per_band,
        manifest=not args.no_manifest,
        url_base=args.url_base,
        workers=args.workers,
    )
    seconds = time.perf_counter() - t0
    nbytes = sum(
        os.path.getsize(args.out / rel) for s in specs for rel in (s.emb_path, s.scales_path)
    )
    summary = {
        "root": str(args.out.resolve()),
        "tiles": len(specs),
        "years": args.years,
        "bands": args.bands,
        "sparse": args.sparse,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
    }
    print(json.dumps(summary), flush=True)
    if args.serve:
        serve_forever(args.out, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
