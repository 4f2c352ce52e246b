"""The tiles table's record checks in bulk accept nothing the exact per-record checks refuse.

``refused_rows`` matches names, paths and checksums of a whole table in one
regular-expression pass (a global year is ~1.8 M records) and falls back on
the exact checks (``check_tile_name``, ``check_path``, ``checksum_value``,
``check_root``) when any value is not of a form that surely passes. Here:
every fast form accepts only values the exact check accepts (random and
crafted strings), the real grid's names all take the fast path, and a table
with one damaged value of each kind refuses exactly that record with the
same reason as the exact check gives.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from tessera_vz.core import table as tt
from tessera_vz.core.checksums import checksum_value
from tessera_vz.core.layout import check_tile_name, tile_name
from tessera_vz.core.urls import check_path

EXACT = {"tile": check_tile_name, "path": check_path, "checksum": checksum_value}

CRAFTED = {
    "tile": ["grid_0.05_0.05", "grid_-0.05_-0.05", "grid_179.95_89.95", "grid_180.05_0.05",
             "grid_0.05_90.05", "grid_00.05_0.05", "grid_+0.05_0.05", "grid_0.1_0.05",
             "grid_0.10_0.05", "grid_-0.00_0.05", "grid_0.05_0.05\n", "grid_\uff10.05_0.05",
             "grid_100.05_-89.95", "grid_-179.95_-55.95", ""],
    "path": ["2024/a/b.npy", "a", ".a", "a/.b", "a/..", "a//b", "/a", "a/", "..", "a/b\x00",
             "a b", "ü", "x~y-z_1.npy", "a/.../b", "a/b.", "-", "~"],
    "checksum": ["2024-01-31T00:00:00Z", "2024-02-30T00:00:00Z", "2024-02-28T23:59:59Z",
                 "0000-01-01T00:00:00Z", "2024-13-01T00:00:00Z", '"abc"', 'W/"abc"', "a\nb",
                 "a b", "x" * 512, "x" * 513, '"' * 2, "2024-01-01T24:00:00Z", "é",
                 "\uff12\uff10\uff12\uff14-01-01T00:00:00Z", "1999-12-28T12:30:45Z"],
}  # fmt: skip


def _exact(form: str, value: str) -> bool:
    try:
        EXACT[form](value)
    except (TypeError, ValueError):
        return False
    return True


def _random_strings(alphabet: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(n)]


@pytest.mark.parametrize("form", sorted(EXACT))
def test_fast_forms_accept_only_what_the_exact_checks_accept(form: str) -> None:
    samples = CRAFTED[form] + _random_strings('grid_0123456789.-/~aZ W"T:\n\x7f', 4000, 7)
    samples += [f"{y}-{m:02d}-{d:02d}T{h:02d}:00:00Z" for y in (1, 999, 2024) for m in (0, 2, 12)
                for d in (0, 28, 29, 31) for h in (0, 23, 24)]  # fmt: skip
    for value in samples:
        if tt._all_match(form, [value]):
            assert _exact(form, value), (form, value)
    # Some of each kind do take the fast path.
    assert sum(tt._all_match(form, [v]) for v in CRAFTED[form]) >= 2


def test_every_name_of_the_grid_takes_the_fast_path() -> None:
    lons = np.round(np.arange(-179.95, 180.0, 0.1), 2)
    lats = np.round(np.arange(-89.95, 90.0, 0.1), 2)
    names = [tile_name(lo, la) for lo in lons[::7] for la in lats]
    names += [tile_name(lo, la) for lo in lons for la in lats[::7]]
    assert tt._all_match("tile", names)
    assert not tt._all_match("tile", [*names[:10], "grid_0.05_0.05\ngrid_0.15_0.05"])
    assert not tt._all_match("tile", [*names[:10], None])


def _table(n: int) -> tt.TileColumns:
    names = [tile_name(0.05 + 0.1 * i, 49.95) for i in range(n)]
    paths = [f"2024/{t}/{t}.npy" for t in names]
    cols = {
        "lon": np.full(n, 0.5), "lat": np.full(n, 49.95), "zone": np.full(n, 31),
        "epsg": np.full(n, 32631), "left": np.zeros(n), "top": np.zeros(n),
        "height": np.full(n, 10), "width": np.full(n, 10), "bands": np.full(n, 4),
        "emb_path": np.array(paths), "scales_path": np.array([p[:-4] + "_s.npy" for p in paths]),
        "emb_offset": np.full(n, 128), "scales_offset": np.full(n, 128),
        "emb_size": np.full(n, 10_000), "scales_size": np.full(n, 10_000),
        "emb_checksum": np.array(["2024-05-01T10:00:00Z"] * n),
        "scales_checksum": np.array(['"etag-1"'] * n),
        "emb_chunk_rows": np.full(n, 5), "scales_chunk_rows": np.full(n, 5),
        "scales_descr": np.array(["<f4"] * n), "scales_ndim": np.full(n, 2),
        "source": np.array(["https://example.org/tessera/"] * n),
        "emb_listed": np.array([""] * n), "scales_listed": np.array([""] * n),
    }  # fmt: skip
    return tt.TileColumns(np.array(names), cols)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("emb_path", "2024/../x.npy", "not a plain relative path"),
        ("scales_checksum", "2024-02-30T00:00:00Z", "is not a valid date"),
        ("emb_checksum", "a b", "neither an ETag"),
        ("scales_descr", "<f8", "is not a 4-byte float"),
        ("source", "ftp://example.org/", "has scheme 'ftp'"),
        ("tile", "grid_0.10_49.95", "is not grid_<lon>_<lat>"),
    ],
)
def test_one_damaged_record_is_refused_with_the_exact_reason(
    column: str, value: str, reason: str
) -> None:
    table = _table(50)
    assert tt.refused_rows(table) == {}
    target = table.tile if column == "tile" else table.data[column]
    target = target.astype(object)
    target[17] = value
    if column == "tile":
        table = tt.TileColumns(target, table.data)
    else:
        table.data[column] = target
    refused = tt.refused_rows(table)
    name = str(table.tile[17])
    assert list(refused) == [name] and reason in refused[name]


GOOD = [("tile", "grid_0.05_0.05"), ("path", "2024/a/b.npy"),
        ("checksum", "2024-01-31T00:00:00Z"), ("checksum", '"abc"')]  # fmt: skip


@pytest.mark.parametrize(("form", "value"), GOOD)
def test_a_trailing_line_break_is_refused_by_the_exact_checks(form: str, value: str) -> None:
    # '$' also matches before a final newline: a name or checksum read from an
    # untrusted table must not carry one into a path or a request header.
    assert _exact(form, value)
    assert not _exact(form, value + "\n")
