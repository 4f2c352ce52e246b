"""A false-colour picture of an area: its embeddings' first three principal components as RGB.

As geotessera's ``visualize`` and the viewer's preview do, but with the
principal components fitted once over the *whole* area, so strips (and
neighbouring tiles) share one colour scale. Two passes of strips
(:mod:`.strips`): the first accumulates the mean and the covariance of
every valid pixel's embedding in float64 (128 x 128 numbers, however large
the area), the second projects each pixel on the three leading components.
Each component is stretched linearly from its 2nd to its 98th percentile
over the area onto 1..255; 0 is no data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.maps.area import Area
from tessera_vz.maps.strips import STRIP_PIXELS, Layer, chunks, map_strips

#: Percentiles of each component mapped onto the ends of the colour scale.
STRETCH = (2.0, 98.0)


def rgb(
    store: Any,
    area: Area,
    year: int,
    *,
    strip_pixels: int = STRIP_PIXELS,
    progress: ProgressStart = no_progress,
) -> xr.Dataset:
    """``rgb`` uint8 ``(y, x, band)`` (red, green, blue; 0 where no data) of ``area`` in ``year``.

    Attributes name the components' explained variance ratios
    (``tessera:pca_explained``) besides the region's provenance.
    """
    sums: dict[str, Any] = {"n": 0, "s": None, "ss": None}

    def moments(values: NDArray[np.float32], valid: NDArray[np.bool_]) -> dict[str, NDArray[Any]]:
        for s in chunks(values.shape[1]):
            v = values[0, s].astype(np.float64)
            sums["n"] += v.shape[0]
            sums["s"] = v.sum(0) if sums["s"] is None else sums["s"] + v.sum(0)
            sums["ss"] = v.T @ v if sums["ss"] is None else sums["ss"] + v.T @ v
        return {}

    map_strips(store, area, [year], moments, {}, strip_pixels=strip_pixels, progress=progress,
               label=f"components {year}")  # fmt: skip
    mean = sums["s"] / sums["n"]
    cov = sums["ss"] / sums["n"] - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigval)[::-1][:3]
    axes = _signed(eigvec[:, order])
    explained = eigval[order] / max(float(eigval.sum()), 1e-300)

    def project(values: NDArray[np.float32], valid: NDArray[np.bool_]) -> dict[str, NDArray[Any]]:
        out = np.empty((values.shape[1], 3), np.float32)
        for s in chunks(values.shape[1]):
            out[s] = (values[0, s].astype(np.float64) - mean) @ axes
        return {"components": out}

    layers = {"components": Layer(np.float32, np.nan, ("band",), 3)}
    ds = map_strips(store, area, [year], project, layers, strip_pixels=strip_pixels,
                    progress=progress, label=f"colours {year}")  # fmt: skip
    pcs = ds["components"].values
    colours = stretch(pcs)
    out = ds.drop_vars("components").assign(
        rgb=(("y", "x", "band"), colours, {"long_name": "false colour (PCA)",
                                            "grid_mapping": "spatial_ref"}),
    )  # fmt: skip
    shares = [round(float(e), 6) for e in explained]
    out.attrs.update({"tessera:map": "rgb", "tessera:year": int(year),
                      "tessera:pca_explained": shares})  # fmt: skip
    return out


def stretch(pcs: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Components ``(y, x, 3)`` onto 1..255 between their percentiles; 0 where NaN."""
    ok = ~np.isnan(pcs).any(-1)
    colours = np.zeros(pcs.shape, np.uint8)
    if not ok.any():
        return colours
    for c in range(pcs.shape[-1]):
        v = pcs[..., c][ok]
        lo, hi = np.percentile(v, STRETCH)
        scaled = (v - lo) / (hi - lo) if hi > lo else np.full(v.shape, 0.5)
        colours[..., c][ok] = np.clip(np.rint(1 + 254 * scaled), 1, 255).astype(np.uint8)
    return colours


def _signed(axes: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each component's sign fixed (largest loading positive): the same colours every run."""
    flip = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])])
    return axes * np.where(flip == 0, 1.0, flip)


def write_png(ds: xr.Dataset, path: str) -> None:
    """The ``rgb`` picture as an RGBA PNG (transparent where no data), whole or not at all."""
    import io

    from PIL import Image

    from tessera_vz.core.files import atomic_write_bytes

    colours = ds["rgb"].values
    alpha = np.where(colours.any(-1), 255, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([colours, alpha])).save(buf, format="PNG")  # (h, w, 4): RGBA
    atomic_write_bytes(path, buf.getvalue())
