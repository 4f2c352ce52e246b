"""``tessera-vz classify``: labelled points or polygons to a class map (a uint8 COG, classes).

Checks first (area, output, model files, the training file and its label
column, years, versions, a loaded model's dataset), then: sample the
training points, fit the model and cross-validate it (or load one with
``--model-in``), predict every pixel strip by strip, and write the COG with
the class table in its tags and beside it as ``X_classes.csv`` and
``X_classes.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from tessera_vz.commands.common import err, open_index, parse_years, progress, wants_progress
from tessera_vz.commands.mapping import area_of, check_area_years, check_out, report
from tessera_vz.core.errors import ConfigurationError


def cmd_classify(args: argparse.Namespace) -> int:
    from tessera_vz.maps.classify import fit, predict, training_set
    from tessera_vz.maps.model import load_model

    year = _one_year(args.year)
    area = area_of(args)
    beside: tuple[str, ...] = ("{stem}_classes.csv", "{stem}_classes.json")
    beside += ("{stem}_probabilities.tif",) if args.probabilities else ()
    out = check_out(args.out, overwrite=args.overwrite, beside=beside)
    if args.model_out:
        check_out(args.model_out, "--model-out", (".joblib",), overwrite=args.overwrite)
    if (args.training is None) == (args.model_in is None):
        raise ConfigurationError("give a TRAINING table, or --model-in FILE.joblib (not both)")
    if args.training is not None and not args.label:
        raise ConfigurationError("--label COLUMN names the training table's class column")
    model = load_model(args.model_in) if args.model_in else None
    inp = None
    if args.training is not None:
        from tessera_vz.pointfiles import read_points_file

        inp = read_points_file(args.training, lon=args.lon, lat=args.lat, areas=True)
        if args.label not in inp.table.column_names:
            raise ConfigurationError(
                f"--label {args.label!r} is not a column of {args.training!r}; columns: "
                f"{', '.join(inp.table.column_names)}"
            )
    store = open_index(args)
    check_area_years(store, area, [year])
    if model is not None:
        model.check(store.dataset())
    with progress(wants_progress(args)) as start:
        if inp is not None:
            x, labels, counts = training_set(
                store, inp, year, args.label, max_pixels_per_polygon=args.max_pixels_per_polygon
            )
            model = fit(x, labels, args.model, store.dataset(), folds=args.folds,
                        label=args.label, year=year)  # fmt: skip
            model.report["training"] = counts
        assert model is not None
        if args.model_out:
            model.save(args.model_out)
        ds = predict(store, area, year, model, probabilities=args.probabilities, progress=start)
    written = write_classes(ds, model, out)
    if args.model_out:
        written.append(Path(args.model_out))
    scores = _scores(model.report)
    if not args.json and scores.get("accuracy") is not None:
        err.print(
            f"{model.kind}: {scores['folds']}-fold accuracy {scores['accuracy']:.3f} on "
            f"{scores['samples']} labelled points of {len(model.classes)} classes",
            markup=False,
        )
    report(args, ds, written, model=model.kind, classes=model.classes, **scores)
    return 0


def write_classes(ds: Any, model: Any, out: Path) -> list[Path]:
    """The class COG (and probabilities beside it), and the class table as CSV and JSON."""
    from tessera_vz.export import write_map
    from tessera_vz.maps.model import NODATA, class_table, class_tags

    table = class_table(model.classes)
    tags = class_tags(model.classes)
    written = [write_map(ds, "classes", out, nodata=NODATA, tags=tags)]
    if "probabilities" in ds:
        prob = out.with_name(f"{out.stem}_probabilities.tif")
        names = tuple(f"p_{name}" for name in model.classes)
        written.append(write_map(ds, "probabilities", prob, nodata=float("nan"),
                                 band_names=names, tags=tags))  # fmt: skip
    from tessera_vz.core.files import atomic_write_bytes

    csv_path = out.with_name(f"{out.stem}_classes.csv")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["code", "name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_bytes(csv_path, text.getvalue().encode())
    json_path = out.with_name(f"{out.stem}_classes.json")
    doc = {"classes": table, "nodata": NODATA, "model": model.kind, "label": model.label,
           "dataset": model.dataset.get("tessera:dataset"), **_scores(model.report)}  # fmt: skip
    atomic_write_bytes(json_path, json.dumps(doc, indent=1).encode())
    return [*written, csv_path, json_path]


def _scores(rep: dict[str, Any]) -> dict[str, Any]:
    keys = ("samples", "per_class", "folds", "accuracy", "confusion", "training")
    return {k: rep[k] for k in keys if k in rep}


def _one_year(text: str) -> int:
    years = parse_years(text)
    if len(years) != 1:
        raise ConfigurationError(f"a class map is of one year; --year names {len(years)}")
    return years[0]
