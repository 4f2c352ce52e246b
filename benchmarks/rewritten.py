"""The same pixels from a rewritten store: upstream's zone Zarr layout, read over HTTPS.

The alternative tessera-vz replaces is rewriting the tiles into a sharded
zone store. To compare reads fairly, the benchmark writes one the way the
published TESSERA global store is laid out (dClimate's Icechunk store and its
plain Zarr v3 copy, ``docs/global-store.md`` of dClimate/tessera-embeddings):

* one array per zone on the zone's 10 m lattice, ``embeddings`` int8
  ``(y, x, band)`` in inner chunks of 256 x 256 x 128 (8.4 MB) gathered
  8 x 8 into shards of 2048 x 2048 pixels (one object each, ~537 MB), and
  ``scales`` float32 ``(y, x)`` in 256 x 256 chunks in the same shards;
* zstd (level 3) for both (upstream encodes scales with PCodec, which needs a
  package this project does not install; scales are 3 % of the bytes);
* one year, so no time axis (upstream's time chunk is 1, which makes each
  year's chunks exactly these).

``benchmarks/scale.py::rewrite_baseline`` writes a variant with 32 x 32 inner
chunks and 64 x 64 shards to time the *writing*; for reads the layout users
actually get is the one above, where one pixel costs a whole 8.4 MB chunk.

Content matters: the benchmark's tile tree is sparse (its data are holes that
read as zeros), and zeros compress to nothing. Only the inner chunks that the
compared reads touch are written (a sharded read fetches the shard's index and
then only the inner chunks it needs, so untouched chunks never cross the
wire), and they hold what real embeddings look like: per pixel, 128 Gaussian
values quantised to int8 by their largest magnitude (as TESSERA quantises),
and a positive float32 scale below 1. zstd compresses those int8 bytes by a
few per cent, as it does real ones (upstream reports ~8.65 MB moved per pixel,
a whole uncompressed chunk and its scales).

Reads go through ``zarr.storage.ObjectStore`` over an obstore ``HTTPStore``
(which trusts ``SSL_CERT_FILE``), with zarr's concurrency raised to 64
requests, the in-flight limit of tessera-vz's own reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from numpy.typing import NDArray
from obstore.store import HTTPStore
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore, ObjectStore

from tessera_vz.core.geometry import project

CHUNK = 256
SHARD = 2048
BANDS = 128
#: Requests zarr keeps in flight per array operation while the benchmark reads.
CONCURRENCY = 64
#: Distinct chunks of content; each written chunk copies one (zstd compresses
#: every chunk on its own, so repeats across chunks do not help it).
POOL = 4


@dataclass(frozen=True)
class ZoneGrid:
    """The zone lattice a rewrite covers: its top-left corner and shape in pixels."""

    epsg: int
    left: float
    top: float
    height: int
    width: int

    @classmethod
    def of(cls, tiles: xr.Dataset) -> ZoneGrid:
        """The lattice covering every tile of a tiles table (one EPSG)."""
        codes = np.unique(tiles["epsg"].values)
        if codes.size != 1:
            raise ValueError(f"a rewrite covers one CRS; these tiles have {codes.tolist()}")
        left = float(tiles["left"].values.min())
        top = float(tiles["top"].values.max())
        right = float((tiles["left"].values + 10.0 * tiles["width"].values).max())
        bottom = float((tiles["top"].values - 10.0 * tiles["height"].values).min())
        return cls(int(codes[0]), left, top, round((top - bottom) / 10), round((right - left) / 10))

    def pixels(
        self, lons: Any, lats: Any
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
        """Zone rows and columns of the pixels holding lon/lat points."""
        e, n = project(np.atleast_1d(lons), np.atleast_1d(lats), self.epsg)
        cols = np.floor((e - self.left) / 10.0).astype(np.int64)
        rows = np.floor((self.top - n) / 10.0).astype(np.int64)
        return rows, cols

    def rows_cols(self, ds: xr.Dataset) -> tuple[slice, slice]:
        """The zone rows and columns of a region the reader returned (its pixel centres)."""
        r = np.rint((self.top - ds["y"].values - 5.0) / 10.0).astype(np.int64)
        c = np.rint((ds["x"].values - 5.0 - self.left) / 10.0).astype(np.int64)
        return slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)


def chunk_box(rows: slice | NDArray[np.int64], cols: slice | NDArray[np.int64]) -> tuple[int, ...]:
    """Inner-chunk bounding box ``(cy0, cy1, cx0, cx1)`` (end exclusive) of some pixels."""
    if isinstance(rows, slice):
        r0, r1 = rows.start, rows.stop - 1
    else:
        r0, r1 = int(rows.min()), int(rows.max())
    if isinstance(cols, slice):
        c0, c1 = cols.start, cols.stop - 1
    else:
        c0, c1 = int(cols.min()), int(cols.max())
    return r0 // CHUNK, r1 // CHUNK + 1, c0 // CHUNK, c1 // CHUNK + 1


def _pool(seed: int) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """``POOL`` chunks of quantised Gaussian embeddings and their scales."""
    rng = np.random.default_rng(seed)
    emb = np.empty((POOL, CHUNK, CHUNK, BANDS), np.int8)
    sca = np.empty((POOL, CHUNK, CHUNK), np.float32)
    for k in range(POOL):
        v = rng.standard_normal((CHUNK, CHUNK, BANDS), dtype=np.float32)
        peak = np.abs(v).max(axis=-1)
        emb[k] = np.rint(v * (127.0 / peak[..., None])).astype(np.int8)
        magnitude = rng.lognormal(np.log(0.4), 0.3, (CHUNK, CHUNK)).astype(np.float32)
        sca[k] = np.minimum(magnitude * peak / 127.0, 0.99)
    return emb, sca


def write(
    path: Path, grid: ZoneGrid, boxes: Iterable[tuple[int, ...]], seed: int = 0
) -> dict[str, Any]:
    """Write the rewritten zone store with only the inner chunks in ``boxes`` filled.

    Each box is written in one call (zarr rewrites a shard per call), with
    every inner chunk copied from a small pool of realistic chunks. Returns
    what was written: chunks, bytes before and after compression, seconds.
    """
    store = LocalStore(path)
    common: dict[str, Any] = {"compressors": ZstdCodec(level=3)}
    emb = zarr.create_array(
        store, name="embeddings", shape=(grid.height, grid.width, BANDS), dtype="int8",
        chunks=(CHUNK, CHUNK, BANDS), shards=(SHARD, SHARD, BANDS), fill_value=0,
        dimension_names=("y", "x", "band"), **common,
    )  # fmt: skip
    sca = zarr.create_array(
        store, name="scales", shape=(grid.height, grid.width), dtype="float32",
        chunks=(CHUNK, CHUNK), shards=(SHARD, SHARD), fill_value=float("nan"),
        dimension_names=("y", "x"), **common,
    )  # fmt: skip
    pool_e, pool_s = _pool(seed)
    t0 = time.perf_counter()
    chunks: set[tuple[int, int]] = set()
    for cy0, cy1, cx0, cx1 in sorted(set(boxes)):
        h = min(cy1 * CHUNK, grid.height) - cy0 * CHUNK
        w = min(cx1 * CHUNK, grid.width) - cx0 * CHUNK
        e = np.empty((h, w, BANDS), np.int8)
        s = np.empty((h, w), np.float32)
        for cy in range(cy0, cy1):
            for cx in range(cx0, cx1):
                k = (cy * 7919 + cx * 104729) % POOL
                r, c = (cy - cy0) * CHUNK, (cx - cx0) * CHUNK
                rr, cc = min(CHUNK, h - r), min(CHUNK, w - c)
                e[r : r + rr, c : c + cc] = pool_e[k, :rr, :cc]
                s[r : r + rr, c : c + cc] = pool_s[k, :rr, :cc]
                chunks.add((cy, cx))
        rows = slice(cy0 * CHUNK, cy0 * CHUNK + h)
        cols = slice(cx0 * CHUNK, cx0 * CHUNK + w)
        emb[rows, cols, :] = e
        sca[rows, cols] = s
    seconds = time.perf_counter() - t0
    stored = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    raw = len(chunks) * CHUNK * CHUNK * (BANDS + 4)
    return {
        "layout": "embeddings int8 (y, x, band): chunks 256x256x128 (8.4 MB), shards "
        "2048x2048x128; scales float32 (y, x): chunks 256x256, shards 2048x2048; zstd 3",
        "zone_shape": [grid.height, grid.width, BANDS],
        "chunks_written": len(chunks),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "compression_ratio": raw / stored if stored else None,
        "write_s": seconds,
    }


class RewrittenStore:
    """The rewritten store served over HTTP(S), read with zarr's own async reads."""

    def __init__(self, url: str) -> None:
        store = ObjectStore(HTTPStore.from_url(url), read_only=True)
        self.emb = zarr.open_array(store, path="embeddings", mode="r")._async_array
        self.sca = zarr.open_array(store, path="scales", mode="r")._async_array

    def _run(self, *coros: Any) -> list[Any]:
        async def both() -> list[Any]:
            return list(await asyncio.gather(*coros))

        with zarr.config.set({"async.concurrency": CONCURRENCY}):
            return sync(both())

    def point(self, row: int, col: int) -> NDArray[np.float32]:
        """One pixel's dequantised embedding (both arrays read concurrently)."""
        e, s = self._run(self.emb.getitem((row, col, slice(None))), self.sca.getitem((row, col)))
        return np.asarray(e, np.float32) * np.float32(s)

    def points(self, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.float32]:
        """Dequantised embeddings ``(N, 128)`` of many pixels (coordinate selections)."""
        bands = np.arange(BANDS)
        e, s = self._run(
            self.emb.get_coordinate_selection((rows[:, None], cols[:, None], bands[None, :])),
            self.sca.get_coordinate_selection((rows, cols)),
        )
        return np.asarray(e, np.float32) * np.asarray(s, np.float32)[:, None]

    def region(self, rows: slice, cols: slice) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
        """Raw embeddings and scales of a window (as ``region(..., dequantise=False)``)."""
        e, s = self._run(
            self.emb.getitem((rows, cols, slice(None))), self.sca.getitem((rows, cols))
        )
        return np.asarray(e), np.asarray(s)
