"""Synthetic TESSERA tile trees with the real geometry.

The demo, the tests and the benchmarks need trees laid out exactly as
upstream publishes them (``{year}/grid_{lon}_{lat}/grid_{lon}_{lat}.npy``
plus ``_scales.npy`` and a ``manifest.parquet``), with each tile's shape
taken from :func:`tessera_vz.core.geometry.tile_grids`, and with values that
any check can recompute for any pixel without keeping the files in memory.
Every value is therefore a closed formula of (year, tile, row, column,
band): :func:`embedding_values` and :func:`scale_values`. The manifest is
:mod:`tessera_vz.mirror.manifest`'s.

Files are genuine ``.npy`` v1.0 (numpy's own header writer) and are written
in row blocks, so a real-size 128-band tile (~100 MB) never sits in memory at
once. ``sparse=True`` writes only the headers and extends each file to its
full length with a hole, so a whole zone of full-size tiles costs almost no
disk; the data of a sparse file reads back as zeros (so every scale is 0.0,
which is no-data by the valid-scale rule).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import source_paths, tile_name
from tessera_vz.mirror.manifest import hundredths, write_manifest

logger = logging.getLogger(__name__)

#: Bytes of generated data held in memory at once (int16 work arrays included).
BLOCK_BUDGET = 16 << 20
#: Scale values written into the invalid patch (rows < 2, cols < 6), by column.
#: Each one is no-data by the valid-scale rule (finite, > 0 and < 1).
INVALID_SCALES = np.array([np.nan, 0.0, -0.5, np.inf, 1.0, 2.5], dtype=np.float32)
INVALID_ROWS = 2


def cell_centres(bbox: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Every 0.1-degree cell centre lying inside ``bbox`` (edges included).

    Parameters
    ----------
    bbox
        ``(west, south, east, north)`` in degrees.

    Returns
    -------
    list of (lon, lat)
        Centres at odd multiples of 0.05, rounded to 2 decimals so they print
        like upstream tile names; sorted by latitude, then longitude.
        Integer hundredths are used internally so no centre is lost or
        duplicated to floating-point error at a bbox edge.
    """
    west, south, east, north = (float(v) for v in bbox)
    if west > east or south > north:
        raise ValueError(f"bbox must be (W, S, E, N) with W <= E and S <= N, got {bbox}")
    eps = 1e-6

    def centres(lo: float, hi: float, limit: int) -> list[int]:
        first = math.floor(lo * 10) - 1
        last = math.ceil(hi * 10) + 1
        out = []
        for k in range(first, last + 1):
            c = k * 10 + 5  # hundredths, always an odd multiple of 5
            if lo * 100 - eps <= c <= hi * 100 + eps and -limit < c < limit:
                out.append(c)
        return out

    lons = centres(west, east, 18000)
    lats = centres(south, north, 9000)
    return [(round(lo / 100, 2), round(la / 100, 2)) for la in lats for lo in lons]


def embedding_values(
    year: int, lon: float, lat: float, rows: ArrayLike, cols: ArrayLike, bands: ArrayLike
) -> NDArray[np.int8]:
    """The int8 embedding the generator writes at (row, col, band) of a tile.

    ``((lon_i*3 + lat_i*5 + year*11 + row*7 + col*13 + band*17) % 251) - 125``
    with ``lon_i = round(lon*100)``, ``lat_i = round(lat*100)``: every
    tile, row, column and band changes the value, so a read from the wrong
    tile, row, offset or band is caught. ``rows``, ``cols`` and ``bands``
    broadcast like any numpy operands (e.g. ``rows[:, None, None]``).

    The result equals the formula evaluated in int64; each term is reduced
    modulo 251 first (exact, since numpy's ``%`` is non-negative for a positive
    divisor) so the broadcast sum fits int16 and a large block costs 2 bytes
    per value instead of 8.
    """
    base = (hundredths(lon) * 3 + hundredths(lat) * 5 + int(year) * 11) % 251
    r = ((np.asarray(rows, dtype=np.int64) * 7 + base) % 251).astype(np.int16)
    c = ((np.asarray(cols, dtype=np.int64) * 13) % 251).astype(np.int16)
    b = ((np.asarray(bands, dtype=np.int64) * 17) % 251).astype(np.int16)
    total = (r + c) + b
    total %= 251
    total -= 125
    return total.astype(np.int8)


