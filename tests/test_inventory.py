"""Finding tiles: manifest rows and tree listings become tile sources, or named refusals.

A bad manifest row or a stray file must never stop an index run, nor lead it
to read outside SOURCE: each is refused with a reason the report shows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from obstore.store import LocalStore

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import source_paths
from tessera_vz.indexer.inventory import TileSource
from tessera_vz.indexer.listing import from_listing
from tessera_vz.indexer.manifest import from_manifest, read_manifest_table
from tessera_vz.indexer.report import Failure
from tessera_vz.indexer.roots import SourceRoot, rebase, source_root
from tessera_vz.testing.tiles import make_tree, write_manifest

EMB = "2024/grid_0.85_49.95/grid_0.85_49.95.npy"
SCA = "2024/grid_0.85_49.95/grid_0.85_49.95_scales.npy"
HTTP_ROOT = SourceRoot("https://tiles.example.org/v1/global/")


@pytest.fixture
def local_root(tmp_path: Path) -> SourceRoot:
    return source_root(str(tmp_path))


# -- rebase -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (EMB, EMB),
        ("./" + EMB, EMB),
        ("2024//grid_0.85_49.95/./grid_0.85_49.95.npy", EMB),
        ("2024/other/../grid_0.85_49.95/grid_0.85_49.95.npy", EMB),
    ],
)
def test_rebase_relative_paths(path: str, expected: str, local_root: SourceRoot) -> None:
    """Relative manifest paths are normalised and kept relative to SOURCE."""
    assert rebase(path, local_root) == expected
    assert rebase(path, HTTP_ROOT) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://mirror.example/tessera/v1/" + EMB,
        "http://127.0.0.1:8080/" + EMB,
        "s3://bucket/deep/prefix/" + EMB,
        "file:///mnt/other/tree/" + EMB,
    ],
)
def test_rebase_keeps_the_tail_of_mirror_urls(url: str, local_root: SourceRoot) -> None:
    """An absolute URL of another mirror is rebased onto SOURCE by its year/tile/file tail."""
    assert rebase(url, local_root) == EMB
    assert rebase(url, HTTP_ROOT) == EMB


@pytest.mark.parametrize(
    "path",
    [
        "../" + EMB,
        "2024/../../etc/passwd",
        "..",
        ".",
        "",
        "https://mirror.example/a/../../x",
        "https://mirror.example/2024/grid_0.85_49.95/..",
    ],
)
def test_rebase_refuses_escapes(path: str, local_root: SourceRoot) -> None:
    """A path resolving outside SOURCE is refused, never read."""
    with pytest.raises(ValueError, match="outside SOURCE"):
        rebase(path, local_root)


def test_rebase_refuses_urls_without_a_tile_tail(local_root: SourceRoot) -> None:
    """A URL too short to hold ``{year}/grid_…/file`` is refused with the expected form."""
    with pytest.raises(ValueError, match=r"does not end in \{year\}/grid_"):
        rebase("https://mirror.example/tile.npy", local_root)


def test_rebase_absolute_paths(tmp_path: Path, local_root: SourceRoot) -> None:
    """Absolute paths are accepted only inside a local SOURCE."""
    assert rebase(f"{tmp_path}/{EMB}", local_root) == EMB
    with pytest.raises(ValueError, match="absolute and outside SOURCE"):
        rebase("/etc/passwd", local_root)
    with pytest.raises(ValueError, match="absolute and outside SOURCE"):
        rebase(f"{tmp_path}-sibling/{EMB}", local_root)
    with pytest.raises(ValueError, match="absolute and outside SOURCE"):
        rebase(f"/{EMB}", HTTP_ROOT)


def test_rebase_absolute_path_under_a_root_needing_url_quoting(tmp_path: Path) -> None:
    """A SOURCE directory with a space in its name still recognises its own files."""
    spaced = tmp_path / "tessera tiles"
    spaced.mkdir()
    root = source_root(str(spaced))
    assert root.url.endswith("/tessera%20tiles/")
    assert root.local_path == f"{spaced}/"
    assert rebase(f"{spaced}/{EMB}", root) == EMB
    assert source_root(root.url) == root


@pytest.mark.parametrize("url", ["ftp://host/" + EMB, "gs://bucket/" + EMB, "data:,hello"])
def test_rebase_refuses_other_schemes(url: str, local_root: SourceRoot) -> None:
    """Only file, http(s) and s3 URLs can name a tile."""
    with pytest.raises(ValueError, match="unsupported scheme"):
        rebase(url, local_root)


# -- from_manifest ----------------------------------------------------------


def _table(rows: list[dict[str, object]]) -> pa.Table:
    """A manifest with the columns the inventory reads (plus one it ignores)."""
    names = ["version", "year", "lon", "lat", "grid_path", "scales_path"]
    return pa.table(
        {n: [r.get(n, "v1") for r in rows] for n in names},
        schema=pa.schema(
            [
                ("version", pa.string()),
                ("year", pa.int32()),
                ("lon", pa.float64()),
                ("lat", pa.float64()),
                ("grid_path", pa.string()),
                ("scales_path", pa.string()),
            ]
        ),
    )


def _row(year: int, lon: float, lat: float, prefix: str = "") -> dict[str, object]:
    emb, sca = source_paths(year, f"grid_{lon:.2f}_{lat:.2f}")
    return {
        "year": year,
        "lon": lon,
        "lat": lat,
        "grid_path": prefix + emb,
        "scales_path": prefix + sca,
    }


def _reason(failures: list[Failure], fragment: str) -> Failure:
    hits = [f for f in failures if fragment in f.reason]
    assert len(hits) == 1, (fragment, failures)
    return hits[0]


def test_from_manifest_accepts_good_rows_and_names_every_refusal(local_root: SourceRoot) -> None:
    """Good rows become tiles; each bad row is a failure with its reason, none stops the run."""
    good = [
        _row(2024, 0.85, 49.95),
        _row(2024, 0.95, 49.95, prefix="https://mirror.example/tessera/"),
        _row(2025, 0.85, 49.95),
        _row(2024, -0.05, -10.15),
    ]
    escaping = _row(2024, 0.75, 49.95, prefix="../")
    mismatched = _row(2024, 0.65, 49.95)
    mismatched["lon"] = 0.55
    nan_lon = _row(2024, 0.45, 49.95)
    nan_lon["lon"] = float("nan")
    no_scales = _row(2024, 0.35, 49.95)
    no_scales["scales_path"] = None
    table = _table([*good, good[0], escaping, mismatched, nan_lon, no_scales])

    tiles, failures = from_manifest(table, local_root)

    assert [(t.year, t.name) for t in tiles] == [
        (2024, "grid_0.85_49.95"),
        (2024, "grid_0.95_49.95"),
        (2025, "grid_0.85_49.95"),
        (2024, "grid_-0.05_-10.15"),
    ]
    assert tiles[0] == TileSource(2024, "grid_0.85_49.95", 0.85, 49.95, EMB, SCA)
    assert tiles[1].emb_path == "2024/grid_0.95_49.95/grid_0.95_49.95.npy"
    assert tiles[3].zone == 30
    assert len(failures) == 5
    dup = _reason(failures, "duplicate")
    assert (dup.year, dup.tile) == (2024, "grid_0.85_49.95")
    esc = _reason(failures, "outside SOURCE")
    assert esc.tile == "grid_0.75_49.95" and esc.path == escaping["grid_path"]
    mis = _reason(failures, "do not match")
    assert mis.tile == "grid_0.55_49.95" and "grid_0.65_49.95" in mis.reason
    nan = _reason(failures, "invalid coordinates")
    assert nan.year == 2024 and nan.path == nan_lon["grid_path"]
    _reason(failures, "lacks grid_path or scales_path")


@pytest.mark.parametrize(
    ("years", "zones", "expected"),
    [
        (None, None, {(2024, 31), (2025, 31), (2024, 30), (2024, 32)}),
        ({2024}, None, {(2024, 31), (2024, 30), (2024, 32)}),
        (None, {31}, {(2024, 31), (2025, 31)}),
        ({2025}, {30, 32}, set()),
        ({2024}, {30, 32}, {(2024, 30), (2024, 32)}),
    ],
)
def test_from_manifest_filters_years_and_zones(
    local_root: SourceRoot,
    years: set[int] | None,
    zones: set[int] | None,
    expected: set[tuple[int, int]],
) -> None:
    """Only the requested years and UTM zones are returned; filtered rows are not failures."""
    table = _table(
        [
            _row(2024, 0.85, 49.95),
            _row(2025, 0.85, 49.95),
            _row(2024, -0.05, 49.95),
            _row(2024, 6.05, 49.95),
        ]
    )
    tiles, failures = from_manifest(table, local_root, years=years, zones=zones)
    assert {(t.year, t.zone) for t in tiles} == expected
    assert failures == []


def test_from_manifest_requires_the_upstream_columns(local_root: SourceRoot) -> None:
    """A table without the manifest columns is a configuration error naming them."""
    table = pa.table({"year": [2024], "lon": [0.85]})
    with pytest.raises(ConfigurationError, match="lat"):
        from_manifest(table, local_root)


def test_from_manifest_of_a_generated_tree(tmp_path: Path) -> None:
    """The generator's upstream-schema manifest (absolute mirror URLs) lists every tile."""
    specs = make_tree(
        tmp_path,
        bbox=(0.72, 49.82, 0.98, 49.98),
        bands=2,
        manifest=True,
        url_base="https://mirror.example/v1/",
    )
    table = read_manifest_table(str(tmp_path / "manifest.parquet"))
    tiles, failures = from_manifest(table, source_root(str(tmp_path)))
    assert failures == []
    assert sorted((t.year, t.name, t.emb_path, t.scales_path) for t in tiles) == sorted(
        (s.year, s.name, s.emb_path, s.scales_path) for s in specs
    )


