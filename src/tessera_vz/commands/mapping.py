"""What ``classify``, ``similar`` and ``change`` share: the area, the checks, the report.

Each map command refuses everything it can before a pixel is read (the
area, its grid and size, the output, the years and pinned versions), then
computes its map strip by strip (:mod:`tessera_vz.maps.strips`, a progress
bar on stderr) and writes a Cloud-Optimised GeoTIFF with
:func:`tessera_vz.export.write_map`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera_vz.commands.common import check_versions, check_years, err
from tessera_vz.commands.region import checked_grid, resolution
from tessera_vz.core.coords import check_bbox
from tessera_vz.core.errors import ConfigurationError

#: Largest map, in pixels: the map itself is held in memory (a few bytes a pixel).
MAX_MAP_PIXELS = 100_000_000


def area_of(args: argparse.Namespace) -> Any:
    """The :class:`~tessera_vz.maps.area.Area` of the flags, its grid checked (no I/O).

    ``--region-file`` is read as ``region`` reads it (the polygons' box; no
    data outside them).
    """
    from tessera_vz.maps.area import Area

    if args.zone is not None and not 1 <= args.zone <= 60:
        raise ConfigurationError(f"--zone: UTM zones are 1-60, got {args.zone}")
    grid_flags = {"zone": args.zone, "crs": args.crs, "resolution": resolution(args.resolution)}
    if args.bbox:
        area = Area(check_bbox(tuple(args.bbox)), **grid_flags)
    else:
        from tessera_vz.vectorfiles import read_area

        polygon, crs = read_area(args.region_file)
        area = Area(polygon=polygon, polygon_crs=crs, **grid_flags)
    checked_grid(area.box, **grid_flags, limit=MAX_MAP_PIXELS, what="a map")
    return area


def check_area_years(store: Any, area: Any, years: Sequence[int]) -> None:
    """The years are indexed in the zones the area reaches, pinned versions exist (else exit 2)."""
    from tessera_vz.core.geometry import utm_zone

    w, _, e, _ = area.box
    zones = set(range(int(utm_zone(w)), int(utm_zone(e)) + 1))
    zones |= {area.zone} if area.zone else set()
    check_years(store, years, zones)
    check_versions(store, years, zones)


def check_out(
    path: str, flag: str = "--out", suffixes: tuple[str, ...] = (".tif", ".tiff"),
    *, overwrite: bool = False, beside: tuple[str, ...] = (),
) -> Path:  # fmt: skip
    """An output file of one of ``suffixes`` in a writable folder, new unless ``overwrite``.

    ``beside``: names of the files written next to it (``{stem}`` is the
    output's stem), checked the same way.
    """
    from tessera_vz.export import check_writable_folder

    target = Path(path)
    if target.suffix.lower() not in suffixes:
        raise ConfigurationError(
            f"{flag} must end in {' or '.join(suffixes)}; got {target.suffix or 'no suffix'} "
            f"in {path!r}"
        )
    check_writable_folder(target)
    files = [target, *(target.with_name(b.format(stem=target.stem)) for b in beside)]
    there = [f for f in files if f.exists()]
    if there and not overwrite:
        raise ConfigurationError(
            f"{str(there[0])!r} exists; pass --overwrite to replace it (or choose another {flag})"
        )
    return target


def report(args: argparse.Namespace, ds: Any, written: Sequence[Path], **extra: Any) -> None:
    """The command's report: one JSON object on stdout with ``--json``, else a line on stderr."""
    doc = {
        "out": args.out,
        "files": [str(f) for f in written],
        "shape": {"y": int(ds.sizes["y"]), "x": int(ds.sizes["x"])},
        "proj:code": ds.attrs.get("proj:code"),
        "grid": ds.attrs.get("tessera:grid"),
        "zones": ds.attrs.get("tessera:zones"),
        "tessera:versions": ds.attrs.get("tessera:versions"),
        "tessera:dataset": ds.attrs.get("tessera:dataset"),
        **extra,
    }
    if args.json:
        print(json.dumps(doc))
        return
    err.print(
        f"wrote {', '.join(doc['files'])}: {doc['shape']['y']} x {doc['shape']['x']} pixels in "
        f"{doc['proj:code'] or 'the requested CRS'} (read {doc['tessera:versions']})",
        markup=False,
    )
