"""Turn a tile's two probed headers into a validated record, or a reason.

Everything the index stores about a tile comes from here: its geometry on the
zone lattice, the header facts of both files and their checksums. A tile
whose files disagree fails alone; an H, W that disagrees with the computed
geometry is kept (the header is the truth) and reported as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera_vz.core.errors import InvalidTileError
from tessera_vz.core.geometry import TileGrids
from tessera_vz.core.layout import chunk_rows
from tessera_vz.core.npy import NpyHeader, check_size
from tessera_vz.indexer.inventory import TileSource
from tessera_vz.indexer.probe import Probe
from tessera_vz.indexer.roots import SourceRoot, checksum_of, checksum_text


@dataclass(frozen=True)
class TileRecord:
    """One indexed tile: geometry, header facts and source checksums."""

    source: TileSource
    zone: int
    epsg: int
    left: float
    top: float
    emb: NpyHeader
    scales: NpyHeader
    emb_size: int
    scales_size: int
    emb_checksum: str
    scales_checksum: str
    emb_chunk_rows: int
    scales_chunk_rows: int
    warning: str | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def height(self) -> int:
        return self.emb.shape[0]

    @property
    def width(self) -> int:
        return self.emb.shape[1]

    @property
    def bands(self) -> int:
        return self.emb.shape[2]

    @property
    def fingerprint(self) -> tuple[int, int, str, str]:
        """What decides whether a re-run must re-index the tile."""
        return (self.emb_size, self.scales_size, self.emb_checksum, self.scales_checksum)


def build_record(
    tile: TileSource,
    emb: Probe,
    scales: Probe,
    grids: TileGrids,
    i: int,
    root: SourceRoot,
    budget: int,
) -> TileRecord:
    """Validate a tile's headers against each other and its geometry."""
    eh, sh = emb.header, scales.header
    if eh.dtype != np.dtype("int8") or len(eh.shape) != 3:
        raise InvalidTileError(
            f"embeddings must be int8 with shape (H, W, bands); found {eh.dtype.str} {eh.shape}"
        )
    if sh.dtype.kind != "f" or sh.dtype.itemsize != 4:
        raise InvalidTileError(f"scales must be float32; found {sh.dtype.str} {sh.shape}")
    h, w, b = eh.shape
    if min(h, w, b) < 1:
        # Icechunk refuses the zero-length chunks such a tile would need, and that
        # refusal would abort the whole zone-year: refused here, this tile alone.
        raise InvalidTileError(
            f"embeddings shape {eh.shape} has an empty axis; a tile holds at least one "
            "row, one column and one band"
        )
    if sh.shape not in ((h, w), (h, w, b)):
        raise InvalidTileError(
            f"scales shape {sh.shape} does not match embeddings shape {eh.shape}; expected "
            f"({h}, {w}) or ({h}, {w}, {b})"
        )
    check_size(eh, emb.size, what=f"embeddings file {tile.emb_path}")
    check_size(sh, scales.size, what=f"scales file {tile.scales_path}")
    gh, gw = int(grids.height[i]), int(grids.width[i])
    warning = None
    if (gh, gw) != (h, w):
        warning = (
            f"header shape {h}x{w} differs from the computed geometry {gh}x{gw}; the header is used"
        )
    return TileRecord(
        source=tile,
        zone=int(grids.zone[i]),
        epsg=int(grids.epsg[i]),
        left=float(grids.left[i]),
        top=float(grids.top[i]),
        emb=eh,
        scales=sh,
        emb_size=emb.size,
        scales_size=scales.size,
        emb_checksum=checksum_text(checksum_of(root, emb.meta)),
        scales_checksum=checksum_text(checksum_of(root, scales.meta)),
        emb_chunk_rows=chunk_rows(h, eh.row_nbytes, budget),
        scales_chunk_rows=chunk_rows(h, sh.row_nbytes, budget),
        warning=warning,
    )
