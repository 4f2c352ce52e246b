"""The per-year ``tiles`` table: one row per indexed tile.

It lets a reader find a tile and the byte layout of its files without
listing or opening tile groups, and a re-run decide what changed. It is an
ordinary xarray Dataset along a ``tile`` dimension whose coordinate is the
tile name, so ``xr.open_zarr(store, group="tiles")`` shows the inventory.
A reader holds it as :class:`TileColumns` (NumPy columns): reading a point
needs no xarray (nor the pandas it imports), which a cold process would
spend more time importing than reading.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.checksums import checksum_value
from tessera_vz.core.layout import TILES, check_tile_name
from tessera_vz.core.urls import check_path, check_root

if TYPE_CHECKING:
    import xarray as xr
    from zarr.abc.store import Store

#: Column name -> numpy dtype of the stored table.
COLUMNS: dict[str, str] = {
    "lon": "f8",
    "lat": "f8",
    "zone": "i2",
    "epsg": "i4",
    "left": "f8",
    "top": "f8",
    "height": "i4",
    "width": "i4",
    "bands": "i4",
    "emb_path": "U",
    "scales_path": "U",
    "emb_offset": "i8",
    "scales_offset": "i8",
    "emb_size": "i8",
    "scales_size": "i8",
    "emb_checksum": "U",
    "scales_checksum": "U",
    "emb_chunk_rows": "i4",
    "scales_chunk_rows": "i4",
    "scales_descr": "U",
    "scales_ndim": "i1",
    "source": "U",
    # What the inventory (manifest or listing) said about each file when the
    # tile was indexed ("size=…;mtime=…", "size=…;etag=…"; "" if nothing):
    # a re-run whose inventory says the same does not probe the tile again.
    "emb_listed": "U",
    "scales_listed": "U",
}

#: Values of columns added after the first layout, for tables written before them.
COLUMN_DEFAULTS: dict[str, Any] = {"emb_listed": "", "scales_listed": ""}


@dataclass(frozen=True)
class TileColumns:
    """A tiles table as NumPy columns: ``tile`` (the names), the other columns, the attributes.

    What a reader keeps of a zone-year's table; :meth:`dataset` gives the
    xarray Dataset (``TesseraStore.tiles``) when one is asked for.
    """

    tile: NDArray[Any]
    data: dict[str, NDArray[Any]]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, table: TileColumns | xr.Dataset) -> TileColumns:
        """The columns of a table Dataset (or the columns themselves)."""
        if isinstance(table, TileColumns):
            return table
        data = {str(k): np.asarray(table[k].values) for k in table.data_vars}
        return cls(np.asarray(table["tile"].values), data, dict(table.attrs))

    def dataset(self) -> xr.Dataset:
        """The table as the Dataset ``xr.open_zarr`` gives, along ``tile``."""
        import xarray as xr

        data = {k: ("tile", v) for k, v in self.data.items()}
        return xr.Dataset(data, coords={"tile": self.tile}, attrs=dict(self.attrs))


def table_rows(table: xr.Dataset | None, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Rows of a tiles table as dicts (all, or those named in ``only``).

    Columns added to the layout later get their defaults, so a table written
    before them is rewritten whole with the current columns.
    """
    if table is None:
        return {}
    names = [str(n) for n in table["tile"].values]
    pick = np.array([only is None or n in only for n in names], dtype=bool)
    # Whole columns to Python values at once (.tolist()), not one .item() per cell:
    # a 30,000-tile table becomes rows in ~0.2 s instead of ~1.2 s.
    cols = {c: table[c].values[pick].tolist() for c in COLUMNS if c in table}
    defaults = {c: v for c, v in COLUMN_DEFAULTS.items() if c not in cols}
    keys = list(cols)
    chosen = [n for n, p in zip(names, pick, strict=True) if p]
    return {
        n: {**dict(zip(keys, values, strict=True)), **defaults}
        for n, values in zip(chosen, zip(*cols.values(), strict=True), strict=True)
    }


def table_dataset(names: list[str], columns: dict[str, Any], attrs: dict[str, Any]) -> xr.Dataset:
    """Build the table Dataset from column arrays (sorted by tile name)."""
    import xarray as xr

    order = np.argsort(np.asarray(names, dtype=str), kind="stable")
    data = {
        col: ("tile", np.asarray(columns[col], dtype=dtype)[order])
        for col, dtype in COLUMNS.items()
    }
    return xr.Dataset(data, coords={"tile": np.asarray(names, dtype=str)[order]}, attrs=attrs)


