"""The HTTP boundary against servers that lie: exact bytes or a clear error, never other data.

A small tree is indexed over HTTPS from :class:`~tessera_vz.testing.liar.LiarProcess`
while it is honest; then the server misbehaves in one way per test and the
reader's three kinds of read (a point: two single ranges; a cluster of points:
multi-range requests; a window: long single ranges received into the window,
and multi-range wedges) must either return the values of the source files
or raise :class:`SourceUnavailableError` / :class:`SourceChangedError`
naming the tile and the URL, within the retry policy's time, with memory
bounded by what was asked.
"""

from __future__ import annotations

import shutil
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import pytest
import zarr

from tessera_vz.core.errors import (
    ConfigurationError,
    SourceChangedError,
    SourceUnavailableError,
)
from tessera_vz.core.layout import repo_name
from tessera_vz.core.urls import check_root, join
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore
from tessera_vz.testing.liar import LiarProcess, Scenario
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA

from .test_reader import _check_region, expected_at

YEAR = 2024
ZONE = 31
BBOX = (0.8, 49.8, 1.0, 50.0)  # 2 x 2 cells in UTM zone 31 north
ONE_ROW = 1024  # chunk budget below one row of a 4-band tile


@pytest.fixture(scope="module")
def lying(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[dict[str, Any]]:
    """A tree served over HTTPS by a liar (honest while indexing), and its index."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SSL_CERT_FILE", str(test_ca.ca_cert))
    root = tmp_path_factory.mktemp("liar-tree")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=4)
    out = tmp_path_factory.mktemp("liar-index")
    # In child processes, so tracemalloc measures the reader alone.
    with LiarProcess(root, tls=test_ca) as liar, LiarProcess(root, tls=test_ca) as other:
        report = run_index(
            IndexOptions(source=liar.url, out=str(out), manifest=str(root / "manifest.parquet"),
                         chunk_budget=ONE_ROW)
        )  # fmt: skip
        assert report.exit_code == 0, report.failed
        yield {
            "root": root, "out": out, "liar": liar, "other": other,
            "specs": {(s.year, s.name): s for s in specs}, "list": specs,
        }  # fmt: skip
    mp.undo()


def _store(lying: dict[str, Any], **kwargs: Any) -> TesseraStore:
    kwargs.setdefault("retries", 1)
    kwargs.setdefault("timeout", 1.5)
    return open_store(str(lying["out"]), **kwargs)


def _tile_bbox(spec: TileSpec) -> tuple[float, float, float, float]:
    return (spec.lon - 0.04, spec.lat - 0.04, spec.lon + 0.04, spec.lat + 0.04)


def _reads(lying: dict[str, Any], store: TesseraStore) -> dict[str, Callable[[], Any]]:
    """The three kinds of read, each checking its values against the source formula."""
    specs = lying["list"]
    spec = specs[1]
    rng = np.random.default_rng(7)
    lons = specs[2].lon + rng.normal(0, 0.002, 80)
    lats = specs[2].lat + rng.normal(0, 0.0015, 80)

    def point() -> None:
        got = store.point(spec.lon, spec.lat, YEAR)
        np.testing.assert_array_equal(got, expected_at(lying["specs"], YEAR, spec.lon, spec.lat))

    def cluster() -> None:
        got = store.points(lons, lats, YEAR, gap=64)
        for i in range(lons.size):
            want = expected_at(lying["specs"], YEAR, lons[i], lats[i])
            np.testing.assert_array_equal(got[i], want)

    def window() -> None:
        ds = store.region((0.86, 49.86, 0.94, 49.94), YEAR)  # four tiles, edges and corners
        assert _check_region(lying, ds, YEAR, every=4) > 500

    return {"point": point, "cluster": cluster, "window": window}


@pytest.fixture
def liar(lying: dict[str, Any]) -> Iterator[LiarProcess]:
    server: LiarProcess = lying["liar"]
    server.set_scenario(Scenario.HONEST)
    server.clear_log()
    yield server
    server.set_scenario(Scenario.HONEST)


KINDS = ("point", "cluster", "window")

#: Lies that must end in an error (class, fragment of the reason), whatever the read.
ERRORS: dict[Scenario, tuple[type[Exception], str]] = {
    Scenario.HUGE_CONTENT_LENGTH: (SourceUnavailableError, "Content-Length"),
    Scenario.WRONG_CONTENT_RANGE: (SourceUnavailableError, "asked for bytes|no part with bytes"),
    Scenario.LONG_BODY: (SourceUnavailableError, ""),
    Scenario.SHORT_BODY: (SourceUnavailableError, "cut short"),
    Scenario.RESET_MID_BODY: (SourceUnavailableError, ""),
    Scenario.CHUNKED_ENDLESS: (SourceUnavailableError, "runs past"),
    Scenario.GZIP: (SourceUnavailableError, "Content-Encoding"),
    Scenario.GZIP_LYING: (SourceUnavailableError, "Content-Encoding"),
    Scenario.TRICKLE: (SourceUnavailableError, "timed out"),
    Scenario.STALL_HEADERS: (SourceUnavailableError, "timed out"),
    Scenario.REDIRECT_OTHER_ORIGIN: (SourceUnavailableError, "not authorised"),
    Scenario.REDIRECT_LOOP: (SourceUnavailableError, "redirects"),
    Scenario.FULL_200: (SourceUnavailableError, "ignores Range"),
    Scenario.FULL_200_HUGE: (SourceUnavailableError, "ignores Range"),
    Scenario.HEADER_FLOOD: (SourceUnavailableError, "malformed HTTP answer"),
    Scenario.BAD_STATUS_LINE: (SourceUnavailableError, ""),
    Scenario.HTTP09: (SourceUnavailableError, ""),
    Scenario.WRONG_TOTAL: (SourceChangedError, "when indexed"),
    Scenario.STATUS_500: (SourceUnavailableError, "HTTP 500"),
    Scenario.STATUS_503: (SourceUnavailableError, "HTTP 503"),
    Scenario.STATUS_416: (SourceChangedError, "shorter than when it was indexed"),
}
#: Lies about multipart answers only: single ranges are answered honestly.
MULTIPART_ERRORS = {
    Scenario.DUPLICATE_PART: "overlap",
    Scenario.OVERLAPPING_PARTS: "overlap",
    Scenario.EXTRA_PART: "none of the ranges asked",
    Scenario.MISSING_PART: "no part with bytes",
}
#: Answers that are odd but legitimate: the values must come back exactly.
HONEST_ENOUGH = (
    Scenario.HONEST,
    Scenario.MERGED_PARTS,
    Scenario.REORDERED_PARTS,
    Scenario.CHUNKED,
    Scenario.NO_CONTENT_LENGTH_CLOSE,
    Scenario.REDIRECT_SAME_ORIGIN,
    Scenario.IGNORE_PRECONDITIONS,
    Scenario.BAD_VALIDATORS,
)


@pytest.mark.parametrize("scenario", HONEST_ENOUGH)
@pytest.mark.parametrize("kind", KINDS)
def test_legitimate_answers_read_exactly(
    lying: dict[str, Any], liar: LiarProcess, scenario: Scenario, kind: str
) -> None:
    knobs = {"piece": 4096, "interval": 0.0} if scenario is Scenario.CHUNKED else {}
    liar.set_scenario(scenario, **knobs)
    _reads(lying, _store(lying))[kind]()
    assert any(r.scenario is scenario for r in liar.requests()) or scenario in (
        Scenario.MERGED_PARTS,
        Scenario.REORDERED_PARTS,
    )


def _fails(
    lying: dict[str, Any], kind: str, cls: type[Exception], fragment: str, **store_kw: Any
) -> BaseException:
    """Run a read that must fail; check the error names a tile and a URL of the liar."""
    store = _store(lying, **store_kw)
    with pytest.raises(cls) as caught:
        _reads(lying, store)[kind]()
    text = str(caught.value)
    assert any(f in text for f in fragment.split("|")), text
    assert lying["liar"].url in text, text
    assert any(s.name in text for s in lying["list"]), text
    return caught.value


@pytest.mark.parametrize("scenario", list(ERRORS))
@pytest.mark.parametrize("kind", KINDS)
def test_lies_are_errors_never_data(
    lying: dict[str, Any], liar: LiarProcess, scenario: Scenario, kind: str
) -> None:
    cls, fragment = ERRORS[scenario]
    knobs: dict[str, Any] = {}
    if scenario is Scenario.REDIRECT_OTHER_ORIGIN:
        knobs["redirect_to"] = lying["other"].url
    if scenario is Scenario.CHUNKED_ENDLESS:
        knobs.update(piece=64 * 1024, interval=0.0)
    if scenario is Scenario.TRICKLE:
        knobs.update(interval=1.0)  # a 4-byte point outlasts the 1.5 s limit
    liar.set_scenario(scenario, **knobs)
    lying["other"].clear_log()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        _fails(lying, kind, cls, fragment)
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Bounded: retries=1 and timeout=1.5 s per attempt, whatever the server claims.
    assert elapsed < 12, elapsed
    assert peak < 64 << 20, peak
    if scenario is Scenario.REDIRECT_OTHER_ORIGIN:
        assert lying["other"].requests() == []  # never contacted


@pytest.mark.parametrize("scenario", list(MULTIPART_ERRORS))
def test_multipart_lies_are_errors_never_data(
    lying: dict[str, Any], liar: LiarProcess, scenario: Scenario
) -> None:
    liar.set_scenario(scenario)
    _fails(lying, "cluster", SourceUnavailableError, MULTIPART_ERRORS[scenario])
    assert any(r.scenario is scenario for r in liar.requests())
    liar.set_scenario(scenario)
    _reads(lying, _store(lying))["point"]()  # single ranges are answered honestly


@pytest.mark.parametrize(
    "scenario", [Scenario.SHORT_BODY, Scenario.RESET_MID_BODY, Scenario.STATUS_503]
)
@pytest.mark.parametrize("kind", KINDS)
def test_transient_faults_are_retried_to_the_same_bytes(
    lying: dict[str, Any], liar: LiarProcess, scenario: Scenario, kind: str
) -> None:
    liar.set_scenario(scenario, first=2)
    _reads(lying, _store(lying, retries=3))[kind]()
    assert sum(r.scenario is scenario for r in liar.requests()) == 2


def test_a_redirect_to_an_authorised_origin_is_followed(
    lying: dict[str, Any], liar: LiarProcess
) -> None:
    """A mirror that sends reads to a CDN works once the user authorises the CDN too."""
    other: LiarProcess = lying["other"]
    liar.set_scenario(Scenario.REDIRECT_OTHER_ORIGIN, redirect_to=other.url)
    other.clear_log()
    store = _store(lying, allowed_sources=[liar.url, other.url])
    for read in _reads(lying, store).values():
        read()
    assert other.requests(), "the CDN served the bytes"


def test_changed_file_behind_a_server_that_ignores_preconditions_fails_by_size(
    lying: dict[str, Any], liar: LiarProcess, tmp_path: Path
) -> None:
    """Without 412s, a re-uploaded file of another size is still caught: every 206
    names the file's size, and the index recorded the old one."""
    spec = lying["list"][1]
    path = lying["root"] / spec.emb_path
    saved = tmp_path / "saved.npy"
    shutil.copy2(path, saved)
    try:
        with path.open("ab") as f:
            f.write(b"\0" * 4096)
        liar.set_scenario(Scenario.IGNORE_PRECONDITIONS)
        with pytest.raises(SourceChangedError, match=spec.name):
            _store(lying).point(spec.lon, spec.lat, YEAR)
    finally:
        shutil.copy2(saved, path)


def test_every_request_asks_identity_and_joins_one_slash(
    lying: dict[str, Any], liar: LiarProcess
) -> None:
    for read in _reads(lying, _store(lying)).values():
        read()
    requests = liar.requests()
    assert requests
    for r in requests:
        assert r.header("Accept-Encoding") == "identity", r.headers
        assert "//" not in r.target, r.target
        assert r.header("Range"), r.headers
        precondition = r.header("If-Unmodified-Since") or r.header("If-Match")
        assert precondition and "\r" not in precondition and "\n" not in precondition


def test_join_and_roots() -> None:
    assert join("https://m.org/tessera/", "2024/a b/x#1.npy") == (
        "https://m.org/tessera/2024/a%20b/x%231.npy"
    )
    assert join("https://m.org/tessera", "2024/x.npy") == "https://m.org/tessera/2024/x.npy"
    assert check_root("https://m.org/tessera//") == "https://m.org/tessera/"
    for bad in ("a/../b", "/abs", "a//b", "a/./b", "a\r\nb", ""):
        with pytest.raises(ValueError):
            join("https://m.org/", bad)
    for root in ("https://user:secret@m.org/", "https://m.org/?q=1", "gopher://m.org/"):
        with pytest.raises(ConfigurationError) as caught:
            check_root(root)
        assert "secret" not in str(caught.value)


def test_credentials_in_a_source_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="credentials") as caught:
        run_index(IndexOptions(source="https://tess:hunter2@127.0.0.1:1/", out=str(tmp_path)))
    assert "hunter2" not in str(caught.value)


