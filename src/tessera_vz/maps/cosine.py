"""Similarity and change maps: cosine measures of every pixel's embedding.

:func:`similar` scores every pixel of an area by the cosine similarity of
its embedding to reference embeddings (the best, ``max``, or the ``mean``
over references), the search the TESSERA explorer and Earth Engine's
embedding tutorials make. :func:`change` is the cosine distance
``1 - cos(a, b)`` between one pixel's embeddings of two years, the measure
the AlphaEarth and TESSERA material use for change. Both are computed in
float64 (a pixel proportional to a reference scores exactly 1.0 after
rounding to float32) and strip by strip (:mod:`.strips`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from tessera_vz.core.errors import ConfigurationError, TileNotFoundError
from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.maps.area import Area
from tessera_vz.maps.matches import top_matches
from tessera_vz.maps.places import MAX_PIXELS_PER_POLYGON, place_embeddings
from tessera_vz.maps.strips import STRIP_PIXELS, Layer, chunks, map_strips, unit_rows

#: How similarities to several references combine.
REDUCERS = ("max", "mean")


def reference_embeddings(
    store: Any, references: Any, year: int, *,
    max_pixels_per_polygon: int = MAX_PIXELS_PER_POLYGON, **where: Any,
) -> NDArray[Any]:  # fmt: skip
    """Reference embeddings ``(n, bands)``: an array as given, or places read for ``year``.

    ``references`` is a 2-D array of embeddings, or anything
    :meth:`~tessera_vz.reader.store.TesseraStore.sample` accepts (a table
    of points, or of polygons whose every pixel is a reference, at most
    ``max_pixels_per_polygon`` each: :mod:`.places`; ``where`` passes its
    ``lon=``/``lat=``/``geometry=``/``crs=``). Places without data are
    left out; none with data is an error.
    """
    if isinstance(references, np.ndarray) and references.ndim == 2:
        return np.asarray(references, dtype=np.float64)
    got = place_embeddings(store, references, year, max_pixels=max_pixels_per_polygon, **where)
    if got.values.shape[0] == 0:
        raise TileNotFoundError(
            f"none of the reference places has an embedding in {year} ({got.counts}); "
            "pick references inside the indexed area"
        )
    return np.asarray(got.values, dtype=np.float64)


def similar(
    store: Any,
    area: Area,
    year: int,
    references: NDArray[Any],
    *,
    how: str = "max",
    top: int = 0,
    strip_pixels: int = STRIP_PIXELS,
    progress: ProgressStart = no_progress,
) -> tuple[xr.Dataset, Any]:
    """Cosine similarity of every pixel of ``area`` to ``references`` ``(n, bands)``.

    Returns the map (``similarity`` float32 in [-1, 1], NaN where no data,
    on the region's grid) and, with ``top`` > 0, the ``top`` most similar
    pixels as a GeoParquet-ready Arrow table (:func:`.matches.top_matches`),
    else ``None``.
    """
    if how not in REDUCERS:
        raise ConfigurationError(f"how must be one of {', '.join(REDUCERS)}; got {how!r}")
    refs = unit_rows(np.atleast_2d(references))
    if refs.shape[0] == 0:
        raise ConfigurationError("no reference embedding given")

    def strip(values: NDArray[np.float32], valid: NDArray[np.bool_]) -> dict[str, NDArray[Any]]:
        v = values[0]
        if v.shape[1] != refs.shape[1]:
            raise ConfigurationError(
                f"references have {refs.shape[1]} bands, the index {v.shape[1]}: references "
                "must come from the same dataset as the area"
            )
        sim = np.empty(v.shape[0], np.float32)
        for s in chunks(v.shape[0]):
            scores = unit_rows(v[s]) @ refs.T
            sim[s] = np.clip(scores.max(axis=1) if how == "max" else scores.mean(axis=1), -1, 1)
        return {"similarity": sim}

    layers = {"similarity": Layer(np.float32, np.nan, attrs={"long_name": "cosine similarity"})}
    attrs = {"tessera:map": "similarity", "tessera:similarity": how,
             "tessera:references": int(refs.shape[0]), "tessera:year": int(year)}  # fmt: skip
    ds = map_strips(store, area, [year], strip, layers, attrs=attrs, strip_pixels=strip_pixels,
                    progress=progress, label=f"similarity {year}")  # fmt: skip
    return ds, (top_matches(ds, "similarity", top) if top > 0 else None)


def change(
    store: Any,
    area: Area,
    years: Sequence[int],
    *,
    strip_pixels: int = STRIP_PIXELS,
    progress: ProgressStart = no_progress,
) -> xr.Dataset:
    """Cosine distance ``1 - cos`` between each pixel's embeddings of two years.

    ``change`` float32 in [0, 2] (0: the same direction), NaN where either
    year has no data, on the region's grid.
    """
    ys = [int(y) for y in years]
    if len(ys) != 2 or ys[0] == ys[1]:
        raise ConfigurationError(f"change compares two different years; got {list(years)}")

    def strip(values: NDArray[np.float32], valid: NDArray[np.bool_]) -> dict[str, NDArray[Any]]:
        dist = np.empty(values.shape[1], np.float32)
        for s in chunks(values.shape[1]):
            cos = np.einsum("ij,ij->i", unit_rows(values[0, s]), unit_rows(values[1, s]))
            dist[s] = 1.0 - np.clip(cos, -1.0, 1.0)
        return {"change": dist}

    layers = {"change": Layer(np.float32, np.nan, attrs={"long_name": "cosine distance"})}
    attrs = {"tessera:map": "change", "tessera:change_years": ys}
    return map_strips(store, area, ys, strip, layers, attrs=attrs, strip_pixels=strip_pixels,
                      progress=progress, label=f"change {ys[0]}-{ys[1]}")  # fmt: skip
