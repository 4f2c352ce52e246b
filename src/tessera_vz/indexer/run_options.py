"""The settings of an index run, and how the source is read under them.

:class:`IndexOptions` holds a run's arguments (the CLI's, or a caller's);
the functions here derive from them what every part of the run reads the
source with: the retry policy, the source's S3 settings and extra CA, the
byte boundary for header probes and the obstore options for listings. It is
plain data, so a Dask worker receives it pickled and derives the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.layout import CHUNK_BUDGET
from tessera_vz.core.options import ReadOptions, RetryPolicy
from tessera_vz.core.s3 import split_options
from tessera_vz.indexer.probe import EXTRA_PASSES
from tessera_vz.indexer.roots import SourceRoot, source_reader
from tessera_vz.indexer.transaction import SCRATCH_MAX_AGE


@dataclass
class IndexOptions:
    """Settings of an index run (the CLI's arguments)."""

    source: str
    out: str
    manifest: str | None = None
    years: list[int] | None = None
    zones: list[int] | None = None
    concurrency: int = 64
    chunk_budget: int = CHUNK_BUDGET
    source_options: dict[str, Any] = field(default_factory=dict)
    s3_options: dict[str, Any] = field(default_factory=dict)
    #: Retries of a failed header read (503, reset, timeout), with exponential
    #: backoff from ``backoff`` seconds; ``timeout`` bounds each attempt.
    retries: int = 3
    timeout: float = 30.0
    backoff: float = 0.1
    #: Prefixes trusted besides SOURCE: where its redirects may lead (a CDN).
    allowed_sources: list[str] = field(default_factory=list)
    #: A PEM file of extra certificate authorities to trust (default
    #: ``$SSL_CERT_FILE``), never recorded in the repository.
    ca_file: str | None = None
    #: Tiles per scratch-branch commit (bounds memory; see ``write_unit``).
    batch_tiles: int = 1000
    #: Scratch branches of killed runs older than this (seconds) are deleted.
    scratch_max_age: float = SCRATCH_MAX_AGE
    #: Run the (zone, year) units on a Dask cluster: the scheduler's address,
    #: or ``workers`` worker processes of a LocalCluster (needs ``distributed``).
    scheduler: str | None = None
    workers: int | None = None
    #: Probe every listed tile, even those the inventory shows unchanged.
    reprobe: bool = False
    #: Bounded extra passes over files whose probes failed transiently
    #: (see :func:`~tessera_vz.indexer.probe.probe_all`); 0 disables them.
    extra_passes: int = EXTRA_PASSES
    #: The dataset indexed (``1.1/cambridge``) when neither the manifest's
    #: columns nor SOURCE's directory name say it; filters a manifest of several.
    dataset: str | None = None
    #: Allow SOURCE to differ from the root the index was made from: a move to
    #: another mirror of the same dataset (another dataset is always refused).
    move_source: bool = False
    #: Index tiles of a local tree reached by symbolic links leading outside it
    #: (skipped with a reason by default: see :mod:`tessera_vz.indexer.symlinks`).
    follow_symlinks: bool = False


def read_options(opts: IndexOptions) -> ReadOptions:
    """How the run reads its source: retry policy, the source's S3 settings, extra CA.

    The run reads only what the user named (SOURCE, the manifest,
    ``--allow-source``), so those may be on loopback or private addresses.
    """
    policy = RetryPolicy(retries=opts.retries, timeout=opts.timeout, backoff=opts.backoff)
    s3 = tuple(sorted(source_s3_options(opts).items()))
    return ReadOptions(
        policy=policy, s3_options=s3, ca_file=opts.ca_file, allow_private_sources=True
    )


def source_files(opts: IndexOptions, root: SourceRoot) -> SourceFiles:
    """The boundary the run reads its source through (see :func:`source_reader`)."""
    return source_reader(root, read_options(opts), opts.allowed_sources)


def source_options(opts: IndexOptions) -> dict[str, Any]:
    """obstore options of the source (listings): read policy, S3 settings, explicit options.

    ``opts.s3_options`` apply to the source as to the index; S3 keys in
    ``opts.source_options`` (e.g. ``anonymous``) override them for the source only.
    """
    retry = read_options(opts).policy.obstore()
    merged = {**opts.s3_options, **retry, **opts.source_options}
    merged["client_options"] = {
        **retry["client_options"],
        **opts.source_options.get("client_options", {}),
    }
    return merged


def source_s3_options(opts: IndexOptions) -> dict[str, Any]:
    """S3 settings of the source (see :func:`source_options`), for its container."""
    return {**opts.s3_options, **split_options(opts.source_options)[0]}
