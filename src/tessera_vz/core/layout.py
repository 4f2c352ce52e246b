"""Names and shapes of the index: where each fact lives in the repositories.

Both the indexer (which writes) and the reader (which finds) use these
functions, so the layout is defined in exactly one place.
"""

from __future__ import annotations

import re

from tessera_vz.core.text import printable

#: Bumped when what a tile group holds changes. Each year-branch commit records
#: the layout its groups follow (``tessera:layout_version`` in the commit's
#: metadata and the branch's root attributes; none means 1), and ``main`` the
#: oldest of its years. An index run that finds a year older than this
#: rewrites every group's metadata from the year's tiles table (no header is
#: read, no reference rewritten) in the same commit as its other changes.
#:
#: 1. groups of ``embeddings``, ``scales`` and the coordinates ``y``, ``x`` and
#:    ``band``; attributes ``proj:code``, ``spatial:*``, tile lon/lat/year and
#:    each file's header facts (url, npy version, dtype, shape, offset, size,
#:    checksum).
#: 2. a CF grid mapping: a 0-d ``spatial_ref`` coordinate (``crs_wkt``,
#:    ``spatial_ref``, ``GeoTransform``, CF projection parameters) named by
#:    ``grid_mapping`` on ``embeddings`` and ``scales``, so rioxarray, odc-geo
#:    and GDAL see each tile's CRS; no ``band`` coordinate (always 0..bands-1,
#:    readers take it from the dimension); the source files' URLs and header
#:    facts leave the group attributes (they are in the year's tiles table).
LAYOUT_VERSION = 2
#: Default byte budget of one virtual chunk (a run of whole rows).
CHUNK_BUDGET = 1 << 20
EMBEDDINGS = "embeddings"
SCALES = "scales"
TILES = "tiles"
#: The CF grid-mapping variable of every tile group (the name GDAL and
#: rioxarray use).
GRID_MAPPING = "spatial_ref"
BAND_COUNT = 128
_REPO_RE = re.compile(r"^utm(\d\d)\.icechunk\Z")
_TILE_RE = re.compile(r"^grid_(-?\d+\.\d\d)_(-?\d+\.\d\d)\Z")
_TAG_RE = re.compile(r"^(\d{4})-v(\d+)\Z")


#: File at an index's root listing its zone repositories (a web server cannot be listed).
ZONE_LIST = "zones.json"
ZONE_LIST_FORMAT = "tessera-vz zone list"


def zone_list_document(repos: dict[int, str], written: str) -> dict[str, object]:
    """The ``zones.json`` document naming each zone's repository."""
    return {
        "format": ZONE_LIST_FORMAT,
        "version": 1,
        "written": written,
        "zones": [{"zone": z, "repo": n} for z, n in sorted(repos.items())],
    }


def parse_zone_list(doc: object) -> dict[int, str]:
    """Zone -> repository name from a ``zones.json`` (untrusted: every name is checked).

    Only names of the form ``utmZZ.icechunk`` whose number is their zone are
    accepted, so a crafted list cannot point a reader outside the index root.
    """
    if not isinstance(doc, dict) or doc.get("format") != ZONE_LIST_FORMAT:
        raise ValueError(f"not a tessera-vz zone list (expected format {ZONE_LIST_FORMAT!r})")
    zones = doc.get("zones")
    if not isinstance(zones, list):
        raise ValueError("the zone list has no 'zones' array")
    out: dict[int, str] = {}
    for entry in zones:
        name = entry.get("repo") if isinstance(entry, dict) else None
        zone = zone_of_repo(name) if isinstance(name, str) else None
        if zone is None or not isinstance(name, str) or entry.get("zone") != zone:
            raise ValueError(f"zone list entry {entry!r} is not a zone and its utmZZ.icechunk")
        out[zone] = name
    return out


def repo_name(zone: int) -> str:
    """Directory (or key prefix) of a zone's repository: ``utm31.icechunk``."""
    if not 1 <= zone <= 60:
        raise ValueError(f"UTM zone must be 1-60, got {zone}")
    return f"utm{zone:02d}.icechunk"


def zone_of_repo(name: str) -> int | None:
    """Zone number (1-60) of a repository name, or ``None`` if it is not one of ours."""
    m = _REPO_RE.match(name)
    return int(m.group(1)) if m and 1 <= int(m.group(1)) <= 60 else None


