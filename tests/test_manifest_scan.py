"""Reading only a year of a big manifest, and matching its paths without a regex per row.

A manifest written as upstream's ``s3scan`` writes it (pandas, tz-aware
timestamps, ``s3://`` URIs) over three years, in small row groups: a sync of
one year reads only that year's row groups and gets exactly the inventory a
full read filtered afterwards gives; rows under a second mirror base, under
a base that is not a URL, or without a year are still matched, refused and
named as before.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tessera_vz.core.dataset import Dataset
from tessera_vz.indexer.manifest import manifest_inventory
from tessera_vz.indexer.manifest_scan import _row_groups, same_paths
from tessera_vz.indexer.roots import SourceRoot
from tessera_vz.mirror.tree import tile_specs
from tessera_vz.testing.upstream import write_upstream_manifest

ROOT = SourceRoot("https://mirror.example.org/v1/")
CENTRES = [(1.05 + 0.1 * i, 50.05 + 0.1 * j) for i in range(6) for j in range(5)]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scan")
    specs = tile_specs(CENTRES, (2022, 2023, 2024), 2)
    path = write_upstream_manifest(root, specs, Dataset("1.0", "vultr"))
    # Rewrite in row groups of 10 rows, as a big manifest has many.
    pq.write_table(pq.read_table(path), path, row_group_size=10)
    return path


def test_one_year_reads_only_its_row_groups_and_equals_the_filtered_full_read(
    manifest: Path,
) -> None:
    pf = pq.ParquetFile(manifest)
    assert pf.metadata.num_row_groups == 9
    groups = _row_groups(pf, {2023})
    assert [g for g, _ in groups] == [3, 4, 5] and [s for _, s in groups] == [30, 40, 50]
    year, _ = manifest_inventory(pf, ROOT, years=[2023])
    every, _ = manifest_inventory(pq.read_table(manifest), ROOT)
    expect = every.filter(pc.equal(every.column("year"), 2023))
    assert year.num_rows == 30 and year.equals(expect)


def test_paths_under_other_bases_take_the_slow_match_and_keep_their_verdict() -> None:
    expect = pa.array(["2024/grid_1.05_50.05/grid_1.05_50.05.npy"] * 5)
    path = pa.array(
        [
            "s3://bucket/npy/v1/2024/grid_1.05_50.05/grid_1.05_50.05.npy",  # the base
            "https://other.example/x/2024/grid_1.05_50.05/grid_1.05_50.05.npy",  # another
            "2024/grid_1.05_50.05/grid_1.05_50.05.npy",  # relative, equal
            "ftp://bucket/npy/v1/2024/grid_1.05_50.05/grid_1.05_50.05.npy",  # not a URL form
            "s3://bucket/npy/v1/2024/grid_1.05_50.05/grid_1.15_50.05.npy",  # another tile
        ]
    )
    ok = pa.array([True] * 5).to_numpy(zero_copy_only=False)
    year = pa.array([2024] * 5, pa.int32())
    assert same_paths(path, expect, ok, year).to_pylist() == [True, True, True, False, False]


def test_a_bad_row_of_the_kept_year_is_refused_by_name_when_other_years_are_skipped(
    tmp_path: Path, manifest: Path
) -> None:
    table = pq.read_table(manifest)
    bad = table.column("grid_path").to_pylist()
    bad[75] = "s3://bucket/npy/v1/2024/grid_9.95_9.95/grid_9.95_9.95.npy"  # disagrees
    table = table.set_column(
        table.schema.get_field_index("grid_path"), "grid_path", pa.array(bad, pa.large_string())
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=10)
    tiles, failures = manifest_inventory(pq.ParquetFile(path), ROOT, years=[2024])
    assert tiles.num_rows == 29 and len(failures) == 1
    assert "do not match the row's year/lon/lat" in failures[0].reason
    lon, lat = table.column("lon")[75].as_py(), table.column("lat")[75].as_py()
    assert (failures[0].path, failures[0].year) == (bad[75], 2024)
    assert failures[0].tile == f"grid_{lon:.2f}_{lat:.2f}"


def test_datasets_come_from_row_group_statistics_and_filter_rows_alike(tmp_path: Path) -> None:
    from tessera_vz.indexer.datasets import _stat_pairs, manifest_datasets, row_filter

    specs = tile_specs(CENTRES, (2024,), 2)
    one = pq.read_table(write_upstream_manifest(tmp_path / "a", specs, Dataset("1.0", "vultr")))
    two = pq.read_table(write_upstream_manifest(tmp_path / "b", specs, Dataset("1.1", "cambridge")))
    path = tmp_path / "both.parquet"
    pq.write_table(pa.concat_tables([one, two]), path, row_group_size=30)  # one dataset a group
    pf = pq.ParquetFile(path)
    assert _stat_pairs(pf) == [("1.0", "vultr"), ("1.1", "cambridge")]
    assert manifest_datasets(pf) == {Dataset("1.0", "vultr"), Dataset("1.1", "cambridge")}
    tiles, _ = manifest_inventory(pf, ROOT, rows=row_filter(pf, Dataset("1.1", "cambridge")))
    assert tiles.num_rows == 30
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(pa.concat_tables([one, two]), mixed, row_group_size=45)  # a group of both
    assert _stat_pairs(pq.ParquetFile(mixed)) is None
    assert manifest_datasets(pq.ParquetFile(mixed)) == manifest_datasets(pf)
