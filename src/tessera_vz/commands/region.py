"""``tessera-vz region``: a lon/lat box on one grid, as a COG, Zarr or NetCDF file.

Everything that can be refused is refused before a pixel is read: the bbox,
the output (format, folder, a GeoTIFF of several years), the grid (CRS,
resolution, size), the years and pinned versions. The region is read raw
(int8 embeddings and scales: a quarter of the memory of float32 values) and
:func:`~tessera_vz.export.write_region` dequantises it block by block while
writing, unless ``--raw`` keeps the scales.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tessera_vz.commands.common import (
    check_versions,
    check_years,
    open_index,
    out,
    parse_years,
    progress,
    wants_progress,
)
from tessera_vz.core.coords import check_bbox
from tessera_vz.core.errors import ConfigurationError


def resolution(text: str | None) -> tuple[float, float] | None:
    """``--resolution RES`` or ``RES,YRES`` as positive numbers."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(v > 0 and v < float("inf") for v in values):
        raise ConfigurationError(
            f"--resolution must be RES or XRES,YRES (positive, in the CRS's units); got {text!r}"
        )
    return (values[0], values[-1])


def checked_grid(
    bbox: tuple[float, float, float, float], *, crs: Any, resolution: Any, zone: int | None,
    limit: int, what: str, hint: str = "",
) -> Any:  # fmt: skip
    """The grid of ``bbox`` (a usage error for an unknown CRS, or over ``limit`` pixels)."""
    from tessera_vz.reader.grids import grid_for_bbox

    try:
        grid, _ = grid_for_bbox(bbox, crs=crs, resolution=resolution, zone=zone)
    except ValueError as exc:  # an unknown CRS, a grid that cannot be built
        raise ConfigurationError(f"{exc}") from None
    if grid.size > limit:
        raise ConfigurationError(
            f"bbox {list(bbox)} is {grid.height} x {grid.width} pixels on this grid, over the "
            f"{limit}-pixel limit of {what}; read a smaller bbox or pass a coarser "
            f"--resolution{hint}"
        )
    return grid


def region_of(args: argparse.Namespace) -> tuple[tuple[float, float, float, float], Any]:
    """The bbox, and the ``region()`` keywords of ``--region-file``'s polygon (if given)."""
    corners = (args.west, args.south, args.east, args.north)
    given = [v for v in corners if v is not None]
    if args.region_file is None:
        if len(given) != 4:
            raise ConfigurationError(
                f"region needs a bbox WEST SOUTH EAST NORTH (degrees) or --region-file AREA; "
                f"got {len(given)} number{'s' if len(given) != 1 else ''}"
            )
        return check_bbox(corners), {}
    if given:
        raise ConfigurationError(
            "give a bbox or --region-file, not both (the region is the polygon's box)"
        )
    from tessera_vz.reader.areas import area_bbox
    from tessera_vz.vectorfiles import read_area

    geometry, crs = read_area(args.region_file)
    return check_bbox(area_bbox(geometry, crs)), {"area": geometry, "area_crs": crs}


def cmd_region(args: argparse.Namespace) -> int:
    from tessera_vz.export import check_region_output, write_region
    from tessera_vz.reader.windows import MAX_PIXELS

    bbox, area = region_of(args)
    years = parse_years(args.year)
    check_region_output(args.out, years=len(years), raw=args.raw, overwrite=args.overwrite)
    if args.zone is not None and not 1 <= args.zone <= 60:
        raise ConfigurationError(f"--zone: UTM zones are 1-60, got {args.zone}")
    res = resolution(args.resolution)
    checked_grid(
        bbox,
        crs=args.crs,
        resolution=res,
        zone=args.zone,
        limit=MAX_PIXELS,
        what="a region",
        hint=" (open_zone in Python reads larger areas lazily)",
    )
    from tessera_vz.core.geometry import utm_zone

    store = open_index(args)
    zones = set(range(int(utm_zone(bbox[0])), int(utm_zone(bbox[2])) + 1))
    zones |= {args.zone} if args.zone else set()
    check_years(store, years, zones)
    check_versions(store, years, zones)
    with progress(wants_progress(args)) as start:
        ds = store.region(bbox, years if len(years) > 1 else years[0], zone=args.zone,
                          crs=args.crs, resolution=res, dequantise=False, progress=start,
                          **area)  # fmt: skip
        written = write_region(ds, args.out, raw=args.raw, progress=start)
    doc = {
        "out": args.out,
        "files": [str(f) for f in written],
        "zone": ds.attrs.get("tessera:zone"),
        "zones": ds.attrs.get("tessera:zones"),
        "shape": {k: int(v) for k, v in ds.sizes.items()},
        "proj:code": ds.attrs.get("proj:code"),
        "grid": ds.attrs["tessera:grid"],
        "raw": bool(args.raw),
        "tessera:versions": ds.attrs.get("tessera:versions"),
        "tessera:dataset": ds.attrs.get("tessera:dataset"),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        show_region(doc, ds.attrs)
    return 0


def show_region(doc: dict[str, Any], attrs: dict[str, Any]) -> None:
    """What a person reads: the files written; the grid, CRS, shape, dataset and version."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE, show_header=False, title="region written", title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    shape = " x ".join(f"{n} ({dim})" for dim, n in doc["shape"].items())
    transform = attrs.get("spatial:transform") or [None] * 6
    rows = [
        ("file" if len(doc["files"]) == 1 else "files", "\n".join(doc["files"])),
        ("grid", str(doc["grid"])),
        ("CRS", str(doc["proj:code"])),
        ("shape", shape),
        ("pixel", f"{transform[0]:g} x {-transform[4]:g}" if transform[0] else "?"),
        ("origin", f"{transform[2]:.12g}, {transform[5]:.12g} (top left)" if transform[0] else "?"),
        ("bbox", ", ".join(f"{v:g}" for v in attrs.get("tessera:bbox") or [])),
        ("zones", ", ".join(map(str, doc["zones"] or []))),
        ("values", "int8 embeddings + float32 scales" if doc["raw"] else "float32 (dequantised)"),
        ("dataset", str(attrs.get("tessera:dataset", "unknown"))),
        ("version", str(doc["tessera:versions"])),
        ("snapshot", str(attrs.get("tessera:snapshots"))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table, markup=False, highlight=False)
