"""``NpyParser``: a ``.npy`` file opens through Zarr exactly as ``np.load`` reads it.

The parser only reads the header; every chunk it declares must be a whole
run of rows of the file, within the byte budget, so that Zarr reads the
original bytes in place. Checked with hypothesis over shapes, dtypes, byte
orders and budgets, over local files and over HTTP (a real nginx).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from obspec_utils.registry import ObjectStoreRegistry
from obstore.store import HTTPStore, LocalStore
from virtualizarr.manifests import ManifestStore

from tessera_vz.core.errors import NpyFormatError
from tessera_vz.core.npy import PROBE_BYTES, parse_header
from tessera_vz.indexer.parser import NpyParser, row_chunk_ranges
from tessera_vz.testing.nginx import NginxServer
from tests.npyfiles import raw_header

BASE_DTYPES = [
    "b1",
    "i1",
    "u1",
    "i2",
    "u2",
    "i4",
    "u4",
    "i8",
    "u8",
    "f2",
    "f4",
    "f8",
    "c8",
    "c16",
]


def _local_registry() -> ObjectStoreRegistry:
    return ObjectStoreRegistry({"file://": LocalStore("/")})


def _open(store: ManifestStore) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False, zarr_format=3)


def _entries(store: ManifestStore, name: str) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Chunk shape and manifest entries of one array of a ManifestStore."""
    vds = store.to_virtual_dataset(loadable_variables=[])
    marr = vds[name].data
    return tuple(marr.metadata.chunk_grid.chunk_shape), marr.manifest.dict()


def _dtypes() -> st.SearchStrategy[np.dtype]:
    """Every supported dtype, little- and big-endian ('|' for one-byte types)."""
    return st.tuples(st.sampled_from(BASE_DTYPES), st.sampled_from("<>")).map(
        lambda t: np.dtype(t[1] + t[0])
    )


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(_dtypes())
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype, shape))