def _craft(out: Path, where: Path, tile: str, column: str, value: str) -> None:
    """Copy an index and overwrite one cell of its 2024 tiles table."""
    shutil.copytree(out, where)
    repo = ic.Repository.open(ic.local_filesystem_storage(str(where / repo_name(ZONE))))
    session = repo.writable_session(str(YEAR))
    group = zarr.open_group(session.store, path="tiles", mode="r+")
    names = [str(n) for n in group["tile"][:]]
    col = group[column]
    data = col[:]
    data[names.index(tile)] = value
    col[:] = data
    session.commit("craft one value")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("emb_checksum", "2024\r\nX-Evil: 1 Z"),  # header injection, as long as a date
        ("emb_path", "../../../etc/passwd"),
        ("scales_descr", "<f8"),
    ],
)
def test_hostile_values_in_a_repository_fail_their_tile_unsent(
    lying: dict[str, Any], liar: LiarProcess, tmp_path: Path, column: str, value: str
) -> None:
    spec, good = lying["list"][0], lying["list"][3]
    crafted = tmp_path / "crafted"
    _craft(lying["out"], crafted, spec.name, column, value)
    # A copy is not the user's own index: its mirror on loopback needs permission.
    store = open_store(str(crafted), retries=1, timeout=1.5, allow_private_sources=True)
    with pytest.raises(SourceUnavailableError, match=spec.name) as caught:
        store.point(spec.lon, spec.lat, YEAR)
    assert "no indexer writes" in str(caught.value)
    assert not [r for r in liar.requests() if spec.name in r.target]  # never sent
    np.testing.assert_array_equal(  # the other tiles read as before
        store.point(good.lon, good.lat, YEAR),
        expected_at(lying["specs"], YEAR, good.lon, good.lat),
    )


