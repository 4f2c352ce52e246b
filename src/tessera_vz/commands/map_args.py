"""The arguments of the map commands (``classify``, ``similar``, ``change``, ``rgb``).

Kept beside :mod:`tessera_vz.cli` (which calls :func:`add_map_commands`)
so that module stays one screenful per concern; like it, this imports only
argparse, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_area_flags(p: argparse.ArgumentParser) -> None:
    """``--bbox W S E N`` or ``--region-file``, and the grid flags of ``region``."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"))
    where.add_argument("--region-file", metavar="AREA", help="polygons, as `region` reads them")
    p.add_argument("--zone", type=int, default=None, help="UTM zone (default: area centre)")
    p.add_argument("--crs", default=None, help="output CRS, e.g. EPSG:4326 (default: --zone's)")
    p.add_argument("--resolution", default=None, metavar="RES[,YRES]",
                   help="pixel size in the CRS's units (default: about 10 m)")  # fmt: skip


def add_map_commands(sub: Any, finish: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Add the four map commands to ``sub``; ``finish(parser, target)`` adds the CLI's common
    flags (progress, read flags) and names the function that runs the command."""
    cl = sub.add_parser("classify", help="labelled points to a class map (uint8 COG)")
    cl.add_argument(
        "training", nargs="?", help="labelled points or polygons: CSV, (Geo)Parquet, GeoJSON, GPKG"
    )
    cl.add_argument("--label", metavar="COLUMN", help="the training table's class column")
    cl.add_argument("--lon", metavar="COLUMN", help="longitude column (default: lon/longitude)")
    cl.add_argument("--lat", metavar="COLUMN", help="latitude column (default: lat/latitude)")
    cl.add_argument("--model", choices=("knn", "forest", "logistic"), default="forest",
                    help="scikit-learn model (default: forest)")  # fmt: skip
    cl.add_argument("--folds", type=int, default=5, help="k of the k-fold accuracy (default 5)")
    cl.add_argument("--probabilities", action="store_true",
                    help="also FILE_probabilities.tif: one band per class")  # fmt: skip
    cl.add_argument("--model-out", metavar="FILE.joblib", help="save the fitted model")
    cl.add_argument("--model-in", metavar="FILE.joblib", help="apply a saved model (no TRAINING)")
    sim = sub.add_parser("similar", help="cosine similarity of every pixel to reference places")
    sim.add_argument(
        "reference",
        nargs="?",
        help="reference points or polygons: CSV, (Geo)Parquet, GeoJSON, GPKG",
    )
    sim.add_argument("--lon", type=float, help="one reference place: longitude")
    sim.add_argument("--lat", type=float, help="one reference place: latitude")
    sim.add_argument("--how", choices=("max", "mean"), default="max",
                     help="combine the references' similarities (default: max)")  # fmt: skip
    sim.add_argument("--top", type=int, default=0, metavar="K", help="write the K best pixels")
    sim.add_argument("--matches", metavar="FILE.parquet", help="where --top writes (GeoParquet)")
    chg = sub.add_parser("change", help="cosine distance between two years' embeddings")
    chg.add_argument("--years", required=True, help="the two years compared, e.g. 2023,2024")
    pca = sub.add_parser("rgb", help="a false-colour picture: PCA of the area's embeddings")
    for mp in (cl, sim):
        mp.add_argument(
            "--max-pixels-per-polygon",
            type=int,
            default=10_000,
            metavar="N",
            help="pixels a polygon gives at most, drawn with a fixed seed (10,000)",
        )
    for mp, target in ((cl, "classify:cmd_classify"), (sim, "similar:cmd_similar"),
                       (chg, "change:cmd_change"), (pca, "rgb:cmd_rgb")):  # fmt: skip
        add_area_flags(mp)
        if mp is not chg:
            mp.add_argument("--year", required=True, help="the year mapped")
        mp.add_argument("--store", required=True)
        mp.add_argument("--out", required=True, help="FILE.tif (a COG; rgb: or FILE.png)")
        mp.add_argument("--json", action="store_true", help="print the report as one JSON object")
        mp.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        finish(mp, target)
