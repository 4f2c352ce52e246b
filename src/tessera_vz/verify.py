"""Check an index against its sources: which tiles drifted since they were indexed.

It reads both the index (the reader) and the sources' headers (the indexer's
probes), so it sits above both.

Upstream re-uploads files under the same name. A read of a drifted file
already fails (the checksum recorded on every virtual reference no longer
matches), but only when someone reads that tile. ``tessera-vz verify`` asks
every source object for its size and checksum (one HEAD request each, no
data, through the reader's boundary) and compares them with the year's
tiles table, so drift is found for the whole index at once.
``tessera-vz index --reprobe`` re-indexes exactly the drifted tiles, since it
compares the same facts (a plain re-run probes only the files its inventory
shows changed, and a manifest that was not updated with the re-upload does
not show it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tessera_vz.core.boundary import ObjectFacts, SourceFiles
from tessera_vz.core.errors import ConfigurationError, SourceNotFoundError, TesseraError
from tessera_vz.core.loop import sync
from tessera_vz.core.options import ReadOptions, RetryPolicy
from tessera_vz.core.permissions import authorised, with_remembered
from tessera_vz.core.progress import Advance, ProgressStart, no_progress
from tessera_vz.core.repos import quiet_icechunk
from tessera_vz.indexer.roots import SourceRoot, checksum_of, checksum_text

log = logging.getLogger(__name__)

Status = Literal["healthy", "drifted", "missing", "unreachable"]


@dataclass(frozen=True)
class TileCheck:
    """The verdict on one indexed tile and, unless healthy, what differs."""

    zone: int
    year: int
    tile: str
    status: Status
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Every tile's verdict. Exit code 0 when all are healthy, else 1."""

    checks: list[TileCheck] = field(default_factory=list)

    def of(self, status: Status) -> list[TileCheck]:
        return [c for c in self.checks if c.status == status]

    @property
    def exit_code(self) -> int:
        return 0 if all(c.status == "healthy" for c in self.checks) else 1

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``tessera-vz verify --json``."""
        return {
            "tiles": len(self.checks),
            "healthy": len(self.of("healthy")),
            "drifted": [asdict(c) for c in self.of("drifted")],
            "missing": [asdict(c) for c in self.of("missing")],
            "unreachable": [asdict(c) for c in self.of("unreachable")],
        }


async def _head(
    files: SourceFiles, url: str, limit: asyncio.Semaphore, advance: Advance
) -> ObjectFacts | TesseraError:
    """The object's facts, or the error the boundary turned its failure into."""
    async with limit:
        try:
            return await files.head(url, "verifying")
        except TesseraError as exc:  # every failure the boundary raises; classified by _compare
            return exc
        finally:
            advance(1)


def _compare(
    root: SourceRoot,
    kind: str,
    path: str,
    size: int,
    checksum: str,
    found: ObjectFacts | TesseraError,
) -> tuple[Status, str | None]:
    url = root.url_of(path)
    if isinstance(found, SourceNotFoundError):
        return "missing", f"{kind} {url}: not found"
    if isinstance(found, TesseraError):
        first = str(found).strip().splitlines()[0] if str(found).strip() else ""
        return "unreachable", f"{kind} {url}: {type(found).__name__}: {first}"
    now_size = found.size
    try:
        now_sum = checksum_text(checksum_of(root, found.meta()))
    except ValueError as exc:
        return "unreachable", f"{kind} {url}: {exc}"
    if now_size != size or now_sum != checksum:
        return "drifted", (
            f"{kind} {url}: indexed size {size}, checksum {checksum}; now size {now_size}, "
            f"checksum {now_sum}. Re-run `tessera-vz index --reprobe` on this source to re-index it"
        )
    return "healthy", None


_RANK: dict[Status, int] = {"healthy": 0, "drifted": 1, "unreachable": 2, "missing": 3}


async def _check_source(
    root: SourceRoot,
    rows: list[dict[str, Any]],
    files: SourceFiles,
    concurrency: int,
    advance: Advance,
) -> list[TileCheck]:
    limit = asyncio.Semaphore(concurrency)
    paths = [p for r in rows for p in (r["emb_path"], r["scales_path"])]
    heads = await asyncio.gather(*(_head(files, root.url_of(p), limit, advance) for p in paths))
    found = dict(zip(paths, heads, strict=True))
    out = []
    for r in rows:
        verdicts = [
            _compare(root, kind, r[f"{pre}_path"], int(r[f"{pre}_size"]),
                     str(r[f"{pre}_checksum"]), found[r[f"{pre}_path"]])
            for kind, pre in (("embeddings", "emb"), ("scales", "scales"))
        ]  # fmt: skip
        status = max((v[0] for v in verdicts), key=lambda s: _RANK[s])
        problems = [p for _, p in verdicts if p]
        out.append(TileCheck(int(r["zone"]), int(r["year"]), r["tile"], status, problems))
    return out