@pytest.mark.parametrize(
    ("scenario", "knobs", "indexed"),
    [
        (Scenario.BAD_VALIDATORS, {"validators": "control"}, False),
        (Scenario.BAD_VALIDATORS, {"validators": "bad_date"}, False),
        (Scenario.BAD_VALIDATORS, {"validators": "long"}, False),  # 8 KiB header refused
        (Scenario.BAD_VALIDATORS, {"validators": "weak"}, True),
        (Scenario.WRONG_CONTENT_RANGE, {}, False),
        (Scenario.HUGE_CONTENT_LENGTH, {}, False),
        (Scenario.GZIP, {}, False),
        (Scenario.REDIRECT_OTHER_ORIGIN, {}, False),
    ],
)
def test_header_probes_go_through_the_boundary(
    lying: dict[str, Any],
    liar: LiarProcess,
    tmp_path: Path,
    scenario: Scenario,
    knobs: dict[str, Any],
    indexed: bool,
) -> None:
    """An index run through a lying mirror fails tiles with reasons, never records a lie."""
    if scenario is Scenario.REDIRECT_OTHER_ORIGIN:
        knobs = {"redirect_to": lying["other"].url}
    liar.set_scenario(scenario, **knobs)
    root = lying["root"]
    opts = IndexOptions(
        source=liar.url, out=str(tmp_path / "idx"), manifest=str(root / "manifest.parquet"),
        retries=1, timeout=2.0,
    )  # fmt: skip
    report = run_index(opts)
    if indexed:
        assert report.exit_code == 0, report.failed
        liar.set_scenario(Scenario.HONEST)
        store = open_store(str(tmp_path / "idx"))
        spec = lying["list"][0]
        np.testing.assert_array_equal(
            store.point(spec.lon, spec.lat, YEAR),
            expected_at(lying["specs"], YEAR, spec.lon, spec.lat),
        )
        for value in store.tiles(YEAR, ZONE)["emb_checksum"].values.tolist():
            assert value.isprintable()
        return
    assert report.exit_code == 1
    assert len(report.failed) == len(lying["list"])
    assert all(f.reason for f in report.failed)


def test_a_window_over_https_lands_the_same_bytes_as_icechunk(lying: dict[str, Any]) -> None:
    """The direct path and Icechunk's own virtual-chunk fetches agree, over TLS."""
    spec = lying["list"][0]
    ours = _store(lying).region(_tile_bbox(spec), YEAR, dequantise=False)
    theirs = _store(lying, direct_reads=False).region(_tile_bbox(spec), YEAR, dequantise=False)
    np.testing.assert_array_equal(ours.embeddings.values, theirs.embeddings.values)
    np.testing.assert_array_equal(ours.scales.values, theirs.scales.values)