def scale_values(
    year: int,
    lon: float,
    lat: float,
    rows: ArrayLike,
    cols: ArrayLike,
    bands: ArrayLike | None = None,
    *,
    invalid_patch: bool = True,
) -> NDArray[np.float32]:
    """The float32 scale the generator writes at (row, col[, band]) of a tile.

    Valid values lie in (0.001, 0.0107), a deterministic function of the tile,
    row and column (and band, for per-band scales, where ``band*11`` joins the
    sum): ``0.001 + ((row*3 + col*5 [+ band*11] + lon_i + lat_i + year) % 97) / 1e4``.
    With ``invalid_patch`` the pixels with ``row < 2`` and ``col < 6`` get, by
    column, ``[nan, 0.0, -0.5, inf, 1.0, 2.5]``: one of each kind of no-data
    the valid-scale rule must reject, at a place tests can address.
    """
    r = np.asarray(rows, dtype=np.int64)
    c = np.asarray(cols, dtype=np.int64)
    k = r * 3 + c * 5 + (hundredths(lon) + hundredths(lat) + int(year))
    if bands is not None:
        k = k + np.asarray(bands, dtype=np.int64) * 11
    out = (0.001 + (k % 97) / 1e4).astype(np.float32)
    if invalid_patch:
        r_b, c_b = np.broadcast_arrays(r, c)
        r_b = np.broadcast_to(r_b, out.shape)
        c_b = np.broadcast_to(c_b, out.shape)
        patch = (r_b < INVALID_ROWS) & (c_b >= 0) & (c_b < INVALID_SCALES.size)
        if patch.any():
            out = np.array(out, copy=True)
            out[patch] = INVALID_SCALES[c_b[patch]]
    return out


@dataclass(frozen=True)
class TileSpec:
    """One generated tile: where it is and what shape it has.

    ``emb_path`` and ``scales_path`` are relative to the tree's root, with
    ``/`` separators, exactly as upstream's manifest lists them.
    """

    year: int
    lon: float
    lat: float
    name: str
    height: int
    width: int
    bands: int
    epsg: int
    emb_path: str
    scales_path: str
    scales_per_band: bool = False
    sparse: bool = False

    @property
    def directory(self) -> str:
        """Tile directory relative to the root: ``2024/grid_0.85_49.95``."""
        return f"{self.year}/{self.name}"

    @property
    def emb_shape(self) -> tuple[int, int, int]:
        """Shape of the embeddings array ``(H, W, bands)``."""
        return (self.height, self.width, self.bands)

    @property
    def scales_shape(self) -> tuple[int, ...]:
        """Shape of the scales array ``(H, W)`` or ``(H, W, bands)``."""
        if self.scales_per_band:
            return (self.height, self.width, self.bands)
        return (self.height, self.width)


