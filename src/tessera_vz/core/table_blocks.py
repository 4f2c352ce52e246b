"""A year's tiles table cut into one-degree blocks beside its repository, for cold points.

A cold point read from a published index used to fetch the year's snapshot
(about 400 B a tile) and the table's manifests and chunks (one manifest per
column): megabytes and some sixty requests for a 10,000-tile zone-year,
growing with the zone. A point needs only the tiles near it. So every
index run writes, for the snapshot it publishes on a year branch, the
table again as small blocks of the 1 x 1 degree squares (at most 100 tiles
each) beside the repository::

    utm35.icechunk/tessera-tables/2024/<snapshot id>/index.json
    utm35.icechunk/tessera-tables/2024/<snapshot id>/b25_-3.npz   (lon 25..26, lat -3..-2)

``index.json`` names the snapshot, zone, year, tile count and the blocks
that exist (at most 6 x 180 in a zone, however many tiles: its size does
not grow with the zone). A block is a compressed ``.npz`` of the
table's columns (``tile`` and :data:`~tessera_vz.core.table.COLUMNS` but
those only the indexer reads), with the snapshot id it was cut from as the
zip's comment. A reader that knows the snapshot it reads (the branch tip,
from the repository's info object) fetches ``index.json`` and the one to
four blocks around a point, together, and checks that both
name that snapshot: a block from another snapshot, a missing file or
anything malformed is refused (and the reader falls back to the table in
the repository), so the blocks cannot disagree with the repository silently.

Everything here is untrusted on the reading side: sizes are capped, the
``.npz`` is read without pickles and with its declared member sizes
checked before anything is decompressed, and every row must lie in its
block. Rows are then checked like the repository's table
(:func:`~tessera_vz.core.table.refused_rows`).
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.geometry import cell_centre
from tessera_vz.core.table import COLUMN_DEFAULTS, COLUMNS, TileColumns

#: The folder of a zone repository that holds the blocks.
FOLDER = "tessera-tables"
#: The document listing one snapshot's blocks.
INDEX = "index.json"
#: Version of the block layout (a reader refuses any other).
VERSION = 1
#: Largest ``index.json`` and block read (a block of 100 tiles is ~120 kB).
MAX_INDEX = 64 << 10
MAX_BLOCK = 2 << 20
_SNAPSHOT = re.compile(r"^[0-9A-Z]{20}\Z")
_BLOCK = re.compile(r"^b(-?\d{1,3})_(-?\d{1,2})\Z")


def check_snapshot(snapshot: str) -> str:
    """``snapshot`` if it is an Icechunk snapshot id (20 base-32 characters), else ValueError."""
    if not isinstance(snapshot, str) or not _SNAPSHOT.match(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    return snapshot


def folder(year: int, snapshot: str) -> str:
    """The path, relative to the repository, of one snapshot's blocks."""
    return f"{FOLDER}/{int(year)}/{check_snapshot(snapshot)}"


def block_name(lon_deg: int, lat_deg: int) -> str:
    """The name of the block of the square ``[lon_deg, lon_deg+1) x [lat_deg, lat_deg+1)``."""
    return f"b{int(lon_deg)}_{int(lat_deg)}"


def block_keys(lon: NDArray[Any], lat: NDArray[Any]) -> NDArray[np.int64]:
    """``(N, 2)`` integer degrees (floor) of each tile centre: the block it belongs to."""
    return np.stack([np.floor(lon), np.floor(lat)], axis=1).astype(np.int64)


def blocks_near(lon: float, lat: float, zone: int) -> list[str]:
    """Names of ``zone``'s blocks holding every tile whose pixels may hold ``(lon, lat)``.

    Those are the point's cell and its eight neighbours (tiles overlap their
    neighbours by a few pixels, no further): one block for most points, two
    or four for a cell on a block's edge. Blocks outside the zone's
    longitudes hold none of its tiles and are not asked for.
    """
    clon, clat = (float(v) for v in cell_centre(lon, lat))
    west = (zone - 1) * 6 - 180
    lons = sorted({math.floor(round(clon + d, 2)) for d in (-0.1, 0.0, 0.1)})
    lats = sorted({math.floor(round(clat + d, 2)) for d in (-0.1, 0.0, 0.1)})
    return [block_name(x, y) for x in lons if west <= x < west + 6 for y in lats]


