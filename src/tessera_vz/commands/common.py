"""What several commands share: consoles, progress, read options, checks before reading.

Coordinates and boxes are checked by :mod:`tessera_vz.core.coords`, as
everywhere else.

Every check here runs before anything expensive (opening sources, reading
pixels) and fails with a :class:`ConfigurationError`, which the CLI prints
as one line and turns into exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.progress import Advance, ProgressStart, no_progress


class _Console(Console):
    """rich's Console, but a closed pipe (``| head``) is left to the CLI to end quietly.

    rich's own handling exits 1 from inside ``print``; raising
    :class:`BrokenPipeError` instead lets :func:`tessera_vz.cli.main` end
    every command the same way, whether it printed with rich or ``print``.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


err = _Console(stderr=True, soft_wrap=True)
out = _Console(soft_wrap=True)


@contextmanager
def progress(enabled: bool) -> Iterator[ProgressStart]:
    """Rich progress bars on stderr: ``start(label, total)`` gives an ``advance(n)``."""
    if not enabled:
        yield no_progress
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )

    def start(label: str, total: int) -> Advance:
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        yield start


def wants_progress(args: argparse.Namespace) -> bool:
    """Bars on a terminal unless ``--quiet``, or anywhere with ``--progress``."""
    return bool((not args.quiet and err.is_terminal) or args.progress)


def s3_options(args: argparse.Namespace, *, anonymous: bool = True) -> dict[str, Any]:
    """``s3_options`` from the S3 flags (only those given, so the environment fills the rest)."""
    opts: dict[str, Any] = {}
    if args.s3_endpoint:
        opts["endpoint_url"] = args.s3_endpoint
    if args.s3_region:
        opts["region"] = args.s3_region
    if anonymous and args.anonymous:
        opts["anonymous"] = True
    return opts


def read_options_of(args: argparse.Namespace) -> Any:
    """The :class:`~tessera_vz.core.options.ReadOptions` the read flags describe."""
    from tessera_vz.core.options import ReadOptions

    if args.retries < 0:
        raise ConfigurationError(f"--retries must be 0 or more, got {args.retries}")
    if not args.timeout > 0:
        raise ConfigurationError(f"--timeout must be positive (seconds); got {args.timeout}")
    return ReadOptions.of(
        retries=args.retries,
        timeout=args.timeout,
        allow_local_sources=args.allow_local_sources,
        allowed_sources=args.allow_source,
        allow_private_sources=args.allow_private,
        s3_options=s3_options(args),
        direct_reads=not args.through_icechunk,
        ca_file=args.ca_file,
    )


def versions(args: argparse.Namespace) -> Any:
    """The pins of ``--version-tag`` (checked for their form now, for existence before reading)."""
    from tessera_vz.reader.versions import pins

    # Each value may hold several tokens: a result's whole tessera:versions.
    return pins(" ".join(getattr(args, "version_tag", None) or []))


def open_index(args: argparse.Namespace, path: str | None = None) -> Any:
    """The index of ``--store`` (or ``path``) opened with the read flags and pinned versions."""
    from tessera_vz.reader import open_store

    pinned = versions(args)  # a malformed tag is refused before the index is opened
    return open_store(path or args.store, options=read_options_of(args), versions=pinned)


def parse_years(text: str) -> list[int]:
    """``--year 2024`` or ``--year 2023,2024``, each a plausible year."""
    try:
        years = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(
            f"--year expects a year or comma-separated years such as 2023,2024; got {text!r}"
        ) from None
    if not years:
        raise ConfigurationError("--year names no year")
    bad = [y for y in years if not 1000 <= y <= 9999]
    if bad:
        raise ConfigurationError(f"--year expects four-digit years such as 2024; got {bad[0]}")
    if len(set(years)) != len(years):
        raise ConfigurationError(f"--year names a year twice: {text!r}")
    return years


def check_years(store: Any, years: Sequence[int], zones: Iterable[int] | None = None) -> None:
    """Every year asked is indexed in the index, or in one of ``zones`` (else exit 2).

    Given the zones a read reaches (a point's, a bbox's), only their
    repositories are opened: a global index has 60, and a point should not
    wait for all of them.
    """
    where = sorted(set(zones) & set(store.zones())) if zones is not None else None
    indexed = sorted({y for z in where for y in store.years(z)}) if where is not None else (
        store.years()
    )  # fmt: skip
    missing = [y for y in years if y not in indexed]
    if missing:
        what = "years" if len(missing) > 1 else "year"
        there = store.root
        if zones is not None:
            names = ", ".join(map(str, sorted(set(zones))))
            there = f"UTM zone{'s' if len(set(zones)) > 1 else ''} {names} of {store.root}"
        raise ConfigurationError(
            f"{what} {', '.join(map(str, missing))} not indexed in {there}; indexed years: "
            f"{', '.join(map(str, indexed)) or 'none'}"
        )


def check_versions(
    store: Any, years: Sequence[int] | None = None, zones: Iterable[int] | None = None
) -> None:
    """Every pinned version exists where it will be read (else exit 2, listing the tags).

    Opens the pinned snapshot of each zone-year (of ``years`` and ``zones``,
    or all) that ``--version-tag`` pins: a few small reads, before any pixel.
    """
    pins = store.versions
    if not pins:
        return
    for zone in store.zones():
        if zones is not None and zone not in set(zones):
            continue
        for year in store.years(zone):
            if years is not None and year not in years:
                continue
            if pins.tag(zone, year) is not None or pins.snapshot(zone, year) is not None:
                store.session(zone, year)


def parse_zones(text: str | None) -> list[int] | None:
    """``--zones 30,31``: UTM zone numbers 1-60, or None for all."""
    from tessera_vz.indexer.run import parse_int_list

    zones = parse_int_list(text, "zones")
    bad = [z for z in zones or [] if not 1 <= z <= 60]
    if bad:
        raise ConfigurationError(f"--zones: UTM zones are 1-60, got {bad[0]}")
    return zones


def positive(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigurationError(f"{flag} must be at least 1, got {value}")
    return value