def read_table(store: Store) -> xr.Dataset | None:
    """Load a year's table from a session store, or ``None`` if it has none."""
    import xarray as xr

    try:
        ds: xr.Dataset = xr.open_zarr(
            store, group=TILES, consolidated=False, zarr_format=3, chunks=None
        )
    except (FileNotFoundError, KeyError):
        return None
    return ds.load()


#: Bounds of a tile no real run produces (H, W, bands): anything beyond is refused.
_MAX_SIDE = 1 << 20
_MAX_BANDS = 4096


def refused_rows(table: TileColumns | xr.Dataset) -> dict[str, str]:
    """Tiles whose records cannot be used as they are, each with the reason.

    A repository is an untrusted input: its paths, URLs and checksums become
    request lines and headers, its offsets and shapes byte ranges, its tile
    names file names and messages (checked against the layout's grammar,
    :func:`~tessera_vz.core.layout.check_tile_name`). A value
    no indexer writes (control characters, a path leaving its root, an
    offset outside the file, a scales dtype that is not 4-byte float) fails
    that tile with a clear reason, before any request is made for it.
    """
    columns = TileColumns.of(table)
    names = [str(n) for n in columns.tile]
    if not names:
        return {}
    col = {c: columns.data[c] for c in COLUMNS if c in columns.data}
    missing = [c for c in COLUMNS if c not in col]
    if missing:
        return dict.fromkeys(names, f"the tiles table lacks columns {missing}")
    out: dict[str, str] = {}

    def refuse(mask: NDArray[np.bool_], reason: str) -> None:
        for i in np.flatnonzero(mask).tolist():
            out.setdefault(names[i], reason)

    with np.errstate(invalid="ignore", over="ignore"):
        h, w, b = (col[c].astype(np.int64) for c in ("height", "width", "bands"))
        refuse((h <= 0) | (w <= 0) | (b <= 0) | (h > _MAX_SIDE) | (w > _MAX_SIDE)
               | (b > _MAX_BANDS), "its height, width or band count is out of range")  # fmt: skip
        finite = np.isfinite(col["left"]) & np.isfinite(col["top"])
        finite &= np.isfinite(col["lon"]) & np.isfinite(col["lat"])
        refuse(~finite, "its coordinates are not finite numbers")
        epsg = col["epsg"].astype(np.int64)
        refuse(~(((epsg > 32600) & (epsg <= 32660)) | ((epsg > 32700) & (epsg <= 32760))),
               "its EPSG code is not a UTM zone")  # fmt: skip
        refuse(col["zone"].astype(np.int64) != epsg % 100, "its zone is not its EPSG code's zone")
        per_band = col["scales_ndim"].astype(np.int64) == 3
        refuse(
            ~np.isin(col["scales_ndim"].astype(np.int64), (2, 3)), "its scales are not 2-D or 3-D"
        )
        for pre, item in (("emb", 1 * b), ("scales", 4 * np.where(per_band, b, 1))):
            k = col[f"{pre}_chunk_rows"].astype(np.int64)
            off, size = col[f"{pre}_offset"].astype(np.int64), col[f"{pre}_size"].astype(np.int64)
            refuse((k <= 0) | (h % np.maximum(k, 1) != 0), f"its {pre} chunk rows do not divide H")
            refuse((off < 0) | (off + h * w * item > size),
                   f"its {pre} data does not fit inside the file as indexed")  # fmt: skip
    if not _strings_plain(names, col):
        for i, name in enumerate(names):
            if name in out:
                continue
            try:
                _check_strings(name, {c: col[c][i] for c in _STRING_CHECKS})
            except (TypeError, ValueError) as exc:
                out[name] = f"{str(exc).strip().splitlines()[0][:200]}"
    return {
        n: f"the index records a value no indexer writes ({r}); the repository is damaged or was "
        "crafted, so this tile is not read. Re-index its source with `tessera-vz index`"
        for n, r in out.items()
    }


def _check_scales_descr(text: str) -> None:
    descr = np.dtype(text)
    if descr.kind != "f" or descr.itemsize != 4:
        raise ValueError(f"scales dtype {descr.str!r} is not a 4-byte float")


#: The string checks of a record, in the order a refusal's reason is taken from.
_STRING_CHECKS: dict[str, Callable[[str], object]] = {
    "scales_descr": _check_scales_descr,
    "source": check_root,
    "emb_path": check_path,
    "emb_checksum": checksum_value,
    "scales_path": check_path,
    "scales_checksum": checksum_value,
}