def encode_block(columns: TileColumns, snapshot: str) -> bytes:
    """One block's rows as compressed ``.npz`` bytes.

    One member, ``rows``: the columns as one structured array, text as UTF-8
    bytes (NumPy's ``U`` spends four bytes a character), without the columns
    only the indexer reads (:data:`~tessera_vz.core.table.COLUMN_DEFAULTS`,
    what the inventory said); the snapshot id is the zip's comment. A block of
    12 tiles ~120 B a tile, of 100 ~75 (~215 and ~150 as two members of ``U``
    text with every column).
    """
    arrays = {"tile": np.asarray(columns.tile).astype(str)}
    arrays.update((k, np.asarray(v)) for k, v in columns.data.items() if k not in COLUMN_DEFAULTS)
    arrays = {k: np.char.encode(v, "utf-8") if v.dtype.kind == "U" else v
              for k, v in arrays.items()}  # fmt: skip
    rows = np.empty(arrays["tile"].size, dtype=[(k, v.dtype) for k, v in arrays.items()])
    for k, v in arrays.items():
        rows[k] = v
    npy = io.BytesIO()
    np.lib.format.write_array(npy, rows, allow_pickle=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.comment = check_snapshot(snapshot).encode()
        z.writestr("rows.npy", npy.getvalue())
    return buf.getvalue()


def index_document(zone: int, year: int, snapshot: str, tiles: int, blocks: list[str]) -> bytes:
    """``index.json`` of one snapshot's blocks."""
    doc = {
        "version": VERSION, "zone": int(zone), "year": int(year),
        "snapshot": check_snapshot(snapshot), "tiles": int(tiles), "blocks": sorted(blocks),
    }  # fmt: skip
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def parse_index(data: bytes, zone: int, year: int, snapshot: str) -> set[str]:
    """The blocks an ``index.json`` lists, after checking it describes this zone-year's snapshot.

    Raises ValueError saying what differs (another snapshot, a malformed document).
    """
    if len(data) > MAX_INDEX:
        raise ValueError(f"the block index is over {MAX_INDEX} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version-{VERSION} block index")
    if doc.get("snapshot") != snapshot:
        raise ValueError(f"it describes snapshot {str(doc.get('snapshot'))[:40]!r}, not {snapshot}")
    if doc.get("zone") != zone or doc.get("year") != year:
        raise ValueError(f"it describes zone {doc.get('zone')!r} year {doc.get('year')!r}")
    blocks = doc.get("blocks")
    if not isinstance(blocks, list) or len(blocks) > 6 * 180 + 1:
        raise ValueError("its block list is not a list of at most one zone's blocks")
    if not all(isinstance(b, str) and _BLOCK.match(b) for b in blocks):
        raise ValueError("its block list holds a name that is not a block")
    return set(blocks)


def decode_block(data: bytes, name: str, snapshot: str) -> TileColumns:
    """The rows of one block's ``.npz``, checked: this snapshot, every column, rows in the block.

    Raises ValueError saying what is wrong.
    """
    m = _BLOCK.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a block name")
    try:
        found = _check_members(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            rows: NDArray[Any] = npz["rows"] if "rows" in npz.files else np.zeros(0)
        arrays = {k: _text(np.ascontiguousarray(rows[k])) for k in rows.dtype.names or ()}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"not a readable block: {exc}") from None
    if found != snapshot:
        raise ValueError(f"it was cut from snapshot {found[:40]!r}, not {snapshot}")
    if "tile" in arrays:
        for k, default in COLUMN_DEFAULTS.items():
            arrays.setdefault(k, np.full(arrays["tile"].shape, default))
    missing = sorted((set(COLUMNS) | {"tile"}) - set(arrays))
    if missing:
        raise ValueError(f"it lacks the column(s) {missing}")
    tile = arrays.pop("tile")
    n = tile.shape[0] if tile.ndim == 1 else -1
    kinds = {k: np.dtype(d).kind for k, d in COLUMNS.items()}
    for k in COLUMNS:
        v = arrays[k]
        if v.shape != (n,) or v.dtype.kind != kinds[k]:
            raise ValueError(f"column {k} has shape {v.shape} and dtype {v.dtype}")
    if tile.dtype.kind != "U":
        raise ValueError("its tile names are not text")
    keys = block_keys(arrays["lon"], arrays["lat"])
    want = (int(m.group(1)), int(m.group(2)))
    if n and not (keys == np.asarray(want)).all():
        raise ValueError("it holds tiles outside its square")
    return TileColumns(tile, {k: arrays[k] for k in COLUMNS})


def _text(values: NDArray[Any]) -> NDArray[Any]:
    """A column as read back: UTF-8 bytes become text (``ValueError`` if not UTF-8)."""
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values


def _check_members(data: bytes) -> str:
    """Refuse a block whose members would decompress, or allocate, more than allowed.

    Each member's declared size is checked, and its array header's shape
    against that size, before :func:`numpy.load` allocates the array.
    Returns the zip's comment: the snapshot the block was cut from.
    """
    fmt = np.lib.format
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        comment = z.comment.decode("ascii", "replace")
        infos = z.infolist()
        if sum(i.file_size for i in infos) > 4 * MAX_BLOCK:
            raise ValueError("its members claim more than the size allowed")
        for info in infos:
            with z.open(info) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise ValueError(f"member {info.filename[:40]!r} claims more than it holds")
    return comment


def concatenate(parts: list[TileColumns]) -> TileColumns:
    """Blocks' rows as one table, sorted by tile name (as the repository's table is)."""
    if not parts:
        empty = {k: np.zeros(0, dtype=d if d != "U" else "<U1") for k, d in COLUMNS.items()}
        return TileColumns(np.zeros(0, "<U1"), empty)
    tile = np.concatenate([p.tile for p in parts])
    order = np.argsort(tile, kind="stable")
    data = {k: np.concatenate([p.data[k] for p in parts])[order] for k in COLUMNS}
    return TileColumns(tile[order], data)


__all__ = [
    "FOLDER",
    "INDEX",
    "block_keys",
    "block_name",
    "blocks_near",
    "concatenate",
    "decode_block",
    "encode_block",
    "folder",
    "index_document",
    "parse_index",
]