# -- from_listing -----------------------------------------------------------


@pytest.fixture(scope="module")
def listed_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("listed")
    specs = make_tree(
        root, bbox=(0.7, 49.8, 1.0, 50.0), years=(2024, 2025), bands=2, manifest=False
    )
    (root / "README.txt").write_text("not a year")
    (root / "2024" / "notes.txt").write_text("stray")
    (root / "2024" / specs[0].name / "thumbnail.png").write_bytes(b"\x89PNG")
    return root, specs


@pytest.mark.parametrize(
    ("years", "zones"),
    [(None, None), ({2024}, None), ({2025}, {31}), (None, {31}), ({2023}, None)],
)
def test_from_listing_finds_every_tile(
    listed_tree: tuple[Path, list], years: set[int] | None, zones: set[int] | None
) -> None:
    """Listing a tree finds exactly the tiles present for the wanted years and zones."""
    root, specs = listed_tree
    tiles, failures = from_listing(LocalStore(str(root)), years=years, zones=zones)
    expected = {
        (s.year, s.name, s.emb_path, s.scales_path)
        for s in specs
        if (years is None or s.year in years) and (zones is None or 31 in zones)
    }
    assert {(t.year, t.name, t.emb_path, t.scales_path) for t in tiles} == expected
    assert len(tiles) == len(expected)
    assert failures == []
    if years is None and zones is None:
        assert len(tiles) == 2 * 3 * 2  # 3 x 2 cells, two years