def _check_strings(name: object, values: dict[str, Any]) -> None:
    """The exact checks of one record's strings; ``ValueError`` with the first reason."""
    check_tile_name(name)
    for column, check in _STRING_CHECKS.items():
        check(str(values[column]))


#: Forms that pass the exact checks for sure, matched over a whole column at once
#: (:func:`_all_match`): a tile name as the grammar writes it (lon within 179.95,
#: lat within 89.95, an odd multiple of 0.05); a relative path of unreserved
#: characters with no dot segment; an ETag of visible characters that is not
#: shaped like a date, or a UTC time whose day exists in every month. Each
#: accepts a subset of what :func:`_check_strings` accepts (tested); anything
#: else goes through the exact checks.
_FAST = {
    "tile": r"grid_-?(?:0|[1-9][0-9]?|1[0-7][0-9])\.[0-9]5_-?(?:0|[1-8]?[0-9])\.[0-9]5",
    "path": r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*(?:/[A-Za-z0-9_~-][A-Za-z0-9_.~-]*)*",
    "checksum": r"(?:(?![0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\n)"
    r'(?:W/)?"?[\x21\x23-\x7e]{1,512}"?|[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])'
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)",
}
_FAST_COLUMNS = {"emb_path": "path", "scales_path": "path", "emb_checksum": "checksum",
                 "scales_checksum": "checksum"}  # fmt: skip


@cache
def _lines_of(form: str) -> re.Pattern[str]:
    return re.compile(f"(?:{_FAST[form]}\n)*")


def _all_match(form: str, values: Iterable[Any]) -> bool:
    """Whether every value is a string of the form ``form`` (:data:`_FAST`).

    One regular-expression pass over the values joined by newlines (C speed,
    no Python per value); a value holding a newline, or one that is not a
    string, makes the answer ``False``.
    """
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    try:
        text = "\n".join(items) + "\n"
    except TypeError:
        return False
    return text.count("\n") == len(items) and _lines_of(form).fullmatch(text) is not None


def _strings_plain(names: list[str], col: dict[str, NDArray[Any]]) -> bool:
    """Whether every record's strings pass the exact checks, decided column by column in bulk.

    A global year is ~1.8 M records: checking each string in Python cost
    ~14 us a record (~25 s). Names, paths and checksums are matched in bulk
    against forms that surely pass; the few distinct roots and dtypes are
    checked exactly, once each. ``False`` sends the table through the exact
    per-record checks (which then say which records fail, and why).
    """
    if not _all_match("tile", names):
        return False
    if not all(_all_match(form, col[c]) for c, form in _FAST_COLUMNS.items()):
        return False
    for column in ("scales_descr", "source"):
        try:
            distinct = np.unique(np.asarray(col[column]).astype(str))
        except (TypeError, ValueError):
            return False
        for value in distinct.tolist():
            try:
                _STRING_CHECKS[column](value)
            except (TypeError, ValueError):
                return False
    return True


class TileLookup:
    """A year's tiles table as NumPy columns and a name index, for the hot path.

    Reading a point through the xarray Dataset (``sel``, a ``DataArray`` per
    column) cost ~1.5 ms of Python per call, more than the point's bytes take
    to arrive on loopback; the same facts as plain arrays cost microseconds.
    Built once per snapshot, like the table itself. State is real (the index),
    hence a class.
    """

    #: Up to this many names are looked up in a dict; more by a sorted search.
    _SMALL = 256

    def __init__(self, table: TileColumns | xr.Dataset) -> None:
        columns = TileColumns.of(table)
        self.names = np.asarray(columns.tile).astype(str)
        self.cols: dict[str, NDArray[Any]] = {k: np.asarray(v) for k, v in columns.data.items()}
        self._row = {n: i for i, n in enumerate(self.names.tolist())}
        self._order = np.argsort(self.names, kind="stable")
        self._sorted = self.names[self._order]

    def positions(self, names: list[str]) -> NDArray[np.int64]:
        """Row of each name in the table, -1 where the table has no such tile."""
        if len(names) <= self._SMALL:
            return np.fromiter((self._row.get(n, -1) for n in names), np.int64, len(names))
        if self._sorted.size == 0:
            return np.full(len(names), -1, np.int64)
        asked = np.asarray(names, dtype=str)
        at = np.minimum(np.searchsorted(self._sorted, asked), self._sorted.size - 1)
        return np.where(self._sorted[at] == asked, self._order[at], -1).astype(np.int64)

    def row(self, name: str) -> dict[str, Any] | None:
        """One tile's facts as Python scalars, or ``None``."""
        i = self._row.get(name)
        return None if i is None else {k: v[i].item() for k, v in self.cols.items()}