def _empty_selection(
    path: str, years: list[int] | None, zones: list[int] | None, indexed: dict[int, list[int]]
) -> str:
    """Why ``--years``/``--zones`` select nothing, and what the index holds instead."""
    asked = " and ".join(
        f"{what} {', '.join(map(str, values))}"
        for what, values in (("UTM zones", zones), ("years", years))
        if values is not None
    )
    held = "; ".join(
        f"utm{z:02d}: {', '.join(map(str, ys)) or 'no year'}" for z, ys in sorted(indexed.items())
    )
    return (
        f"nothing to verify: {path} has no tiles of {asked}; it indexes {held or 'no zone'} "
        "(check --years and --zones)"
    )


def verify_index(
    path: str,
    *,
    years: list[int] | None = None,
    zones: list[int] | None = None,
    allow_local_sources: bool = False,
    allowed_sources: list[str] | None = None,
    concurrency: int = 64,
    retries: int = 3,
    timeout: float = 30.0,
    s3_options: dict[str, Any] | None = None,
    ca_file: str | None = None,
    allow_private_sources: bool = False,
    progress: ProgressStart = no_progress,
) -> VerifyReport:
    """Compare every indexed tile's source objects with what the index recorded.

    Sources are reached the way a reader would (:mod:`tessera_vz.core.permissions`):
    ``file://`` sources and loopback or private addresses only with
    ``allow_local_sources`` / ``allow_private_sources`` or a permission
    remembered for this index (a repository from elsewhere must not make us
    probe local paths or the user's network), and only prefixes in
    ``allowed_sources`` when given.
    """
    from tessera_vz.reader import open_store

    quiet_icechunk()
    store = open_store(path, allow_local_sources=True, s3_options=s3_options)
    read = with_remembered(
        path,
        ReadOptions(
            policy=RetryPolicy(retries=retries, timeout=timeout),
            s3_options=tuple(sorted((s3_options or {}).items())),
            ca_file=ca_file,
            allow_local_sources=allow_local_sources,
            allowed_sources=tuple(allowed_sources) if allowed_sources is not None else None,
            allow_private_sources=allow_private_sources,
        ),
    )
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    indexed = {zone: store.years(zone) for zone in store.zones()}
    chosen = [
        (zone, year)
        for zone, zone_years in indexed.items()
        if zones is None or zone in zones
        for year in zone_years
        if years is None or year in years
    ]
    if not chosen and (years is not None or zones is not None):
        raise ConfigurationError(_empty_selection(path, years, zones, indexed))
    for zone, year in chosen:
        table = store.tiles(year, zone)
        cols = {str(c): table[c].values for c in table.data_vars}
        for i, name in enumerate(table.tile.values):
            row = {c: v[i].item() for c, v in cols.items()}
            row.update(tile=str(name), year=year, zone=zone)
            by_source[str(row["source"])].append(row)
    report = VerifyReport()
    total = 2 * sum(len(rows) for rows in by_source.values())
    advance = progress(f"verifying {total // 2} tiles ({total} files)", total)
    for url, rows in sorted(by_source.items()):
        root = SourceRoot(url)
        if allowed_sources is not None and not authorised(url, read):
            raise ConfigurationError(
                f"{len(rows)} tiles of {path} come from {url}, which is not in the allowed "
                f"sources {allowed_sources}; add it (--allow-source) to verify them"
            )
        if root.is_local and not authorised(url, read):
            raise ConfigurationError(
                f"{len(rows)} tiles of {path} come from the local tree {url}; pass "
                "--allow-local-sources (allow_local_sources=True) if you trust this index "
                "to look at local files"
            )
        log.info("verifying %d tiles against %s", len(rows), url)
        files = SourceFiles([url, *(allowed_sources or [])], read)
        report.checks += sync(_check_source(root, rows, files, concurrency, advance))
    report.checks.sort(key=lambda c: (c.zone, c.year, c.tile))
    return report
