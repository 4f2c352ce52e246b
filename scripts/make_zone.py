"""Generate one full-size zone-year: every 0.1-degree cell of a UTM zone over a latitude span.

Usage::

    python scripts/make_zone.py OUT --zone 31 --lat 40 50 --year 2024 [--bands 128]

Real geometry and real sizes (128 bands, ~100-150 MB per embeddings file),
written as sparse files: only the ``.npy`` headers are written and each file
is extended to its full length with a hole, so a 7,000-tile zone-year takes
seconds and a few tens of MB of disk while every size and offset the
indexer sees is the real one (the data reads back as zeros, i.e. no-data
scales). A ``manifest.parquet`` lists every tile. Prints a JSON summary on
stdout; importable too (:func:`main` takes an argv list).
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

from tessera_vz.core.geometry import utm_zone
from tessera_vz.testing.tiles import MANIFEST_NAME, cell_centres, make_tree

logger = logging.getLogger(__name__)


def zone_bounds(zone: int) -> tuple[float, float]:
    """West and east longitude of a UTM zone (6 degrees wide, zone 1 starts at -180)."""
    if not 1 <= zone <= 60:
        raise ValueError(f"UTM zone must be 1-60, got {zone}")
    west = -180.0 + 6.0 * (zone - 1)
    return west, west + 6.0


def zone_centres(zone: int, south: float, north: float) -> list[tuple[float, float]]:
    """Every cell centre of ``zone`` between latitudes ``south`` and ``north``.

    Cells lie wholly inside the span: a cell is included when its centre is
    0.05 degrees or more inside both edges, so ``--lat 40 50`` gives 100 rows.
    """
    if not -90.0 <= south < north <= 90.0:
        raise ValueError(
            f"--lat expects SOUTH NORTH with -90 <= SOUTH < NORTH <= 90, got {south}, {north}"
        )
    west, east = zone_bounds(zone)
    centres = cell_centres((west + 0.05, south + 0.05, east - 0.05, north - 0.05))
    wrong = [c for c in centres if int(utm_zone(c[0])) != zone]
    if wrong:  # a centre on the wrong side of a zone edge would be a generator bug
        raise AssertionError(f"cells outside zone {zone}: {wrong[:3]}")
    return centres


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="make_zone.py",
        description="Write every 0.1-degree tile of one UTM zone-year, full size, as sparse files.",
    )
    p.add_argument("out", type=Path, help="root directory of the tree to write")
    p.add_argument("--zone", type=int, required=True, help="UTM zone, 1-60")
    p.add_argument(
        "--lat",
        nargs=2,
        type=float,
        required=True,
        metavar=("SOUTH", "NORTH"),
        help="latitude span in degrees, e.g. 40 50 (100 rows of 60 tiles)",
    )
    p.add_argument("--year", type=int, default=2024, help="the year directory (default 2024)")
    p.add_argument("--bands", type=int, default=128, help="embedding bands (default 128)")
    p.add_argument("--workers", type=int, default=None, help="writer threads")
    return p


def _disk_usage(root: Path) -> tuple[int, int, int]:
    """(files, apparent bytes, allocated bytes incl. directories) under ``root``."""
    files = apparent = allocated = 0
    for dirpath, _dirs, names in os.walk(root):
        allocated += os.stat(dirpath).st_blocks * 512
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return files, apparent, allocated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        centres = zone_centres(args.zone, *args.lat)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    specs = make_tree(
        args.out,
        centres=centres,
        years=[args.year],
        bands=args.bands,
        sparse=True,
        manifest=True,
        workers=args.workers,
    )
    seconds = time.perf_counter() - t0
    files, apparent, allocated = _disk_usage(args.out)
    summary = {
        "root": str(args.out.resolve()),
        "manifest": str((args.out / MANIFEST_NAME).resolve()),
        "zone": args.zone,
        "year": args.year,
        "lat": list(args.lat),
        "lon": list(zone_bounds(args.zone)),
        "tiles": len(specs),
        "bands": args.bands,
        "files": files,
        "bytes": apparent,
        "disk_bytes": allocated,
        "seconds": round(seconds, 3),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
