"""Query parameters of the viewer's API, checked: each bad one is a 400 saying what was expected."""

from __future__ import annotations

import math

import numpy as np
from starlette.requests import Request

from tessera_vz.core.coords import BBox, check_bbox
from tessera_vz.serve.guard import ApiError


def _param(request: Request, name: str, *, required: bool = True) -> str | None:
    value = request.query_params.get(name)
    if value is None or value.strip() == "":
        if required:
            raise ApiError(400, f"missing query parameter {name!r}")
        return None
    return value.strip()


def _number(request: Request, name: str) -> float:
    text = _param(request, name)
    try:
        return float(text or "")
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {text!r}") from None


def _year(text: str) -> int:
    try:
        year = int(text)
    except ValueError:
        raise ApiError(400, f"a year is an integer such as 2024, got {text!r}") from None
    if not 1900 <= year <= 2200:
        raise ApiError(400, f"year {year} is out of range")
    return year


def _bbox(request: Request, required: bool = True) -> BBox | None:
    text = _param(request, "bbox", required=required)
    if text is None:
        return None
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ApiError(
            400, f"bbox must be four comma-separated numbers west,south,east,north; got {text!r}"
        )
    return check_bbox(values)


def _values(vec: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in vec]
