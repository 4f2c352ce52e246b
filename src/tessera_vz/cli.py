"""The ``tessera-vz`` command line.

In the spirit of the geotessera CLI: progress on stderr (rich), one JSON
document on stdout with ``--json``, exit code 0 on success, 1 when some
data failed (the rest was written), 2 for usage or configuration errors
(nothing read, nothing written), 130 when interrupted (Ctrl-C).

This module only parses arguments: each command lives in
:mod:`tessera_vz.commands` and is imported when it runs, so ``--help`` and
usage errors answer without loading numpy, xarray, zarr or Icechunk.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from tessera_vz import __version__
from tessera_vz.commands.map_args import add_map_commands
from tessera_vz.core.errors import ConfigurationError, TesseraError, VersionNotFoundError
from tessera_vz.core.text import PrintableFormatter, printable

#: Exit codes of every command.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: stdout's reader went away (``tessera-vz ... | head``): 128 + SIGPIPE, as shells report it.
EXIT_BROKEN_PIPE = 141


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), as every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    """Global options, also accepted after the subcommand."""
    p.add_argument(
        "-v", "--verbose", action="count", default=0, dest="sub_verbose",
        help="more logging on stderr (-vv: debug)",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"tessera-vz {__version__}")


def _add_allow_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-source",
        action="append",
        metavar="PREFIX",
        help="read only from sources under PREFIX (scheme, host, port and whole path "
        "segments; repeatable; also where redirects may lead, e.g. a CDN); default: every "
        "remote source on a public address the repo records",
    )


def _add_read_flags(p: argparse.ArgumentParser, *, versions: bool = True) -> None:
    """The flags of every command that reads an index: one ReadOptions, and the versions read."""
    p.add_argument(
        "--allow-local-sources",
        action="store_true",
        help="read tiles from file:// sources recorded in the repo",
    )
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="read tiles from sources on loopback, private, link-local or multicast addresses",
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
    if versions:
        p.add_argument(
            "--version-tag",
            action="append",
            metavar="TAG",
            help="read a pinned version instead of each year's latest: a tag (2024-v1), one "
            "zone's tag (utm31/2024-v2) or snapshot (utm31/2024@SNAPSHOT), as `info` lists them "
            "and results' tessera:versions name them (repeatable)",
        )
    _add_s3_flags(p)


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


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--progress", action="store_true", help="progress bars even when not a tty")


def _command(p: argparse.ArgumentParser, target: str) -> None:
    """Run ``module:function`` of :mod:`tessera_vz.commands` for this subcommand."""
    p.set_defaults(command_target=target)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tessera-vz", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    p.add_argument("--version", action="version", version=f"tessera-vz {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ix = sub.add_parser("index", help="index a TESSERA tree into per-zone Icechunk repos")
    ix.add_argument(
        "source", help="a dataset directory (…/npy/v1.1-cam/): path, file://, http(s):// or s3://"
    )
    ix.add_argument("--out", required=True, help="directory holding the utm??.icechunk repos")
    ix.add_argument(
        "--manifest",
        help="upstream manifest.parquet (default: SOURCE/manifest.parquet; a relative path that "
        "is no local file is looked up under SOURCE)",
    )
    ix.add_argument(
        "--dataset",
        metavar="VERSION/VARIANT",
        help="the dataset indexed, e.g. 1.1/cambridge, when neither the manifest nor SOURCE's "
        "directory name (v1, v1.1-cam) says it; picks one of a manifest of several",
    )
    ix.add_argument(
        "--move-source",
        action="store_true",
        help="SOURCE is another mirror of the dataset the index holds: read it from now on",
    )
    ix.add_argument("--years", help="comma-separated years, e.g. 2024,2025")
    ix.add_argument("--zones", help="comma-separated UTM zones (1-60), e.g. 30,31")
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
    ix.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="index tiles of a local SOURCE reached by symbolic links leading outside it "
        "(skipped with a reason by default)",
    )
    ix.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    _add_progress(ix)
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
    _command(ix, "index:cmd_index")

    inf = sub.add_parser("info", help="zones, years, tags and tile counts of an index")
    inf.add_argument("store", help="the --out of `tessera-vz index`")
    inf.add_argument("--json", action="store_true")
    _add_read_flags(inf, versions=False)
    _command(inf, "info:cmd_info")

    pt = sub.add_parser("point", help="the embedding of one pixel")
    pt.add_argument("lon", type=float)
    pt.add_argument("lat", type=float)
    pt.add_argument("--year", required=True, help="a year, or comma-separated years (a row each)")
    pt.add_argument("--store", required=True)
    pt.add_argument("--json", action="store_true")
    _add_read_flags(pt)
    _command(pt, "point:cmd_point")

    vf = sub.add_parser("verify", help="find indexed tiles whose source files changed or vanished")
    vf.add_argument("store", help="the --out of `tessera-vz index`")
    vf.add_argument("--years", help="comma-separated years, e.g. 2024,2025")
    vf.add_argument("--zones", help="comma-separated UTM zones, e.g. 30,31")
    vf.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    vf.add_argument("--concurrency", type=int, default=64, help="HEAD requests in flight")
    _add_progress(vf)
    _add_read_flags(vf, versions=False)
    _command(vf, "verify:cmd_verify")

    pts = sub.add_parser(
        "points",
        help="a training table: embeddings of many points (CSV/Parquet/GeoParquet in, "
        "GeoParquet or CSV out)",
    )
    pts.add_argument(
        "input",
        help="CSV/TSV (GBIF downloads too), Parquet, GeoParquet, GeoPackage, GeoJSON or "
        "shapefile of the points",
    )
    pts.add_argument(
        "--year",
        help="a year, or comma-separated years (default: each row's own year, from a 'year' "
        "column)",
    )
    pts.add_argument(
        "--year-column", metavar="COLUMN", help="read each row in the year this column holds"
    )
    pts.add_argument("--store", required=True)
    pts.add_argument("--out", required=True, help="FILE.parquet (GeoParquet 1.1) or FILE.csv")
    pts.add_argument("--lon", metavar="COLUMN", help="longitude column (default: lon/longitude)")
    pts.add_argument("--lat", metavar="COLUMN", help="latitude column (default: lat/latitude)")
    pts.add_argument("--geometry", metavar="COLUMN", help="a WKT (or WKB) point column, lon/lat")
    pts.add_argument(
        "--batch-size", type=int, default=100_000, help="points read at a time (default 100000)"
    )
    pts.add_argument("--json", action="store_true")
    _add_progress(pts)
    _add_read_flags(pts)
    _command(pts, "points:cmd_points")

    rg = sub.add_parser(
        "region", help="a lon/lat box on one grid across zones (.tif COG, .zarr, .nc)"
    )
    for name in ("west", "south", "east", "north"):
        rg.add_argument(name, type=float, nargs="?", help=f"bbox {name} (degrees)")
    rg.add_argument(
        "--region-file",
        metavar="AREA",
        help="a polygon (.geojson, .gpkg, .shp) instead of the bbox: its box on the grid, "
        "no-data outside it",
    )
    rg.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    rg.add_argument("--year", required=True, help="a year, or comma-separated years")
    rg.add_argument("--store", required=True)
    rg.add_argument("--out", required=True, help="FILE.tif (Cloud-Optimised GeoTIFF), .zarr or .nc")
    rg.add_argument("--zone", type=int, default=None, help="UTM zone (default: bbox centre)")
    rg.add_argument("--crs", default=None, help="output CRS, e.g. EPSG:4326 (default: --zone's)")
    rg.add_argument("--resolution", default=None, metavar="RES[,YRES]",
                    help="pixel size in the CRS's units (default: about 10 m)")  # fmt: skip
    rg.add_argument(
        "--raw",
        action="store_true",
        help="int8 embeddings plus float32 scales (a .tif writes the scales to FILE_scales.tif)",
    )
    rg.add_argument("--json", action="store_true")
    _add_progress(rg)
    _add_read_flags(rg)
    _command(rg, "region:cmd_region")

    def finish(mp: argparse.ArgumentParser, target: str) -> None:
        _add_progress(mp)
        _add_read_flags(mp)
        _command(mp, target)

    add_map_commands(sub, finish)
    sv = sub.add_parser("serve", help="a map viewer of an index in the browser (and its HTTP API)")
    sv.add_argument("store", help="the --out of `tessera-vz index` (path, s3:// or http(s)://)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    sv.add_argument(
        "--basemap",
        metavar="URL",
        help="XYZ raster tiles under the tile cells, e.g. "
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
    _command(sv, "serve:cmd_serve")

    ct = sub.add_parser(
        "catalog", help="GeoParquet, STAC and a coverage map of an index (incremental)"
    )
    ct.add_argument("store", help="the --out of `tessera-vz index` (path or s3://)")
    ct.add_argument("--out", required=True, help="catalog directory (tiles.parquet, stac/, ...)")
    ct.add_argument(
        "--base-url",
        metavar="URL",
        help="where the index will be published (https://host/index or s3://bucket/index): "
        "links to it are made under URL (default: relative to the catalog for a local index)",
    )
    ct.add_argument(
        "--items",
        choices=("json", "geoparquet"),
        default="json",
        help="json (default): one STAC file per Item plus stac/items.parquet; geoparquet: the "
        "Items only in stac/items.parquet, built in bulk (for archive-size indexes)",
    )
    ct.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="processes building zone-years (default: 1; with --items geoparquet and 16 "
        "zone-years or more, the cores take over once the rest would take over 20 s)",
    )
    ct.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    _add_progress(ct)
    _add_read_flags(ct, versions=False)
    _command(ct, "catalog:cmd_catalog")

    dm = sub.add_parser("demo", help="generate, serve, index and read a small sample tree")
    dm.add_argument("--dir", default="demo-out", help="working directory of the demo")
    dm.add_argument("--keep", action="store_true", help="keep serving until Ctrl-C")
    _command(dm, "demo:cmd_demo")

    for parser in sub.choices.values():
        _add_common(parser)
    return p


def _fail(message: str) -> None:
    """One line on stderr: ``error: ...`` (red on a terminal), never markup-interpreted."""
    # One line, whatever the exception held; values from an index or a server inside it
    # keep no terminal control (an escape sequence in a tile name is shown as ``\x1b``).
    text = printable(" ".join(str(message).split()), limit=4000)
    if sys.stderr.isatty():
        sys.stderr.write(f"\x1b[31merror:\x1b[0m {text}\n")
    else:
        sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says error or hang-up)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
        return False


def _quiet_stdout() -> int:
    """Leave quietly after ``| head`` closed stdout, as Python's documentation recommends.

    Whatever is still buffered cannot be delivered; stdout is pointed at
    ``/dev/null`` so that the final flush does not fail a second time
    (see "Note on SIGPIPE" in the :mod:`signal` documentation).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0 ok, 1 some data failed, 2 usage, 130 Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    verbose = args.verbose + args.sub_verbose
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    module, name = args.command_target.split(":")
    try:
        func: Any = getattr(importlib.import_module(f"tessera_vz.commands.{module}"), name)
        return int(func(args))
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C); files being written were not completed")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a pipe of ours to somewhere else: not the user's `| head`
        return _quiet_stdout()
    except (ConfigurationError, VersionNotFoundError) as exc:  # nothing was read or written
        _fail(str(exc))
        return EXIT_USAGE
    except (TesseraError, LookupError, ValueError, OSError) as exc:  # data that failed
        _fail(str(exc))
        return EXIT_FAILED


def run() -> None:
    """The ``tessera-vz`` command: :func:`main`, then leave without finalizing Python.

    Once the output is flushed nothing is left to do, and skipping
    interpreter finalization avoids a crash of obstore's and Icechunk's
    native threads that could turn a finished run's exit code 0 into 134
    (see :mod:`tessera_vz.core.shutdown`).
    """
    code = main()
    logging.shutdown()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the last of the output met a closed pipe (`| head`)
        code = _quiet_stdout()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
