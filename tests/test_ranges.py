"""Planning reads: ranges merged by file, and merged ranges grouped into HTTP requests."""

from __future__ import annotations

import itertools

import numpy as np

from tessera_vz.core.boundary import PART, SourceFiles
from tessera_vz.core.byteranges import MAX_RANGES
from tessera_vz.reader.range_plan import coalesce, requests

FILES = ["http://mirror/a.npy", "http://mirror/b.npy", "s3://data/c.npy"]


def _groups(codes: list[int], sizes: list[int]) -> list[list[int]]:
    """The requests of ranges laid end to end with a gap no merge bridges."""
    size = np.asarray(sizes, np.int64)
    starts = np.cumsum(size + PART) - size
    plan = coalesce(np.asarray(codes), FILES, starts, starts + size, gap=0)
    assert len(plan.keys) == len(sizes)  # nothing merged
    bounds = requests(plan, SourceFiles(["http://mirror/", "s3://data/"])).tolist()
    return [list(range(a, b)) for a, b in itertools.pairwise(bounds)]


def test_short_ranges_of_a_file_share_requests_up_to_the_limits() -> None:
    groups = _groups([0] * 450, [1000] * 450)
    assert [len(g) for g in groups] == [MAX_RANGES, MAX_RANGES, 50]
    big = PART // 8
    groups = _groups([0] * 20, [big] * 20)
    assert all(sum(big for _ in g) <= PART for g in groups) and len(groups) == 3


def test_long_pieces_and_other_files_are_requests_of_their_own() -> None:
    # Two pieces of merged rows then wedge rows: the pieces arrive in parallel.
    groups = _groups([0, 0, 0, 0, 1, 1, 2, 2], [PART, PART // 2, 500, 500, 500, 500, 500, 500])
    assert groups == [[0], [1], [2, 3], [4, 5], [6], [7]]  # S3 has no multi-range


def test_coalesce_merges_close_ranges_of_one_file_and_cuts_long_runs() -> None:
    starts = np.array([0, 100, 250, 10_000, 0], np.int64)
    plan = coalesce(np.array([0, 0, 0, 0, 1]), FILES, starts, starts + 50, gap=100, part=None)
    assert plan.keys == [FILES[0], FILES[0], FILES[1]]
    assert plan.starts.tolist() == [0, 10_000, 0] and plan.ends.tolist() == [300, 10_050, 50]
    assert plan.request.tolist() == [0, 0, 0, 1, 2]
    assert plan.offset.tolist() == [0, 100, 250, 0, 0]
    rows = np.arange(40, dtype=np.int64) * 1000  # contiguous rows of 1000 bytes
    cut = coalesce(np.zeros(40, np.int64), FILES, rows, rows + 1000, gap=0, part=8000)
    assert (cut.ends - cut.starts).tolist() == [8000] * 5
