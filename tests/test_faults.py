"""Network faults on the wire, during indexing and during reads.

A :class:`FaultProxy` sits between the client and a real nginx and answers
chosen requests with a 503, a connection reset, a stall or a body shorter
than its ``Content-Length``. Transient faults must be retried away; faults
that persist must fail one tile (indexing) or one read (reading) with a clear
error naming the tile and the source URL, in bounded time, never a hang and
never wrong bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import ConfigurationError, SourceUnavailableError
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store, placement, range_plan
from tessera_vz.reader.store import dequantise
from tessera_vz.testing.faults import Fault, FaultProxy
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA

YEAR = 2024
BBOX = (0.8, 49.8, 1.0, 50.0)  # 2 x 2 cells in UTM zone 31 north


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("faults-tree")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=4)
    assert len(specs) == 4
    return root, specs


@pytest.fixture(scope="module")
def nginx(tree: tuple[Path, list[TileSpec]]) -> Iterator[NginxServer]:
    with NginxServer(tree[0]) as server:
        yield server


@pytest.fixture
def proxy(nginx: NginxServer, https: TestCA) -> Iterator[FaultProxy]:
    """An HTTPS mirror (the proxy ends TLS) whose faults are set per test."""
    with FaultProxy(nginx.url, tls=https) as p:
        yield p


def _opts(proxy: FaultProxy, root: Path, out: Path, **kw: Any) -> IndexOptions:
    return IndexOptions(
        source=proxy.url, out=str(out), manifest=str(root / "manifest.parquet"), **kw
    )


# -- the proxy itself -------------------------------------------------------


def test_proxy_passthrough_and_rule_counting(
    tree: tuple[Path, list[TileSpec]], proxy: FaultProxy
) -> None:
    """Passthrough is byte-exact; ``first`` and ``every`` pick the requests to break."""
    import urllib.error
    import urllib.request

    root, specs = tree
    path = specs[0].emb_path
    with urllib.request.urlopen(proxy.url + path, timeout=5) as resp:
        assert resp.read() == (root / path).read_bytes()
    proxy.set_faults([Fault("503", path=".npy", every=2)])
    codes = []
    for _ in range(4):
        try:
            with urllib.request.urlopen(proxy.url + path, timeout=5) as resp:
                codes.append(resp.status)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
    assert codes == [200, 503, 200, 503]
    with pytest.raises(ValueError, match="fault kind"):
        Fault("teapot")  # type: ignore[arg-type]


# -- indexing ---------------------------------------------------------------


def test_index_retries_transient_faults(
    tree: tuple[Path, list[TileSpec]], proxy: FaultProxy, tmp_path: Path
) -> None:
    """503s, resets and short bodies that clear within the retries index every tile."""
    root, specs = tree
    proxy.set_faults(
        [
            Fault("503", path=specs[0].name, first=2),
            Fault("reset", path=specs[1].name, first=1),
            Fault("short", path=specs[2].name, first=1),
            Fault("stall", path=specs[3].name, first=1, seconds=30),
        ]
    )
    t0 = time.perf_counter()
    report = run_index(_opts(proxy, root, tmp_path / "out", retries=3, timeout=1.0, backoff=0.05))
    elapsed = time.perf_counter() - t0
    doc = report.to_json()
    assert doc["failed"] == [], doc["failed"]
    assert doc["indexed"] == 4 and report.exit_code == 0
    kinds = sorted(r.fault or "" for r in proxy.faulted())
    assert kinds == ["503", "503", "reset", "short", "stall"]
    assert elapsed < 20
    store = open_store(str(tmp_path / "out"))
    for s in specs:
        ds = store.open_tile(s.lon, s.lat, YEAR)
        np.testing.assert_array_equal(ds.embeddings.values, np.load(root / s.emb_path))


def test_index_persistent_faults_fail_their_tiles_only(
    tree: tuple[Path, list[TileSpec]],
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tile whose source keeps failing is reported with its reason; the rest is committed."""
    root, specs = tree
    bad503, stalled = specs[0], specs[1]
    proxy.set_faults(
        [Fault("503", path=bad503.name), Fault("stall", path=stalled.name, seconds=60)]
    )
    out = tmp_path / "out"
    t0 = time.perf_counter()
    argv = ["index", proxy.url, "--out", str(out), "--manifest", str(root / "manifest.parquet")]
    code = cli_main([*argv, "--retries", "1", "--timeout", "1", "--json", "--quiet"])
    elapsed = time.perf_counter() - t0
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    failed = {f["tile"]: f for f in doc["failed"]}
    assert set(failed) == {bad503.name, stalled.name}
    assert "503" in failed[bad503.name]["reason"]
    assert "timed out" in failed[stalled.name]["reason"].lower() or "timeout" in (
        failed[stalled.name]["reason"].lower()
    )
    assert failed[bad503.name]["path"].startswith(proxy.url)
    assert doc["indexed"] == 2 and len(doc["commits"]) == 1
    # Two attempts of one second each per stalled file, both files in parallel.
    assert elapsed < 15, elapsed
    # Once the mirror recovers, the next run indexes exactly the two missing tiles.
    proxy.set_faults([])
    again = run_index(_opts(proxy, root, out)).to_json()
    assert again["indexed"] == 2 and again["unchanged"] == 2 and again["failed"] == []


