"""``tessera-vz rgb``: a false-colour picture of an area (PCA fitted over the whole area).

``.tif``: a three-band uint8 COG (red, green, blue; nodata 0) on the
region's grid; ``.png``: an RGBA picture, transparent where no data
(Pillow, from the ``serve`` extra; a PNG carries no CRS).
"""

from __future__ import annotations

import argparse

from tessera_vz.commands.classify import _one_year
from tessera_vz.commands.common import open_index, progress, wants_progress
from tessera_vz.commands.mapping import area_of, check_area_years, check_out, report
from tessera_vz.core.errors import ConfigurationError


def cmd_rgb(args: argparse.Namespace) -> int:
    from tessera_vz.export import write_map
    from tessera_vz.maps.picture import rgb, write_png

    year = _one_year(args.year)
    area = area_of(args)
    out = check_out(args.out, suffixes=(".tif", ".tiff", ".png"), overwrite=args.overwrite)
    png = out.suffix.lower() == ".png"
    if png:
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "writing PNG needs Pillow: pip install 'tessera-vz[serve]' (or write .tif)"
            ) from None
    store = open_index(args)
    check_area_years(store, area, [year])
    with progress(wants_progress(args)) as start:
        ds = rgb(store, area, year, progress=start)
    if png:
        write_png(ds, str(out))
    else:
        write_map(ds, "rgb", out, nodata=0, band_names=("red", "green", "blue"))
    report(args, ds, [out], explained=ds.attrs["tessera:pca_explained"])
    return 0
