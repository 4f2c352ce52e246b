"""The ``.npy`` header parser: exact facts for good files, a clear refusal for bad ones.

The index records byte offsets computed from these headers, so a wrong
description would silently map the wrong bytes. Every refusal must be an
:class:`NpyFormatError` (also a ``ValueError``), bounded in time and memory,
and must never evaluate, import or unpickle anything.
"""

from __future__ import annotations

import contextlib
import io
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera_vz.core.errors import NpyFormatError, TesseraError
from tessera_vz.core.npy import (
    MAGIC,
    MAX_HEADER_BYTES,
    NpyHeader,
    check_size,
    header_length,
    parse_header,
)
from tests.npyfiles import raw_header

GOOD_DICT = "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 4), }"


def _npy_bytes(array: np.ndarray, version: tuple[int, int]) -> bytes:
    """``array`` as numpy writes it with the given format version."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def _numpy_offset(data: bytes) -> int:
    """Where ``np.load`` starts reading data: after numpy's own header reader."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(f)
    else:
        np.lib.format.read_array_header_2_0(f)
    return f.tell()


def _preamble(version: int, length: int) -> bytes:
    """Magic, version and a declared header-dict length, with no dict after it."""
    width = "<H" if version == 1 else "<I"
    return MAGIC + bytes([version, 0]) + struct.pack(width, length)


def _refused(prefix: bytes, *fragments: str) -> NpyFormatError:
    """Parse ``prefix``, expect a refusal whose message holds every fragment."""
    with pytest.raises(NpyFormatError) as info:
        parse_header(prefix)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


# -- headers numpy writes ---------------------------------------------------


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        ("<i4", (3, 4)),
        (">f8", (2, 3, 5)),
        ("|i1", (7, 9, 128)),
        ("<f4", ()),
        ("|b1", (0, 5)),
        ("<c16", (4,)),
    ],
)
def test_numpy_headers_parse_to_the_facts_np_load_uses(
    version: tuple[int, int], dtype: str, shape: tuple[int, ...]
) -> None:
    """A header numpy wrote (any version) gives numpy's dtype, shape and data offset."""
    array = np.zeros(shape, dtype=np.dtype(dtype))
    data = _npy_bytes(array, version)
    header = parse_header(data)
    assert isinstance(header, NpyHeader)
    assert header.version == version
    assert header.dtype == np.dtype(dtype)
    assert header.dtype.byteorder == np.dtype(dtype).byteorder
    assert header.shape == shape
    assert header.fortran_order is False
    assert header.data_offset == _numpy_offset(data)
    assert header.data_offset % 64 == 0
    assert header_length(data) == header.data_offset
    assert header.nbytes == array.nbytes
    assert header.data_offset + header.nbytes == len(data)
    check_size(header, len(data))


def test_row_nbytes_is_the_stride_of_the_first_axis() -> None:
    """``row_nbytes`` is how far apart consecutive rows sit in the file."""
    array = np.zeros((5, 7, 3), dtype="<f4")
    header = parse_header(_npy_bytes(array, (1, 0)))
    assert header.row_nbytes == array.strides[0] == 7 * 3 * 4


def test_header_length_needs_only_the_preamble() -> None:
    """A caller learns the full header size from the first 10/12 bytes alone."""
    data = _npy_bytes(np.zeros((2, 2), "<i2"), (2, 0))
    assert header_length(data[:12]) == parse_header(data).data_offset


def test_fortran_order_allowed_for_one_dimension() -> None:
    """A 1-D array is contiguous either way, so a Fortran flag is harmless."""
    data = raw_header("{'descr': '<u2', 'fortran_order': True, 'shape': (6,), }")
    header = parse_header(data)
    assert header.fortran_order is True
    assert header.shape == (6,)


# -- refusals ---------------------------------------------------------------


def test_error_class_is_a_value_error() -> None:
    """Callers catching ``ValueError`` (or our base class) catch header errors too."""
    assert issubclass(NpyFormatError, ValueError)
    assert issubclass(NpyFormatError, TesseraError)
    with pytest.raises(ValueError):
        parse_header(b"PK\x03\x04 this is a zip file")


@pytest.mark.parametrize(
    "prefix", [b"", b"\x93NUM", b"\x93numpy\x01\x00", b"GIF89a\x01\x00\x00\x00", b"\x00" * 128]
)
def test_wrong_magic(prefix: bytes) -> None:
    """Something that is not a .npy file is named as such, with what was found."""
    _refused(prefix, "not a .npy file", "magic")


@pytest.mark.parametrize("major, minor", [(0, 0), (4, 0), (1, 1), (2, 5), (255, 255)])
def test_unsupported_version(major: int, minor: int) -> None:
    """Only versions 1.0, 2.0 and 3.0 exist; the message says which were found."""
    data = bytearray(raw_header(GOOD_DICT))
    data[6:8] = bytes([major, minor])
    _refused(bytes(data), f"version {major}.{minor}", "1.0, 2.0 or 3.0")


def test_magic_without_version() -> None:
    """Six magic bytes and nothing else is a truncated file."""
    _refused(MAGIC + b"\x01", "truncated")