def test_index_rejects_nonsense_retry_settings(
    tree: tuple[Path, list[TileSpec]], proxy: FaultProxy, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        run_index(_opts(proxy, tree[0], tmp_path / "out", timeout=0))
    assert not (tmp_path / "out").exists()


# -- reading ----------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(
    tree: tuple[Path, list[TileSpec]],
    nginx: NginxServer,
    tmp_path_factory: pytest.TempPathFactory,
    https: TestCA,
) -> Iterator[tuple[FaultProxy, Path]]:
    """An index whose recorded source is the proxy's HTTPS URL, so reads go through it."""
    out = tmp_path_factory.mktemp("faults-index")
    with FaultProxy(nginx.url, tls=https) as p:
        report = run_index(_opts(p, tree[0], out))
        assert report.exit_code == 0
        yield p, out


def _expected_point(root: Path, spec: TileSpec, row: int, col: int) -> np.ndarray:
    emb = np.load(root / spec.emb_path, mmap_mode="r")[row, col]
    scale = np.load(root / spec.scales_path, mmap_mode="r")[row, col]
    return dequantise(np.asarray(emb)[None, :], np.asarray(scale)[None, ...])[0]


@pytest.mark.parametrize("kind", ["503", "reset", "short", "stall"])
def test_read_persistent_fault_is_one_clear_error(
    tree: tuple[Path, list[TileSpec]], indexed: tuple[FaultProxy, Path], kind: str
) -> None:
    """A source that keeps failing raises SourceUnavailableError naming tile and URL, in time."""
    root, specs = tree
    proxy, out = indexed
    spec = specs[0]
    store = open_store(str(out), retries=1, timeout=1.0)
    loc = store.locate(spec.lon, spec.lat, YEAR)  # table reads do not touch the source
    proxy.set_faults([Fault(kind, path=".npy", seconds=60)])  # type: ignore[arg-type]
    try:
        t0 = time.perf_counter()
        with pytest.raises(SourceUnavailableError) as info:
            store.point(spec.lon, spec.lat, YEAR)
        elapsed = time.perf_counter() - t0
    finally:
        proxy.set_faults([])
    text = str(info.value)
    assert spec.name in text and proxy.url in text, text
    # retries=1: two attempts of at most one second each, plus backoff.
    assert elapsed < 6, elapsed
    # The same store reads correctly once the source recovers.
    got = store.point(spec.lon, spec.lat, YEAR)
    np.testing.assert_array_equal(got, _expected_point(root, spec, loc.row, loc.col))


@pytest.mark.parametrize("kind", ["503", "reset", "short"])
def test_read_transient_fault_is_retried(
    tree: tuple[Path, list[TileSpec]], indexed: tuple[FaultProxy, Path], kind: str
) -> None:
    """A fault that clears within the retries returns the right bytes."""
    root, specs = tree
    proxy, out = indexed
    spec = specs[1]
    store = open_store(str(out), retries=3, timeout=2.0)
    loc = store.locate(spec.lon, spec.lat, YEAR)
    proxy.set_faults([Fault(kind, path=".npy", first=2)])  # type: ignore[arg-type]
    try:
        got = store.point(spec.lon, spec.lat, YEAR)
        ds = store.open_tile(spec.lon, spec.lat, YEAR)
        proxy.set_faults([Fault(kind, path=".npy", first=2)])  # type: ignore[arg-type]
        emb = ds.embeddings.values
    finally:
        proxy.set_faults([])
    assert len(proxy.faulted()) >= 2
    np.testing.assert_array_equal(got, _expected_point(root, spec, loc.row, loc.col))
    np.testing.assert_array_equal(emb, np.load(root / spec.emb_path))


def _tile_bbox(spec: TileSpec) -> tuple[float, float, float, float]:
    """Most of a tile's cell: many rows and chunks, so read as merged ranges of its files."""
    return (spec.lon - 0.04, spec.lat - 0.04, spec.lon + 0.04, spec.lat + 0.04)


