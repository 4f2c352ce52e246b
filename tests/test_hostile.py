"""Hostile manifests: nothing a manifest says makes the indexer read outside SOURCE.

``tests/test_inventory.py`` covers ``rebase`` piece by piece (escapes, other
schemes, absolute paths) and one row of each common defect. This file fills
the gaps: encoded and backslash traversal, URLs carrying credentials, queries
or other hosts, non-finite coordinates, duplicates spelled differently; and
an end-to-end run over nginx whose access log proves that every request
stayed inside the tree.

Decided behaviour: a manifest URL on another host (or ``file://``, ``s3://``)
is rebased onto SOURCE by its ``{year}/grid_…/file`` tail, since manifests
name whichever mirror built them; any other scheme is refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera_vz.core.layout import source_paths
from tessera_vz.indexer.manifest import from_manifest
from tessera_vz.indexer.roots import SourceRoot
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree

YEAR = 2024
NAME = "grid_0.85_49.95"
EMB, SCA = source_paths(YEAR, NAME)
ROOT = SourceRoot("http://127.0.0.1:1/tree/")

#: (grid_path, expected) — expected is "ok" (rebased exactly onto SOURCE) or a
#: fragment of the refusal reason.
HOSTILE_PATHS = [
    ("2024/%2e%2e/%2e%2e/etc/" + NAME + ".npy", "do not match"),
    ("2024/" + NAME + "/%2e%2e%2f%2e%2e%2fpasswd", "do not match"),
    ("2024\\..\\..\\" + NAME + "\\" + NAME + ".npy", "do not match"),
    (EMB + "\x00.txt", "do not match"),
    ("2024/" + NAME + "/../../../etc/passwd", "outside SOURCE"),
    ("/" + EMB, "absolute and outside SOURCE"),
    ("https://user:secret@evil.example:8443/x/" + EMB + "?next=../../etc#..", "ok"),
    ("file:///etc/" + EMB, "ok"),
    ("s3://someone-elses-bucket/" + EMB, "ok"),
    ("javascript:alert(1)//" + EMB, "unsupported scheme"),
    ("gopher://evil.example/" + EMB, "unsupported scheme"),
    ("HTTPS://EVIL.example/" + EMB, "ok"),
]


def _manifest(rows: list[dict[str, object]]) -> pa.Table:
    names = ["year", "lon", "lat", "grid_path", "scales_path"]
    types = [pa.int32(), pa.float64(), pa.float64(), pa.string(), pa.string()]
    return pa.table(
        {n: [r[n] for r in rows] for n in names},
        schema=pa.schema(list(zip(names, types, strict=True))),
    )


def _row(grid: str, scales: str = SCA, lon: float = 0.85, lat: float = 49.95) -> dict[str, object]:
    return {"year": YEAR, "lon": lon, "lat": lat, "grid_path": grid, "scales_path": scales}


@pytest.mark.parametrize(("grid", "expected"), HOSTILE_PATHS)
def test_hostile_manifest_paths(grid: str, expected: str) -> None:
    """Each hostile path is refused with a reason, or rebased exactly onto SOURCE."""
    tiles, failures = from_manifest(_manifest([_row(grid)]), ROOT)
    if expected == "ok":
        assert failures == []
        assert [(t.emb_path, t.scales_path) for t in tiles] == [(EMB, SCA)]
        assert ROOT.url_of(tiles[0].emb_path).startswith(ROOT.url)
    else:
        assert tiles == []
        (failure,) = failures
        assert expected in failure.reason, failure.reason
        assert failure.year == YEAR


@pytest.mark.parametrize(
    ("lon", "lat"),
    [(math.nan, 49.95), (0.85, math.nan), (math.inf, 49.95), (0.85, -math.inf), (200.0, 49.95)],
)
def test_non_finite_or_impossible_coordinates_are_refused(lon: float, lat: float) -> None:
    tiles, failures = from_manifest(_manifest([_row(EMB, lon=lon, lat=lat)]), ROOT)
    assert tiles == []
    assert "invalid coordinates" in failures[0].reason


def test_duplicates_spelled_differently_are_one_tile() -> None:
    """The same tile via a relative path, a ./ path and another mirror's URL: indexed once."""
    rows = [
        _row(EMB),
        _row("./" + EMB, "./" + SCA),
        _row("https://mirror.example/v1/" + EMB, "https://mirror.example/v1/" + SCA),
    ]
    tiles, failures = from_manifest(_manifest(rows), ROOT)
    assert [t.name for t in tiles] == [NAME]
    assert [f.reason for f in failures] == [
        "duplicate manifest row for this tile; kept the first"
    ] * 2


def test_scales_path_is_checked_as_strictly_as_grid_path() -> None:
    tiles, failures = from_manifest(_manifest([_row(EMB, "../../../etc/shadow")]), ROOT)
    assert tiles == [] and "outside SOURCE" in failures[0].reason


def test_indexing_a_hostile_manifest_stays_inside_the_tree(tmp_path: Path) -> None:
    """Over real nginx: hostile rows are refused or rebased; every request is a tile file."""
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=(0.8, 49.9, 1.0, 50.0), years=(YEAR,), bands=2, manifest=False)
    (tmp_path / "outside.npy").write_bytes(b"not yours")
    rows = [_row(s.emb_path, s.scales_path, s.lon, s.lat) for s in specs]
    rows += [_row(g) for g, _ in HOSTILE_PATHS]
    rows.append(_row("../outside.npy", "../outside.npy", lon=0.95, lat=49.95))
    pq.write_table(_manifest(rows), tmp_path / "manifest.parquet")
    with NginxServer(root) as server:
        report = run_index(
            IndexOptions(source=server.url, out=str(tmp_path / "out"),
                         manifest=str(tmp_path / "manifest.parquet"))
        )  # fmt: skip
        uris = [r["uri"] for r in server.requests()]
    doc = report.to_json()
    assert doc["indexed"] == len(specs) == 2
    expected_files = {"/" + p for s in specs for p in (s.emb_path, s.scales_path)}
    assert set(uris) == expected_files, uris
    refusals = [f["reason"] for f in doc["failed"]]
    assert sum("unsupported scheme" in r for r in refusals) == 2
    assert sum("outside SOURCE" in r for r in refusals) >= 3
