"""Labelled places to a class map: sample, fit, cross-validate, predict every pixel.

:func:`training_set` reads the embeddings of labelled places: points
with ``store.sample`` (any table ``tessera-vz points`` reads), polygons
pixel by pixel through the region reader (:mod:`.places`). :func:`fit` fits a
scikit-learn model (:func:`.model.estimator`) and reports its k-fold
accuracy and confusion matrix. :func:`predict` applies a model to every
pixel of an area strip by strip (:mod:`.strips`): ``classes`` uint8 codes
(255 where no data) with the class table in its attributes, and with
``probabilities`` one float32 band per class.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.maps.area import Area
from tessera_vz.maps.model import NODATA, Model, estimator
from tessera_vz.maps.places import MAX_PIXELS_PER_POLYGON, place_embeddings, places_input
from tessera_vz.maps.strips import STRIP_PIXELS, Layer, chunks, map_strips
from tessera_vz.reader.samples import band_names

log = logging.getLogger(__name__)

#: Folds of the cross-validation by default.
FOLDS = 5


def training_set(
    store: Any, points: Any, year: int, label: str, *,
    max_pixels_per_polygon: int = MAX_PIXELS_PER_POLYGON, **where: Any,
) -> tuple[NDArray[np.float32], NDArray[np.str_], dict[str, int]]:  # fmt: skip
    """Embeddings ``(n, bands)`` and label names of the labelled places with data.

    ``points`` is anything ``store.sample`` takes (``where``: its
    ``lon=``/``lat=``/``geometry=``/``crs=``), or a
    :class:`~tessera_vz.reader.point_columns.PointsInput`; its rows are
    points (one pixel each) or polygons (every pixel inside, at most
    ``max_pixels_per_polygon``: :mod:`.places`). Rows without a label are
    not read. Returns also the counts of :class:`.places.PlaceEmbeddings`
    (point rows per status, polygon pixels) and ``no label``.
    """
    inp = places_input(store, points, **where)
    if label not in inp.table.column_names:
        raise ConfigurationError(
            f"--label {label!r} is not a column of the training table; columns: "
            f"{', '.join(c for c in inp.table.column_names if not c.startswith('b0'))}"
        )
    labels = np.asarray(inp.table.column(label).to_pylist(), dtype=object)
    has_label = np.array([v is not None and str(v) != "" for v in labels], dtype=bool)
    got = place_embeddings(store, inp, year, rows=np.flatnonzero(has_label),
                           max_pixels=max_pixels_per_polygon)  # fmt: skip
    counts = got.counts | ({"no label": int((~has_label).sum())} if not has_label.all() else {})
    names = np.asarray([str(v) for v in labels[got.rows]], dtype=str)
    return got.values, names, counts


def fit(
    x: NDArray[Any],
    labels: NDArray[Any],
    kind: str,
    dataset: dict[str, str],
    *,
    folds: int = FOLDS,
    label: str = "",
    year: int | None = None,
) -> Model:
    """Fit a model of ``kind`` on ``x`` and ``labels``; its report holds the k-fold accuracy.

    The cross-validation is stratified and shuffled with a fixed seed;
    ``folds`` is lowered to the smallest class's size (no validation when
    a class has one sample). ``report``: ``samples``, ``classes``,
    ``per_class``, ``folds``, ``accuracy``, ``confusion`` (rows: true
    class, columns: predicted, in class-code order).
    """
    classes = sorted({str(v) for v in labels})
    if len(classes) < 2:
        raise ConfigurationError(
            f"a classifier needs at least two classes with data; found {classes or 'none'} "
            f"in {len(labels)} labelled points with embeddings"
        )
    if len(classes) >= NODATA:
        raise ConfigurationError(
            f"at most {NODATA - 1} classes fit in a uint8 map; got {len(classes)}"
        )
    codes = np.searchsorted(np.asarray(classes), np.asarray(labels, dtype=str))
    counts = np.bincount(codes, minlength=len(classes))
    report: dict[str, Any] = {
        "samples": int(codes.size),
        "classes": classes,
        "per_class": {c: int(n) for c, n in zip(classes, counts, strict=True)},
    }
    k = min(int(folds), int(counts.min()))
    if k >= 2:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
        guess = cross_val_predict(estimator(kind, codes.size), x, codes, cv=cv)
        confusion = np.zeros((len(classes), len(classes)), np.int64)
        np.add.at(confusion, (codes, guess), 1)
        report.update(folds=k, accuracy=round(float((guess == codes).mean()), 6),
                      confusion=confusion.tolist())  # fmt: skip
    else:
        report.update(folds=0, accuracy=None, confusion=None)
        log.warning("no cross-validation: the smallest class has %d sample(s)", counts.min())
    model = estimator(kind, codes.size).fit(x, codes)
    return Model(kind, model, classes, band_names(x.shape[1]), dict(dataset), label, year, report)


def predict(
    store: Any,
    area: Area,
    year: int,
    model: Model,
    *,
    probabilities: bool = False,
    strip_pixels: int = STRIP_PIXELS,
    progress: ProgressStart = no_progress,
) -> xr.Dataset:
    """The class of every pixel of ``area`` in ``year``, by ``model``, computed strip by strip.

    ``classes`` uint8 (class code, :data:`~.model.NODATA` where no data)
    with CF ``flag_values``/``flag_meanings`` and the names in
    ``tessera:classes``; with ``probabilities`` also ``probabilities``
    ``(y, x, band)`` float32, one band per class (NaN where no data).
    Refuses a model of another dataset or band count before reading pixels.
    """
    model.check(store.dataset())
    n = len(model.classes)

    def strip(values: NDArray[np.float32], valid: NDArray[np.bool_]) -> dict[str, NDArray[Any]]:
        v = values[0]
        model.check(store.dataset(), v.shape[1])
        codes = np.empty(v.shape[0], np.uint8)
        probs = np.empty((v.shape[0], n), np.float32) if probabilities else None
        for s in chunks(v.shape[0]):
            if probs is None:
                codes[s] = model.estimator.predict(v[s])
                continue
            p = model.estimator.predict_proba(v[s])
            full = np.zeros((p.shape[0], n), np.float32)
            full[:, model.estimator.classes_] = p  # a class absent from a fold's fit stays 0
            probs[s] = full
            codes[s] = np.argmax(full, axis=1)
        return {"classes": codes} | ({"probabilities": probs} if probs is not None else {})

    names = " ".join(model.classes)
    layers = {"classes": Layer(np.uint8, NODATA, attrs={
        "long_name": "class", "flag_values": list(range(n)), "flag_meanings": names})}  # fmt: skip
    if probabilities:
        layers["probabilities"] = Layer(np.float32, np.nan, ("band",), n,
                                        {"long_name": "class probability"})  # fmt: skip
    attrs = {"tessera:map": "classes", "tessera:model": model.kind, "tessera:year": int(year),
             "tessera:classes": list(model.classes), "tessera:label": model.label}  # fmt: skip
    return map_strips(
        store, area, [year], strip, layers, attrs=attrs, strip_pixels=strip_pixels,
        progress=progress, label=f"classes {year}",
    )  # fmt: skip