@pytest.mark.parametrize("kind", ["503", "reset", "short", "stall"])
def test_region_persistent_fault_is_one_clear_error(
    tree: tuple[Path, list[TileSpec]], indexed: tuple[FaultProxy, Path], kind: str
) -> None:
    """Windows read straight from the source fail the same way: named, bounded, no bytes."""
    _root, specs = tree
    proxy, out = indexed
    spec = specs[3]
    store = open_store(str(out), retries=1, timeout=1.0)
    expected = store.region(_tile_bbox(spec), YEAR)
    proxy.set_faults([Fault(kind, path=".npy", seconds=60)])  # type: ignore[arg-type]
    try:
        t0 = time.perf_counter()
        with pytest.raises(SourceUnavailableError) as info:
            store.region(_tile_bbox(spec), YEAR)
        elapsed = time.perf_counter() - t0
    finally:
        proxy.set_faults([])
    text = str(info.value)
    assert spec.name in text and proxy.url.rstrip("/") in text, text
    assert elapsed < 8, elapsed
    # Transient faults are retried away and give the same bytes.
    proxy.set_faults([Fault(kind, path=".npy", first=1)])  # type: ignore[arg-type]
    try:
        again = open_store(str(out), retries=3, timeout=2.0).region(_tile_bbox(spec), YEAR)
    finally:
        proxy.set_faults([])
    np.testing.assert_array_equal(again.embeddings.values, expected.embeddings.values)


def test_read_of_a_whole_tile_is_bounded_by_the_timeout(
    tree: tuple[Path, list[TileSpec]], indexed: tuple[FaultProxy, Path]
) -> None:
    """``open_tile`` (xarray over Icechunk) fails, not hangs, when the mirror stalls."""
    _root, specs = tree
    proxy, out = indexed
    spec = specs[2]
    store = open_store(str(out), retries=0, timeout=1.0)
    ds = store.open_tile(spec.lon, spec.lat, YEAR)
    proxy.set_faults([Fault("stall", path=".npy", seconds=60)])
    try:
        t0 = time.perf_counter()
        with pytest.raises(Exception, match=spec.name):
            ds.scales.values  # noqa: B018
        elapsed = time.perf_counter() - t0
    finally:
        proxy.set_faults([])
    assert elapsed < 10, elapsed


def test_read_policy_is_validated(indexed: tuple[FaultProxy, Path]) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        open_store(str(indexed[1]), timeout=-1)


@pytest.mark.parametrize("kind", ["503", "reset", "short"])
def test_windows_received_in_place_survive_cut_answers(
    tree: tuple[Path, list[TileSpec]],
    indexed: tuple[FaultProxy, Path],
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows received straight into the window: a cut answer is sent again and
    overwrites what it left, a persistent one is the same clear error."""
    _root, specs = tree
    proxy, out = indexed
    spec = specs[2]
    expected = open_store(str(out), direct_reads=False).region(_tile_bbox(spec), YEAR)
    # 4-band rows scaled like real ones (see test_direct._count_landings), and
    # read directly although this index's chunks are many rows tall.
    monkeypatch.setattr(placement, "_LAND", 0)
    monkeypatch.setattr(range_plan, "PART", 64 * 1024)
    landed: list[int] = []
    get_into = SourceFiles.get_into

    async def spy(self: SourceFiles, url: str, start: int, end: int, *args: Any) -> None:
        landed.append(end - start)
        await get_into(self, url, start, end, *args)

    monkeypatch.setattr(SourceFiles, "get_into", spy)
    rows = f"{spec.name}.npy"  # the tile's embeddings: pieces of rows that land in place
    proxy.set_faults([Fault(kind, path=rows, first=3)])  # type: ignore[arg-type]
    try:
        got = open_store(str(out), retries=3, timeout=2.0).region(_tile_bbox(spec), YEAR)
        assert landed
        assert [r for r in proxy.faulted() if "," not in (r.range or "")], proxy.faulted()
        proxy.set_faults([Fault(kind, path=rows)])  # type: ignore[arg-type]
        with pytest.raises(SourceUnavailableError, match=spec.name):
            open_store(str(out), retries=1, timeout=1.0).region(_tile_bbox(spec), YEAR)
    finally:
        proxy.set_faults([])
    np.testing.assert_array_equal(got.embeddings.values, expected.embeddings.values)


def test_open_zone_keeps_the_callers_read_options(
    tree: tuple[Path, list[TileSpec]], indexed: tuple[FaultProxy, Path]
) -> None:
    """A zone mosaic's tasks reopen the index with the options it was opened with:
    ``retries=0`` fails on the first 503 where the default policy retries it away."""
    _root, specs = tree
    proxy, out = indexed
    spec = specs[1]
    bbox = _tile_bbox(spec)
    expected = open_store(str(out)).region(bbox, YEAR)
    x, y = expected.x.values, expected.y.values
    pick = {"x": slice(x[0], x[-1]), "y": slice(y[0], y[-1])}
    try:
        proxy.set_faults([Fault("503", path=f"{spec.name}.npy", first=1)])
        strict = open_store(str(out), retries=0, timeout=2.0).open_zone(31, YEAR)
        with pytest.raises(SourceUnavailableError, match=spec.name):
            strict.sel(pick).embeddings.values  # noqa: B018
        proxy.set_faults([Fault("503", path=f"{spec.name}.npy", first=1)])
        patient = open_store(str(out), retries=2, timeout=2.0).open_zone(31, YEAR)
        np.testing.assert_array_equal(
            patient.sel(pick).embeddings.values, expected.embeddings.values
        )
    finally:
        proxy.set_faults([])