def test_from_listing_zone_filter_excludes(listed_tree: tuple[Path, list]) -> None:
    """Tiles outside the requested zones are left out, not reported."""
    root, _specs = listed_tree
    assert from_listing(LocalStore(str(root)), zones={30, 32}) == ([], [])


def test_from_listing_reports_orphan_scales(tmp_path: Path) -> None:
    """A scales file whose embeddings were deleted is reported, not indexed."""
    specs = make_tree(tmp_path, bbox=(0.7, 49.8, 1.0, 50.0), years=(2024,), bands=2, manifest=False)
    orphan = specs[2]
    (tmp_path / orphan.emb_path).unlink()
    tiles, failures = from_listing(LocalStore(str(tmp_path)))
    assert len(tiles) == len(specs) - 1
    assert orphan.name not in {t.name for t in tiles}
    assert failures == [
        Failure(
            2024,
            orphan.name,
            orphan.emb_path,
            "embeddings file is missing (only the scales file exists)",
        )
    ]


# -- read_manifest_table ----------------------------------------------------


def test_read_manifest_table_missing_file(tmp_path: Path) -> None:
    """A missing manifest is a configuration error (CLI exit 2) naming the file."""
    missing = tmp_path / "nope" / "manifest.parquet"
    with pytest.raises(ConfigurationError) as info:
        read_manifest_table(str(missing))
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(missing) in message
    assert "manifest.parquet with columns" in message


def test_read_manifest_table_not_parquet(tmp_path: Path) -> None:
    """A file that is not Parquet is a configuration error too, not a traceback."""
    bogus = tmp_path / "manifest.parquet"
    bogus.write_text("year,lon,lat\n2024,0.85,49.95\n")
    with pytest.raises(ConfigurationError, match="cannot read manifest"):
        read_manifest_table(str(bogus))


def test_read_manifest_table_from_a_file_url(tmp_path: Path) -> None:
    """``file://`` URLs (percent-encoded, as ``Path.as_uri`` writes them) are read too."""
    spaced = tmp_path / "my tiles"
    spaced.mkdir()
    path = write_manifest(spaced, [])
    table = read_manifest_table(path.as_uri())
    assert table.num_rows == 0
    assert pq.read_schema(path).names == table.column_names
