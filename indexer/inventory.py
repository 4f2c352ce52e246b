"""Which tiles exist: from an upstream ``manifest.parquet`` or by listing a tree.

Over HTTP(S) there is no directory listing, so a manifest is how tiles are
found there; a local or S3 tree can also be listed. Either way the result is
a list of :class:`TileSource` (paths relative to SOURCE) plus the rows that
were refused, each with its reason, so a bad row never stops the run.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import obstore
import pyarrow as pa
import pyarrow.parquet as pq
from tessera_vz.reader.errors import ConfigurationError, TesseraError
from tessera_vz.reader.geometry import utm_zone
from tessera_vz.reader.layout import parse_tile_name, source_paths, tile_name
from tessera_vz.reader.options import ReadOptions
from zarr.core.sync import sync

from .report import Failure
from .sources import SourceRoot, rebase

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("year", "lon", "lat", "grid_path", "scales_path")
_FILE_RE = re.compile(r"^(\d{4})/(grid_-?\d+\.\d\d_-?\d+\.\d\d)/\2(_scales)?\.npy$")


@dataclass(frozen=True)
class TileSource:
    """One tile of one year as found in the inventory."""

    year: int
    name: str
    lon: float
    lat: float
    emb_path: str
    scales_path: str

    @property
    def zone(self) -> int:
        return int(utm_zone(self.lon))


def _wanted(year: int, lon: float, years: set[int] | None, zones: set[int] | None) -> bool:
    return (years is None or year in years) and (zones is None or int(utm_zone(lon)) in zones)


def read_manifest_table(
    manifest: str,
    *,
    store_for_url: Any = None,
    options: dict[str, Any] | None = None,
    read: ReadOptions | None = None,
) -> pa.Table:
    """Load a manifest from a local path or a URL.

    An ``http(s)://`` or ``s3://`` manifest is fetched whole through the
    reader's boundary (``read`` gives its retry policy, S3 settings and
    extra CA; the manifest's own location is what it authorises);
    ``store_for_url`` reads it from a given obstore store instead.
    ``options`` is accepted for callers that pass obstore options.
    """
    parts = urlsplit(manifest)
    try:
        if parts.scheme in ("", "file"):
            local = unquote(parts.path) if parts.scheme else manifest
            return pq.read_table(Path(local).expanduser())
        if store_for_url is not None:
            data = obstore.get(store_for_url, parts.path.lstrip("/")).bytes().to_bytes()
            return pq.read_table(io.BytesIO(data))
        from tessera_vz.reader.sources import SourceFiles

        base = manifest.rsplit("/", 1)[0] + "/"
        files = SourceFiles([base], read if read is not None else ReadOptions())
        data = sync(files.fetch(manifest, "reading the manifest"))
        return pq.read_table(io.BytesIO(data))
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigurationError(
            f"cannot read manifest {manifest!r}: {exc}; expected an upstream TESSERA "
            f"manifest.parquet with columns {', '.join(MANIFEST_COLUMNS)}"
        ) from None
    except TesseraError as exc:
        raise ConfigurationError(f"cannot fetch manifest {manifest!r}: {exc}") from None
    except Exception as exc:  # obstore raises its own hierarchy
        raise ConfigurationError(f"cannot fetch manifest {manifest!r}: {exc}") from None


def from_manifest(
    table: pa.Table,
    root: SourceRoot,
    *,
    years: Iterable[int] | None = None,
    zones: Iterable[int] | None = None,
) -> tuple[list[TileSource], list[Failure]]:
    """Tiles listed by an upstream manifest, rebased onto ``root``.

    Rows with missing coordinates, paths outside SOURCE, paths that disagree
    with the row's lon/lat, or duplicates are refused with a reason.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigurationError(
            f"manifest lacks columns {missing}; found {table.column_names}. Expected the "
            "upstream TESSERA manifest.parquet schema"
        )
    want_years = set(years) if years is not None else None
    want_zones = set(zones) if zones is not None else None
    cols = {c: table.column(c).to_pylist() for c in MANIFEST_COLUMNS}
    tiles: list[TileSource] = []
    failures: list[Failure] = []
    seen: set[tuple[int, str]] = set()
    for year, lon, lat, grid, scales in zip(*(cols[c] for c in MANIFEST_COLUMNS), strict=True):
        where = grid if isinstance(grid, str) else None
        try:
            year = int(year)
            lon = float(lon)
            lat = float(lat)
        except (TypeError, ValueError):
            failures.append(
                Failure(
                    None,
                    None,
                    where,
                    f"manifest row has no year/lon/lat: {year!r}, {lon!r}, {lat!r}",
                )
            )
            continue
        if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lon) > 180 or abs(lat) > 90:
            failures.append(
                Failure(
                    year, None, where, f"manifest row has invalid coordinates lon={lon}, lat={lat}"
                )
            )
            continue
        if not _wanted(year, lon, want_years, want_zones):
            continue
        name = tile_name(lon, lat)
        if not isinstance(grid, str) or not isinstance(scales, str):
            failures.append(
                Failure(year, name, where, "manifest row lacks grid_path or scales_path")
            )
            continue
        try:
            emb = rebase(grid, root)
            sca = rebase(scales, root)
        except ValueError as exc:
            failures.append(Failure(year, name, grid, str(exc)))
            continue
        expect_emb, expect_sca = source_paths(year, name)
        if (emb, sca) != (expect_emb, expect_sca):
            failures.append(
                Failure(
                    year,
                    name,
                    grid,
                    f"manifest paths {emb!r}, {sca!r} do not match the row's year/lon/lat, which "
                    f"name {expect_emb!r}, {expect_sca!r}",
                )
            )
            continue
        if (year, name) in seen:
            failures.append(
                Failure(year, name, grid, "duplicate manifest row for this tile; kept the first")
            )
            continue
        seen.add((year, name))
        tiles.append(TileSource(year, name, lon, lat, emb, sca))
    log.info("manifest lists %d tiles (%d rows refused)", len(tiles), len(failures))
    return tiles, failures


def from_listing(
    store: Any,
    *,
    years: Iterable[int] | None = None,
    zones: Iterable[int] | None = None,
) -> tuple[list[TileSource], list[Failure]]:
    """Tiles found by listing a local or S3 tree (``{year}/grid_…/grid_….npy``)."""
    want_years = set(years) if years is not None else None
    want_zones = set(zones) if zones is not None else None
    top = obstore.list_with_delimiter(store, None)
    year_dirs = sorted(p.rstrip("/") for p in top["common_prefixes"] if p.rstrip("/").isdigit())
    found: dict[tuple[int, str], set[str]] = {}
    for ydir in year_dirs:
        year = int(ydir)
        if want_years is not None and year not in want_years:
            continue
        for batch in obstore.list(store, prefix=f"{ydir}/", chunk_size=10_000):
            for meta in batch:
                m = _FILE_RE.match(meta["path"])
                if m:
                    found.setdefault((year, m.group(2)), set()).add(
                        "scales" if m.group(3) else "emb"
                    )
    tiles: list[TileSource] = []
    failures: list[Failure] = []
    for (year, name), kinds in sorted(found.items()):
        lon, lat = parse_tile_name(name)
        if not _wanted(year, lon, want_years, want_zones):
            continue
        emb, sca = source_paths(year, name)
        if "emb" not in kinds:
            failures.append(
                Failure(year, name, emb, "embeddings file is missing (only the scales file exists)")
            )
            continue
        tiles.append(TileSource(year, name, lon, lat, emb, sca))
    log.info("listing found %d tiles", len(tiles))
    return tiles, failures