@pytest.mark.parametrize("version, keep", [(1, 8), (1, 9), (2, 10), (2, 11), (3, 11)])
def test_truncated_preamble(version: int, keep: int) -> None:
    """A file cut inside the length field is reported as truncated, not misread."""
    data = raw_header(GOOD_DICT, version)[:keep]
    _refused(data, "truncated", "preamble")
    with pytest.raises(NpyFormatError, match="truncated"):
        header_length(data)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_truncated_header(version: int) -> None:
    """A header dict shorter than its declared length is refused with both sizes."""
    data = raw_header(GOOD_DICT, version)
    cut = data[: len(data) - 20]
    _refused(cut, "truncated", f"declared {len(data)}", f"found {len(cut)}")


@pytest.mark.parametrize("length", [0xFFFF_FFFF, 1 << 31, MAX_HEADER_BYTES + 1])
def test_huge_declared_header_is_refused_without_allocating(length: int) -> None:
    """A 4 GB header length is refused at once: no large read, no large allocation."""
    prefix = _preamble(2, length) + b"{" * 100
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(NpyFormatError) as info:
            header_length(prefix)
        with pytest.raises(NpyFormatError):
            parse_header(prefix)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 1 << 20
    assert str(length) in str(info.value)
    assert "limit" in str(info.value)


def test_non_literal_header_is_never_executed(tmp_path: Path) -> None:
    """A header holding code is refused and the code does not run."""
    marker = tmp_path / "pwned"
    evil = (
        "{'descr': __import__('os').system('touch " + str(marker) + "'), "
        "'fortran_order': False, 'shape': (2,), }"
    )
    _refused(raw_header(evil), "non-literal")
    evil_body = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    _refused(raw_header(evil_body), "literal dict")
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "[('descr', '<i4'), ('fortran_order', False), ('shape', (2,))]",
        "('<i4', False, (2,))",
        "42",
        "'descr'",
        "None",
        "{'descr', 'fortran_order', 'shape'}",
    ],
)
def test_non_dict_literal(text: str) -> None:
    """A valid literal that is not a dict is refused, quoting what was found."""
    _refused(raw_header(text), "literal dict", text[:15])


def test_missing_key() -> None:
    """A dict without ``shape`` cannot describe an array; the keys found are listed."""
    err = _refused(raw_header("{'descr': '<i4', 'fortran_order': False}"), "exactly the keys")
    assert "['descr', 'fortran_order']" in str(err)


def test_extra_key() -> None:
    """Unknown keys mean a format we do not understand, so they are refused."""
    text = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), 'offset': 4096}"
    _refused(raw_header(text), "exactly the keys", "'offset'")


def test_structured_descr_is_refused() -> None:
    """A structured dtype (a list descr) cannot be cut into Zarr chunks; say so."""
    array = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    _refused(_npy_bytes(array, (1, 0)), "structured", "[('a', '<i4'), ('b', '<f8')]")


def test_object_dtype_is_refused_without_unpickling() -> None:
    """An object array would need unpickling: refused, and the message says why."""
    array = np.array([{"a": 1}, None], dtype=object)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    _refused(buf.getvalue(), "'|O'", "unpickling")