def _write_header(f: BinaryIO, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Write a v1.0 ``.npy`` header with numpy's own writer; return the data offset."""
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return f.tell()


def _block_rows(row_elems: int, bytes_per_elem: int) -> int:
    """Rows per generated block so a block's work arrays stay within BLOCK_BUDGET."""
    return max(1, BLOCK_BUDGET // max(1, row_elems * bytes_per_elem))


@lru_cache(maxsize=4)
def _emb_table() -> NDArray[np.int8]:
    """``T[s, k] = ((s + k) % 251) - 125``: the embedding formula as a 63 KB table."""
    a = np.arange(251, dtype=np.int64)
    return ((a[:, None] + a[None, :]) % 251 - 125).astype(np.int8)


@lru_cache(maxsize=4)
def _scale_table() -> NDArray[np.float32]:
    """``T[s, k] = 0.001 + ((s + k) % 97) / 1e4`` in float32, as :func:`scale_values`."""
    a = np.arange(97, dtype=np.int64)
    return (0.001 + ((a[:, None] + a[None, :]) % 97) / 1e4).astype(np.float32)


def _emb_block(spec: TileSpec, r0: int, r1: int, inner: NDArray[np.intp]) -> NDArray[np.int8]:
    """Rows ``r0:r1`` of a tile's embeddings, equal to :func:`embedding_values`.

    The formula splits into a row term and a (col, band) term modulo 251, so
    a block is one table gather ``take(T[row_term], inner, axis=1)``: several times
    faster than evaluating the modular sum per value, which keeps a test tree
    of tens of tiles within a second or two.
    """
    base = (hundredths(spec.lon) * 3 + hundredths(spec.lat) * 5 + spec.year * 11) % 251
    rt = (np.arange(r0, r1, dtype=np.int64) * 7 + base) % 251
    return np.take(_emb_table()[rt], inner, axis=1)


def _scale_block(
    spec: TileSpec, r0: int, r1: int, inner: NDArray[np.intp], invalid_patch: bool
) -> NDArray[np.float32]:
    """Rows ``r0:r1`` of a tile's scales (flattened inner axes), as :func:`scale_values`."""
    k = hundredths(spec.lon) + hundredths(spec.lat) + spec.year
    rt = (np.arange(r0, r1, dtype=np.int64) * 3 + k) % 97
    out = np.take(_scale_table()[rt], inner, axis=1)
    if invalid_patch and r0 < INVALID_ROWS:
        per_col = spec.bands if spec.scales_per_band else 1
        n = min(INVALID_SCALES.size, spec.width)
        patch = np.repeat(INVALID_SCALES[:n], per_col)
        out[: INVALID_ROWS - r0, : patch.size] = patch
    return out


def _write_tile(root: Path, spec: TileSpec, invalid_patch: bool) -> None:
    """Write both files of one tile, block by block (or as holes when sparse)."""
    emb = root / spec.emb_path
    sc = root / spec.scales_path
    emb.parent.mkdir(parents=True, exist_ok=True)
    h, w, b = spec.height, spec.width, spec.bands
    sc_dtype = np.dtype(np.float32)
    with open(emb, "wb") as f:
        off = _write_header(f, np.dtype(np.int8), spec.emb_shape)
        if spec.sparse:
            f.truncate(off + h * w * b)
        else:
            cols = np.arange(w, dtype=np.int64)[:, None]
            inner = ((cols * 13 + np.arange(b, dtype=np.int64)[None, :] * 17) % 251).ravel()
            step = _block_rows(w * b, 1)
            for r0 in range(0, h, step):
                f.write(_emb_block(spec, r0, min(h, r0 + step), inner).data)
    per_band = b if spec.scales_per_band else 1
    with open(sc, "wb") as f:
        off = _write_header(f, sc_dtype, spec.scales_shape)
        if spec.sparse:
            f.truncate(off + h * w * per_band * sc_dtype.itemsize)
            return
        cols = np.arange(w, dtype=np.int64)[:, None] * 5
        if spec.scales_per_band:
            inner = ((cols + np.arange(b, dtype=np.int64)[None, :] * 11) % 97).ravel()
        else:
            inner = (cols % 97).ravel()
        step = _block_rows(w * per_band, sc_dtype.itemsize)
        for r0 in range(0, h, step):
            f.write(_scale_block(spec, r0, min(h, r0 + step), inner, invalid_patch).data)


def tile_specs(
    centres: Sequence[tuple[float, float]],
    years: Iterable[int] = (2024,),
    bands: int = 128,
    *,
    scales_per_band: bool = False,
    sparse: bool = False,
) -> list[TileSpec]:
    """Describe the tiles of ``centres`` x ``years`` without writing anything.

    Geometry comes from one vectorised :func:`tile_grids` call, so describing
    a whole zone (thousands of tiles) costs a few milliseconds.
    """
    if not centres:
        return []
    lon = np.array([c[0] for c in centres], dtype=np.float64)
    lat = np.array([c[1] for c in centres], dtype=np.float64)
    g = tile_grids(lon, lat)
    specs = []
    for year in years:
        for i, (lo, la) in enumerate(centres):
            lo_r, la_r = round(float(lo), 2), round(float(la), 2)
            name = tile_name(lo_r, la_r)
            emb_path, scales_path = source_paths(int(year), name)
            specs.append(
                TileSpec(
                    year=int(year),
                    lon=lo_r,
                    lat=la_r,
                    name=name,
                    height=int(g.height[i]),
                    width=int(g.width[i]),
                    bands=int(bands),
                    epsg=int(g.epsg[i]),
                    emb_path=emb_path,
                    scales_path=scales_path,
                    scales_per_band=scales_per_band,
                    sparse=sparse,
                )
            )
    return specs


def make_tree(
    root: str | Path,
    bbox: tuple[float, float, float, float] | None = None,
    centres: Sequence[tuple[float, float]] | None = None,
    years: Iterable[int] = (2024,),
    bands: int = 128,
    sparse: bool = False,
    scales_per_band: bool = False,
    manifest: bool = True,
    url_base: str | None = None,
    invalid_patch: bool = True,
    workers: int | None = None,
) -> list[TileSpec]:
    """Write a synthetic TESSERA tree under ``root`` and return its tiles.

    Parameters
    ----------
    root
        Directory to write into (created if needed).
    bbox, centres
        Which tiles: every cell centre inside ``bbox`` (W, S, E, N), or the
        given ``centres``; exactly one of the two.
    years
        One copy of every tile per year (values differ by year, so a read
        from the wrong year is caught).
    bands
        Embedding bands; 128 upstream, fewer makes small fast test trees.
    sparse
        Write only headers and extend the files with holes to full length:
        real sizes and offsets, near-zero disk, zero-valued content.
    scales_per_band
        Write ``(H, W, bands)`` scales, as older upstream runs did.
    manifest
        Also write ``{root}/manifest.parquet`` (see :func:`write_manifest`).
    url_base
        List absolute URLs under this base in the manifest.
    invalid_patch
        Put the no-data scale patch (see :func:`scale_values`) in every tile.
    workers
        Threads writing tiles (numpy and file writes release the GIL);
        default ``min(8, cpu count)``.
    """
    if (bbox is None) == (centres is None):
        raise ValueError("give exactly one of bbox or centres")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cells = cell_centres(bbox) if bbox is not None else list(centres or [])
    specs = tile_specs(cells, years, bands, scales_per_band=scales_per_band, sparse=sparse)
    for d in {root / s.directory for s in specs}:
        d.mkdir(parents=True, exist_ok=True)
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers <= 1 or len(specs) <= 1:
        for s in specs:
            _write_tile(root, s, invalid_patch)
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            for _ in pool.map(lambda s: _write_tile(root, s, invalid_patch), specs):
                pass
    if manifest:
        write_manifest(root, specs, url_base=url_base)
    logger.info("wrote %d tiles (%d bands, sparse=%s) under %s", len(specs), bands, sparse, root)
    return specs
