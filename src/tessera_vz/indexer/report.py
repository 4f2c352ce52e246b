"""What an index run did, as the CLI prints it with ``--json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Failure:
    """One tile that could not be indexed, and why; the rest of the run goes on."""

    year: int | None
    tile: str | None
    path: str | None
    reason: str


@dataclass(frozen=True)
class TileWarning:
    """A tile indexed despite a disagreement worth a human's look."""

    year: int
    tile: str
    message: str


@dataclass(frozen=True)
class Commit:
    """One commit to a (zone, year) branch and the tag that pins it."""

    zone: int
    year: int
    snapshot: str
    tag: str
    #: Batches written to the scratch branch.
    batches: int = 1
    #: Whether the batches amended each other (no zone lock), leaving the
    #: replaced snapshots as garbage; under the lock they were folded instead.
    amended: bool = False


@dataclass
class Report:
    """Totals of an index run. Exit code 0 when nothing failed, else 1.

    ``unchanged`` counts every tile left as it was, of which ``skipped``
    were not even probed because the inventory shows them unchanged, and
    ``refreshed`` were probed, found unchanged, and had only the inventory
    facts in their table row updated. ``retried`` files were re-probed by
    the extra passes after a transient failure; ``recovered`` of them were
    read there (without the passes their tiles would have failed).
    ``timings`` holds the wall seconds of each phase, summed over units, and
    ``cpu_{phase}`` the process CPU seconds spent meanwhile (all threads:
    icechunk commits on its own, so CPU may exceed wall; a worker running
    several units at once counts them all).
    """

    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0
    refreshed: int = 0
    retried: int = 0
    recovered: int = 0
    failed: list[Failure] = field(default_factory=list)
    warnings: list[TileWarning] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bytes_read: int = 0
    requests: int = 0
    #: The dataset indexed (``1.1/cambridge``, or ``unknown``) and the source root.
    dataset: str = "unknown"
    source: str = ""

    def merge(self, other: Report) -> None:
        """Add another (zone, year) unit's report to this one."""
        self.indexed += other.indexed
        self.unchanged += other.unchanged
        self.removed += other.removed
        self.skipped += other.skipped
        self.refreshed += other.refreshed
        self.retried += other.retried
        self.recovered += other.recovered
        self.failed.extend(other.failed)
        self.warnings.extend(other.warnings)
        self.commits.extend(other.commits)
        self.bytes_read += other.bytes_read
        self.requests += other.requests
        for key, value in other.timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + value

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``tessera-vz index --json``."""
        return {
            "dataset": self.dataset,
            "source": self.source,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": self.skipped,
            "refreshed": self.refreshed,
            "retried": self.retried,
            "recovered": self.recovered,
            "failed": [asdict(f) for f in self.failed],
            "warnings": [asdict(w) for w in self.warnings],
            "commits": [asdict(c) for c in self.commits],
            "bytes_read": self.bytes_read,
            "requests": self.requests,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
