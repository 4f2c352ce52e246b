"""Run an index's (zone, year) units on a Dask distributed cluster.

Each unit is independent: it probes its own headers, writes its own scratch
branch and publishes its own year branch and tag, so workers need nothing
from each other and nothing is merged afterwards. A task gets only picklable
arguments (the options, zone, year and its inventory table), opens its own obstore
store and repository, and returns its :class:`~tessera_vz.indexer.report.Report`.
The client then describes each zone on ``main``, exactly as a single-process
run does, so the summary and exit code are the same.

``distributed`` is optional (the ``dask`` extra): it is imported only here,
and only when a run asks for a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pyarrow as pa

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.progress import ProgressStart
from tessera_vz.indexer.report import Report
from tessera_vz.indexer.run_options import IndexOptions
from tessera_vz.indexer.unit import run_unit

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


def _client(opts: IndexOptions, stack: ExitStack) -> Client:
    """A client of ``opts.scheduler``, or of a LocalCluster of ``opts.workers`` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigurationError(
            "--scheduler/--workers need dask.distributed, which is not installed: "
            "pip install 'tessera-vz[dask]' (or run without them on one process)"
        ) from None
    if opts.scheduler:
        log.info("connecting to Dask scheduler %s", opts.scheduler)
        try:
            return stack.enter_context(Client(opts.scheduler, timeout="30s"))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot reach Dask scheduler {opts.scheduler!r}: {exc}; expected the "
                "address a `dask scheduler` prints (tcp://host:8786)"
            ) from None
    # One thread per worker: a unit runs its own asyncio loop and icechunk's
    # runtime, and the parallelism we want is across units. No memory limit,
    # because a unit's peak is native memory the nanny would misjudge and kill.
    cluster = stack.enter_context(
        LocalCluster(
            n_workers=opts.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=0,
        )
    )
    return stack.enter_context(Client(cluster))


def run_units(
    opts: IndexOptions,
    units: Mapping[tuple[int, int], pa.Table],
    progress: ProgressStart,
) -> Iterator[tuple[tuple[int, int], Report]]:
    """Index every unit on the cluster; yield ``((zone, year), report)`` in sorted order.

    All units run to completion before anything is yielded, so the merged
    report does not depend on which worker finished first. A unit's
    unexpected exception is re-raised, as a single-process run would, once
    every other unit has finished (their commits stand; ``main`` is derived
    from tags and is rebuilt by the next run).
    """
    keys = sorted(units)
    if not keys:
        return
    with ExitStack() as stack:
        client = _client(opts, stack)
        from distributed import as_completed

        log.info("running %d units on %s", len(keys), client.dashboard_link or client)
        futures = [
            client.submit(
                run_unit,
                opts,
                zone,
                year,
                units[(zone, year)],
                key=f"index-utm{zone:02d}-{year}",
                pure=False,
            )
            for zone, year in keys
        ]
        advance = progress("units", len(futures))
        for _ in as_completed(futures):
            advance(1)
        results: list[Report | BaseException] = []
        for future in futures:
            exc = future.exception()
            results.append(exc if exc is not None else future.result())
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        yield key, result