#: Years an index may hold: four digits, from the first Sentinel archives to well ahead.
YEARS = range(1970, 2101)


def year_of_branch(name: str) -> int | None:
    """The year a branch holds (``"2024"``), or ``None`` for any other branch name.

    Branch names come from a repository (untrusted) and become directory
    names (``stac/utm31/2024/``) and messages, so only a plausible
    four-digit year is one.
    """
    if len(name) == 4 and name.isascii() and name.isdigit() and int(name) in YEARS:
        return int(name)
    return None


def check_tile_name(name: object) -> str:
    """``name`` if it is a TESSERA tile name exactly as the grammar writes it, else ``ValueError``.

    ``grid_<lon>_<lat>``: two decimals, the centre of a 0.1° cell (an odd
    multiple of 0.05), lon within ±180 and lat within ±90, written as
    :func:`tile_name` writes it (no ``+``, no leading zeros). A name from an
    index becomes a file name (``{tile}.json``), a group path and a message;
    only these can.
    """
    text = str(name)
    m = _TILE_RE.match(text) if isinstance(name, str) else None
    if m is not None:
        lon, lat = float(m.group(1)), float(m.group(2))
        centi = (round(lon * 100), round(lat * 100))
        if (
            abs(lon) <= 180
            and abs(lat) <= 90
            and all(c % 10 == 5 for c in centi)
            and tile_name(lon, lat) == text
        ):
            return text
    raise ValueError(
        f"tile name '{printable(text, 80)}' is not grid_<lon>_<lat> with the centre of a "
        "0.1 degree cell (two decimals, an odd multiple of 0.05, lon within 180 and lat within 90)"
    )


def tile_name(lon: float, lat: float) -> str:
    """Upstream tile name of a cell centre: ``grid_0.85_49.95``."""
    return f"grid_{lon:.2f}_{lat:.2f}"


def parse_tile_name(name: str) -> tuple[float, float]:
    """Cell centre (lon, lat) encoded in a tile name."""
    m = _TILE_RE.match(name)
    if not m:
        raise ValueError(f"not a TESSERA tile name: {name!r}; expected grid_<lon>_<lat>")
    return float(m.group(1)), float(m.group(2))


def branch_name(year: int) -> str:
    """A year's live branch."""
    return str(int(year))


def tag_name(year: int, version: int) -> str:
    """Immutable tag of the ``version``-th index of ``year``: ``2024-v3``."""
    return f"{int(year)}-v{int(version)}"


WORK_PREFIX = "tessera-work-"


def work_branch_name(year: int, token: str) -> str:
    """Scratch branch an index run writes its batches to before publishing them.

    The year branch only ever moves from one complete snapshot to the next;
    a run killed half-way leaves at most a scratch branch behind.
    """
    return f"{WORK_PREFIX}{int(year)}-{token}"


def parse_tag(tag: str) -> tuple[int, int] | None:
    """(year, version) of a tag name, or ``None`` for tags not made by us."""
    m = _TAG_RE.match(tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def source_paths(year: int, name: str) -> tuple[str, str]:
    """Embeddings and scales paths of a tile relative to the tree's root."""
    return f"{year}/{name}/{name}.npy", f"{year}/{name}/{name}_scales.npy"


def chunk_rows(height: int, row_nbytes: int, budget: int = CHUNK_BUDGET) -> int:
    """Rows per chunk: the largest divisor of ``height`` within ``budget`` bytes.

    A divisor makes every chunk a whole, equal run of contiguous file rows, so
    a regular Zarr chunk grid maps exactly onto the file with no partial last
    chunk. Rows wider than the budget still get one row per chunk.
    """
    if height <= 0:
        return 1
    best = 1
    limit = max(1, budget // max(1, row_nbytes))
    for k in range(1, int(height**0.5) + 1):
        if height % k == 0:
            for d in (k, height // k):
                if best < d <= limit:
                    best = d
    return best


def chunk_key(array_path: str, index: tuple[int, ...]) -> str:
    """Zarr v3 default-encoding key of one chunk."""
    return f"{array_path}/c/" + "/".join(str(i) for i in index)
