"""Embedding values: ``embeddings * scales``, and which scales mean no data.

A TESSERA pixel is valid only where its scale is finite, positive and below
one; anything else (NaN, 0, a negative or huge value) marks no data, and the
dequantised pixel is NaN rather than a plausible-looking number.
"""

from __future__ import annotations

import numpy as np


def valid_scale(scale: np.ndarray) -> np.ndarray:
    """Where a scale is usable: finite, > 0 and < 1 (else the pixel has no data)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(scale) & (scale > 0) & (scale < 1.0)


def dequantise(emb: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``emb * scale`` as float32, NaN where the scale is invalid.

    ``scale`` is per pixel (broadcast over the band axis) or per band.
    """
    s = np.asarray(scale, dtype=np.float32)
    if s.ndim == emb.ndim - 1:
        s = s[..., None]
    ok = valid_scale(s)
    # In place on the one float32 copy: a 1,000 x 1,000 x 128 region then
    # peaks at one output array (512 MB), not three.
    out = emb.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out *= np.where(ok, s, np.float32(np.nan))
    return out