# Zero-length axes get chunks of 1 (Zarr's minimum) along them; VirtualiZarr warns.
@pytest.mark.filterwarnings("ignore:Variable.*chunk shape larger than their array shape")
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(array=_arrays(), budget=st.integers(min_value=1, max_value=4096))
def test_roundtrip_matches_np_load(array: np.ndarray, budget: int) -> None:
    """Any C-order numeric array reads back through xarray equal to np.load, in place."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arr.npy"
        np.save(path, array)
        expected = np.load(path)
        store = NpyParser(chunk_budget=budget)(f"file://{path}", _local_registry())
        ds = _open(store)
        got = ds["arr"].values
        assert got.shape == expected.shape
        assert got.dtype == expected.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got, expected)

        header = parse_header(path.read_bytes()[:PROBE_BYTES])
        chunks, entries = _entries(store, "arr")
        if array.ndim == 0:
            assert chunks == ()
            assert list(entries.values()) == [
                {"path": f"file://{path}", "offset": header.data_offset, "length": array.itemsize}
            ]
            return
        rows = chunks[0]
        row_nbytes = header.row_nbytes
        assert chunks[1:] == tuple(max(n, 1) for n in array.shape[1:])
        if array.size == 0:
            assert entries == {}
            return
        assert array.shape[0] % rows == 0, "chunks must be whole, equal runs of rows"
        assert rows == 1 or rows * row_nbytes <= budget
        assert len(entries) == array.shape[0] // rows
        for i in range(len(entries)):
            key = ".".join([str(i)] + ["0"] * (array.ndim - 1))
            entry = entries[key]
            assert entry["path"] == f"file://{path}"
            assert entry["length"] == rows * row_nbytes
            assert entry["offset"] == header.data_offset + i * rows * row_nbytes
        assert entries[key]["offset"] + entries[key]["length"] == path.stat().st_size


def test_rows_wider_than_the_budget_get_one_row_per_chunk(tmp_path: Path) -> None:
    """A budget smaller than one row still works: one row per chunk, never a split row."""
    path = tmp_path / "wide.npy"
    np.save(path, np.arange(4 * 300, dtype="<f8").reshape(4, 300))
    store = NpyParser(chunk_budget=100)(f"file://{path}", _local_registry())
    chunks, entries = _entries(store, "wide")
    assert chunks == (1, 300)
    assert len(entries) == 4
    assert {e["length"] for e in entries.values()} == {300 * 8}
    np.testing.assert_array_equal(_open(store)["wide"].values, np.load(path))


def test_largest_divisor_within_budget(tmp_path: Path) -> None:
    """Chunks are the largest divisor of the row count that fits the budget."""
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((12, 10), "|i1"))
    header = parse_header(path.read_bytes())
    for budget, rows in [(10, 1), (25, 2), (45, 4), (59, 4), (60, 6), (119, 6), (120, 12)]:
        grid, offsets, lengths = row_chunk_ranges(header, budget)
        assert grid == (12 // rows, 1)
        assert set(lengths.tolist()) == {rows * 10}
        assert offsets[0] == header.data_offset


def test_fortran_ordered_2d_array_is_refused(tmp_path: Path) -> None:
    """A Fortran-ordered matrix has no contiguous rows: NpyFormatError, nothing mapped."""
    path = tmp_path / "f.npy"
    np.save(path, np.asfortranarray(np.arange(12, dtype="<i4").reshape(3, 4)))
    with pytest.raises(NpyFormatError, match="Fortran order"):
        NpyParser()(f"file://{path}", _local_registry())


def test_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    """A pickled object array is refused and the message says unpickling is never done."""
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"x": 1}, [2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(NpyFormatError, match="unpickling"):
        NpyParser()(f"file://{path}", _local_registry())


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    """A file shorter than its header declares is refused before any chunk is mapped."""
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((10, 10), "<f4"))
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(NpyFormatError, match="truncated"):
        NpyParser()(f"file://{path}", _local_registry())


def test_variable_and_dimension_names(tmp_path: Path) -> None:
    """``variable_name``, ``dimension_names`` and ``attributes`` reach the Dataset."""
    path = tmp_path / "grid_0.85_49.95.npy"
    array = np.arange(2 * 3 * 4, dtype="|i1").reshape(2, 3, 4)
    np.save(path, array)
    parser = NpyParser(
        variable_name="embeddings",
        dimension_names=["y", "x", "band"],
        attributes={"proj:code": "EPSG:32631"},
    )
    ds = _open(parser(f"file://{path}", _local_registry()))
    assert list(ds.data_vars) == ["embeddings"]
    assert ds["embeddings"].dims == ("y", "x", "band")
    assert ds["embeddings"].attrs["proj:code"] == "EPSG:32631"
    np.testing.assert_array_equal(ds["embeddings"].values, array)


def test_defaults_are_file_stem_and_dim_n(tmp_path: Path) -> None:
    """Without options the array is named like the file and its axes dim_0, dim_1, …."""
    path = tmp_path / "scales.npy"
    np.save(path, np.ones((2, 5), "<f4"))
    ds = _open(NpyParser()(f"file://{path}", _local_registry()))
    assert list(ds.data_vars) == ["scales"]
    assert ds["scales"].dims == ("dim_0", "dim_1")


def test_dimension_name_count_mismatch(tmp_path: Path) -> None:
    """Two names for a 3-D array is a ValueError naming both counts."""
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((2, 3, 4), "|u1"))
    parser = NpyParser(dimension_names=("y", "x"))
    with pytest.raises(ValueError, match=r"3 dimensions .* 2 dimension names"):
        parser(f"file://{path}", _local_registry())


@pytest.mark.parametrize("budget", [0, -1])
def test_budget_must_be_positive(budget: int) -> None:
    """A non-positive chunk budget is refused when the parser is built."""
    with pytest.raises(ValueError, match="chunk_budget"):
        NpyParser(chunk_budget=budget)


def test_header_longer_than_the_probe(tmp_path: Path) -> None:
    """A header longer than the first ranged read is fetched in full, then parsed."""
    path = tmp_path / "long.npy"
    array = np.arange(6, dtype="<i2").reshape(2, 3)
    text = "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }" + " " * 900
    path.write_bytes(raw_header(text, version=2) + array.tobytes())
    header = parse_header(path.read_bytes())
    assert header.data_offset > PROBE_BYTES
    ds = _open(NpyParser()(f"file://{path}", _local_registry()))
    np.testing.assert_array_equal(ds["long"].values, array)


# -- over HTTP ----------------------------------------------------------------


def _http_registry(server: NginxServer) -> ObjectStoreRegistry:
    store = HTTPStore.from_url(server.url, client_options={"allow_http": True})
    return ObjectStoreRegistry({server.url: store})


@pytest.mark.parametrize(
    ("shape", "dtype"), [((64, 50, 16), "|i1"), ((3,), "|i1"), ((40, 30), ">f4")]
)
def test_http_header_is_one_small_ranged_get(
    tmp_path: Path, shape: tuple[int, ...], dtype: str
) -> None:
    """Over HTTP the parser makes exactly one ranged GET of <= 512 bytes; data reads work."""
    array = np.arange(math.prod(shape)).astype(dtype).reshape(shape)
    np.save(tmp_path / "tile.npy", array)
    with NginxServer(tmp_path) as server:
        store = NpyParser(chunk_budget=4096)(f"{server.url}tile.npy", _http_registry(server))
        log = server.requests(min_count=1)
        assert len(log) == 1, log
        (req,) = log
        assert req["method"] == "GET"
        assert req["uri"] == "/tile.npy"
        assert req["range"] is not None and req["range"].startswith("bytes=0-")
        assert req["status"] == 206
        assert req["body_bytes_sent"] <= PROBE_BYTES

        server.clear_log()
        got = _open(store)["tile"].values
        np.testing.assert_array_equal(got, array)
        data_reqs = server.requests(min_count=1)
        assert data_reqs, "the data must have been read from the server"
        assert all(r["range"] is not None for r in data_reqs), data_reqs
        assert sum(r["body_bytes_sent"] for r in data_reqs) >= array.nbytes


def test_http_long_header_costs_a_second_get(tmp_path: Path) -> None:
    """Only a header longer than the probe needs a second request, for exactly its length."""
    array = np.arange(6, dtype="<i2").reshape(2, 3)
    text = "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }" + " " * 900
    (tmp_path / "long.npy").write_bytes(raw_header(text, version=2) + array.tobytes())
    offset = parse_header((tmp_path / "long.npy").read_bytes()).data_offset
    with NginxServer(tmp_path) as server:
        store = NpyParser()(f"{server.url}long.npy", _http_registry(server))
        log = server.requests(min_count=2)
        assert [r["range"] for r in log] == [
            f"bytes=0-{PROBE_BYTES - 1}",
            f"bytes=0-{offset - 1}",
        ]
        np.testing.assert_array_equal(_open(store)["long"].values, array)


def test_http_missing_file_is_an_error(tmp_path: Path) -> None:
    """A 404 surfaces as an exception, never as an empty or made-up array."""
    with NginxServer(tmp_path) as server, pytest.raises(Exception, match=r"404|[Nn]ot [Ff]ound"):
        NpyParser()(f"{server.url}absent.npy", _http_registry(server))
