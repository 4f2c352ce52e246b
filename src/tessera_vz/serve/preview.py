"""False-colour previews: three principal components of a region's embeddings as RGB.

Upstream TESSERA previews map the first three principal components of the
embeddings in view to red, green and blue; neighbouring pixels with similar
embeddings get similar colours, so fields, woods and towns stand out without
any labels. The components are fitted on a sample of the valid pixels (the
covariance of 20,000 pixels is as good as that of a million for three
components) and every pixel is projected in row blocks, so memory stays close
to the int8 region itself rather than its float32 copy.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from tessera_vz.reader.store import dequantise, valid_scale

log = logging.getLogger(__name__)

#: Valid pixels the components are fitted on.
SAMPLE_PIXELS = 20_000
#: Pixels projected at once (bounds the float32 work arrays to ~16 MB at 128 bands).
BLOCK_PIXELS = 32_768
#: Percentiles each component is stretched between (robust to a few outliers).
STRETCH = (2.0, 98.0)


def _values(emb: NDArray[np.int8], scales: NDArray[np.float32]) -> NDArray[np.float32]:
    """Dequantised ``(n, bands)`` values of ``n`` pixels (NaN where the scale is invalid)."""
    return dequantise(emb, scales)


def principal_rgb(emb: NDArray[np.int8], scales: NDArray[np.float32]) -> NDArray[np.uint8]:
    """RGBA ``(H, W, 4)`` uint8: the first three principal components as colour.

    Parameters
    ----------
    emb
        Raw int8 embeddings ``(H, W, bands)`` (``region(..., dequantise=False)``).
    scales
        Their scales, ``(H, W)`` or ``(H, W, bands)``.

    Pixels without data (invalid scale, or no tile) are transparent. Each
    component is stretched linearly between its 2nd and 98th percentile over
    the valid pixels; its sign is fixed so the component's largest loading is
    positive, so the same place keeps its colours from one request to the next.
    """
    h, w, bands = emb.shape
    flat_emb = emb.reshape(h * w, bands)
    flat_scale = scales.reshape(h * w, *scales.shape[2:])
    ok = valid_scale(flat_scale)
    if ok.ndim == 2:
        ok = ok.all(axis=1)
    rgba = np.zeros((h * w, 4), np.uint8)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return rgba.reshape(h, w, 4)
    rng = np.random.default_rng(0)
    sample = idx if idx.size <= SAMPLE_PIXELS else np.sort(rng.choice(idx, SAMPLE_PIXELS, False))
    x = _values(flat_emb[sample], flat_scale[sample]).astype(np.float64)
    mean = x.mean(axis=0)
    k = min(3, bands)
    if sample.size > 1:
        # Eigenvectors of the (bands x bands) covariance: one matrix product and a
        # 128 x 128 eigh, several times cheaper than an SVD of the whole sample.
        centred = x - mean
        _, vectors = np.linalg.eigh(centred.T @ centred)
        comps = vectors[:, ::-1][:, :k].T
    else:
        comps = np.eye(bands)[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = (comps * signs[:, None]).astype(np.float32)
    proj = np.empty((idx.size, k), np.float32)
    offset = (mean.astype(np.float32) @ comps.T).astype(np.float32)
    for start in range(0, idx.size, BLOCK_PIXELS):
        rows = idx[start : start + BLOCK_PIXELS]
        if flat_scale.ndim == 1:  # (emb * s) @ C = s * (emb @ C): no dequantised copy
            block = (flat_emb[rows].astype(np.float32) @ comps.T) * flat_scale[rows, None]
        else:
            block = _values(flat_emb[rows], flat_scale[rows]) @ comps.T
        proj[start : start + rows.size] = block - offset
    lo, hi = np.percentile(proj, STRETCH, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.clip((proj - lo) / span, 0.0, 1.0)
    rgba[idx, :k] = np.round(scaled * 255).astype(np.uint8)
    rgba[idx, 3] = 255
    return rgba.reshape(h, w, 4)


def preview_png(ds: xr.Dataset) -> bytes:
    """PNG bytes of :func:`principal_rgb` for a raw region (``dequantise=False``)."""
    from PIL import Image

    emb = np.asarray(ds["embeddings"].values)
    scales = np.asarray(ds["scales"].values, dtype=np.float32)
    rgba = principal_rgb(emb, scales)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    log.debug("preview %dx%d: %d bytes", rgba.shape[1], rgba.shape[0], buf.tell())
    return buf.getvalue()