@pytest.mark.parametrize("descr", ["|S4", "<U3", "<M8[ns]", "|V8", "<i4,<i4", "(2,)<i4", "xyz"])
def test_non_numeric_descr_is_refused(descr: str) -> None:
    """Strings, datetimes, voids and nonsense dtypes are refused, naming the descr."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (2,), }}"
    _refused(raw_header(text), repr(descr))


@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_long_double_is_refused(dtype: type) -> None:
    """Long double has no Zarr data type and a machine-specific layout: refused up front."""
    array: np.ndarray = np.zeros(3, dtype=dtype)
    if (
        array.dtype.itemsize
        <= np.dtype(np.complex128 if array.dtype.kind == "c" else np.float64).itemsize
    ):
        pytest.skip("long double is double on this platform")
    _refused(_npy_bytes(array, (1, 0)), "long double", "float64")


def test_fortran_order_with_two_dimensions_is_refused() -> None:
    """Fortran rows are not contiguous, so whole-row chunks would read wrong bytes."""
    array = np.asfortranarray(np.arange(12, dtype="<i4").reshape(3, 4))
    _refused(_npy_bytes(array, (1, 0)), "Fortran order", "C order")


@pytest.mark.parametrize("shape", ["[2, 3]", "(2, -1)", "(2.0,)", "(True,)", "('2',)", "2", "None"])
def test_bad_shape_is_refused(shape: str) -> None:
    """Only a tuple of non-negative integers is a shape."""
    text = f"{{'descr': '<i4', 'fortran_order': False, 'shape': {shape}, }}"
    _refused(raw_header(text), "shape")


@pytest.mark.parametrize("flag", ["0", "1", "'False'", "None"])
def test_fortran_flag_must_be_a_bool(flag: str) -> None:
    """``fortran_order`` is True or False, nothing truthy."""
    text = f"{{'descr': '<i4', 'fortran_order': {flag}, 'shape': (2,), }}"
    _refused(raw_header(text), "fortran_order")


def test_non_utf8_bytes_in_a_v3_header() -> None:
    """Version 3.0 headers are UTF-8; invalid bytes are refused, not guessed."""
    data = bytearray(raw_header(GOOD_DICT, version=3))
    at = data.index(b"<i4")
    data[at + 1 : at + 3] = b"\xff\xfe"
    _refused(bytes(data), "utf-8", "3.0")


def test_latin1_bytes_in_a_v1_header_are_decoded_not_crashed() -> None:
    """Version 1.0 headers are latin-1: odd bytes decode, then fail as a bad descr."""
    data = bytearray(raw_header(GOOD_DICT, version=1))
    at = data.index(b"<i4")
    data[at + 1 : at + 3] = b"\xff\xfe"
    _refused(bytes(data), "descr")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 9_000,
        "{'descr': " + "(" * 4_000 + "1" + ")" * 4_000 + "}",
        "{'descr': " + "-" * 9_000 + "1}",
        "{'descr': " + "~" * 9_000 + "1}",
        "{'descr': " + "not " * 2_000 + "1}",
        "{'a': " + "{'a': " * 1_200 + "1" + "}" * 1_201,
        "{'shape': (" + "9" * 5_000 + ",)}",
        "{'shape': (10 ** 100000,)}",
    ],
)
def test_deeply_nested_or_huge_literal_is_bounded(text: str) -> None:
    """Pathological literals within the size limit are refused quickly, never crash."""
    data = raw_header(text, version=2)
    assert header_length(data[:12]) <= MAX_HEADER_BYTES + 12
    t0 = time.perf_counter()
    with pytest.raises(NpyFormatError):
        parse_header(data)
    assert time.perf_counter() - t0 < 1.0


def test_hundred_thousand_brackets_are_refused_by_size() -> None:
    """``'[' * 100000`` exceeds the header limit and is never handed to the parser."""
    data = raw_header("[" * 100_000, version=2)
    t0 = time.perf_counter()
    _refused(data, "limit")
    assert time.perf_counter() - t0 < 0.5


# -- check_size -------------------------------------------------------------


def test_check_size_refuses_a_short_file() -> None:
    """A file shorter than offset + nbytes is reported truncated, with the numbers."""
    data = _npy_bytes(np.zeros((4, 8), "<f8"), (1, 0))
    header = parse_header(data)
    end = header.data_offset + header.nbytes
    assert end == len(data)
    check_size(header, end)
    check_size(header, end + 100)  # trailing bytes are harmless
    with pytest.raises(NpyFormatError) as info:
        check_size(header, end - 1, what="2024/grid_0.85_49.95/grid_0.85_49.95.npy")
    message = str(info.value)
    assert "grid_0.85_49.95.npy is truncated" in message
    assert str(end) in message and str(end - 1) in message


def test_check_size_of_an_empty_array() -> None:
    """A zero-length array needs only its header."""
    data = _npy_bytes(np.zeros((0, 3), "<i2"), (1, 0))
    header = parse_header(data)
    check_size(header, header.data_offset)
    with pytest.raises(NpyFormatError):
        check_size(header, header.data_offset - 1)


# -- fuzz -------------------------------------------------------------------

_LITERALISH = st.text(
    alphabet=st.sampled_from(list("{}[]()'\",:. -+_0123456789TrueFalseNonedescrshapefortranxj\\")),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([1, 2, 3]),
    body=st.binary(max_size=400),
    declared=st.one_of(st.none(), st.integers(min_value=0, max_value=0xFFFF)),
)
def test_fuzz_arbitrary_bytes_after_the_preamble(
    version: int, body: bytes, declared: int | None
) -> None:
    """Any bytes after a valid magic, version and length give a header or NpyFormatError."""
    length = len(body) if declared is None else declared
    prefix = _preamble(version, length) + body
    try:
        header = parse_header(prefix)
    except NpyFormatError:
        return
    assert header.data_offset == header_length(prefix)
    assert header.dtype.kind in "biufc"


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([1, 2, 3]), text=_LITERALISH)
def test_fuzz_literal_like_text(version: int, text: str) -> None:
    """Text made of literal syntax reaches the literal parser; still only NpyFormatError."""
    with contextlib.suppress(NpyFormatError):
        parse_header(raw_header(text, version))


@settings(max_examples=300, deadline=None)
@given(
    descr=st.one_of(
        st.text(max_size=12),
        st.sampled_from(["<i4", ">f8", "|b1", "<c8", "f16", "<m8", "V", "S0", "U0", "O"]),
    ),
    fortran=st.booleans(),
    shape=st.lists(st.integers(min_value=0, max_value=1 << 40), max_size=5).map(tuple),
)
def test_fuzz_fields(descr: str, fortran: bool, shape: tuple[int, ...]) -> None:
    """Well-formed dicts with arbitrary field values: a consistent header or NpyFormatError."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape})
    try:
        header = parse_header(raw_header(text, version=3))
    except NpyFormatError:
        return
    assert header.shape == shape
    assert header.dtype == np.dtype(descr)
    assert header.dtype.itemsize <= 16
    assert not (fortran and len(shape) > 1)
