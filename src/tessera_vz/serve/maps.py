"""The viewer's maps: labelled places to a class or similarity map of a box, as an overlay.

``POST /api/map/classify`` and ``POST /api/map/similar`` take one JSON
object ``{"year": 2024, "bbox": [w, s, e, n], "places": [{"lon": …, "lat":
…, "label": "…"}, …]}`` (classify: ``"model"``, one of ``knn``, ``forest``,
``logistic``; similar: ``"label"``, the label whose places are the
references, all places without it). The map is computed by the functions
of :mod:`tessera_vz.maps` (the places sampled, a model fitted, every pixel
of the box's grid predicted or scored strip by strip) on a heavy thread.
The answer is JSON: the overlay PNG's and the GeoTIFF's URLs
(``/api/map/{id}.png|.tif``, written in the viewer's scratch folder), the
overlay's lon/lat corners, a legend and the model's report. The last
:data:`KEPT` maps are kept; older ones are removed.

Requests are untrusted as everywhere in the viewer: the body is at most
:data:`MAX_BODY` bytes of ``application/json`` (a form or a ``text/plain``
POST from another site is refused, and a JSON POST from another site needs
a CORS preflight the viewer never grants; an ``Origin`` naming another host
is refused as well), at most :data:`MAX_PLACES` places, the box within the
preview limit on its real grid (:func:`~tessera_vz.serve.guard.check_size`),
and a map is fetched only by the random id the server handed out.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from tessera_vz.core.coords import BBox, check_bbox, check_lonlat
from tessera_vz.serve.answers import api, api_async
from tessera_vz.serve.corners import corners_lonlat
from tessera_vz.serve.guard import ApiError, HeavyQueue, Limits, check_size, host_name
from tessera_vz.serve.scratch import Scratch

log = logging.getLogger(__name__)

#: Largest request body (bytes): 1,000 places of about 80 bytes each, with room.
MAX_BODY = 256 * 1024
#: Most labelled places in one request.
MAX_PLACES = 1000
#: Maps kept for download (older ones are removed).
KEPT = 16
#: Class colours of the overlay (RGB), in class-code order, repeated past twelve.
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#9a6324", "#469990", "#800000", "#000075"]  # fmt: skip
#: The similarity ramp, from the lowest score shown to the highest.
RAMP = ("#2b1a4c", "#f0b429")
#: Models a page may ask for.
MODELS = ("knn", "forest", "logistic")
_ID = re.compile(r"^[0-9a-f]{32}\Z")


def _colour(text: str) -> NDArray[np.uint8]:
    return np.array([int(text[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)


def _png(rgba: NDArray[np.uint8], path: Path) -> None:
    from PIL import Image

    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG", optimize=False)


def class_overlay(codes: NDArray[np.uint8], classes: list[str], nodata: int) -> NDArray[np.uint8]:
    """RGBA of a class map: each class its :data:`PALETTE` colour, no data transparent."""
    table = np.zeros((256, 4), np.uint8)
    for k in range(len(classes)):
        table[k, :3] = _colour(PALETTE[k % len(PALETTE)])
        table[k, 3] = 255
    table[nodata] = 0
    return table[codes]


def similarity_overlay(sim: NDArray[np.float32]) -> tuple[NDArray[np.uint8], float, float]:
    """RGBA of a similarity map on :data:`RAMP` from its 2nd percentile to its maximum."""
    valid = np.isfinite(sim)
    if not valid.any():
        return np.zeros((*sim.shape, 4), np.uint8), 0.0, 1.0
    lo, hi = float(np.percentile(sim[valid], 2)), float(sim[valid].max())
    t = np.clip((np.nan_to_num(sim, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)[..., None]
    a, b = _colour(RAMP[0]).astype(np.float32), _colour(RAMP[1]).astype(np.float32)
    rgba = np.zeros((*sim.shape, 4), np.uint8)
    rgba[..., :3] = np.round(a + (b - a) * t).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba, lo, hi


class MapFiles:
    """The maps made for the page: ``id`` -> folder in the scratch run folder, newest last."""

    def __init__(self, scratch: Scratch, kept: int = KEPT) -> None:
        self.scratch = scratch
        self.kept = kept
        self._maps: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> tuple[str, Path]:
        """A fresh id and folder; the oldest maps beyond :attr:`kept` are removed."""
        ident, folder = uuid.uuid4().hex, self.scratch.new()
        with self._lock:
            self._maps[ident] = folder
            while len(self._maps) > self.kept:
                _, old = self._maps.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)
        return ident, folder

    def file(self, ident: str, suffix: str) -> Path:
        """The ``map.{suffix}`` of a map, or a 404 (unknown, expired, or not an id)."""
        with self._lock:
            folder = self._maps.get(ident) if _ID.match(ident) else None
        path = folder / f"map.{suffix}" if folder is not None else None
        if path is None or not path.is_file():
            raise ApiError(404, "no such map (maps are kept for the last few requests); "
                                "compute it again")  # fmt: skip
        return path


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object, its type, size and origin checked."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"send the map request as application/json, not {kind or 'nothing'}")
    origin = request.headers.get("origin")
    if origin is not None:
        from urllib.parse import urlsplit

        host = host_name(request.headers.get("host", ""))
        if host_name(urlsplit(origin).netloc) != host:
            raise ApiError(403, "a map request must come from the viewer's own page")
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise ApiError(413, f"the request is {int(size):,} bytes, over {MAX_BODY:,}")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the request is over {MAX_BODY:,} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the request must be one JSON object")
    return doc


def _request(doc: dict[str, Any], lim: Limits) -> tuple[int, BBox, Any]:
    """Year, bbox (its grid within the preview limit) and places of a map request."""
    year = doc.get("year")
    if not isinstance(year, int) or isinstance(year, bool) or not 1900 <= year <= 2200:
        raise ApiError(400, f"year must be an integer such as 2024, got {year!r}")
    box = doc.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        raise ApiError(400, "bbox must be four numbers [west, south, east, north]")
    bbox = check_bbox([float(v) for v in box])
    check_size(bbox, lim.preview_pixels, "map")
    places = doc.get("places")
    if not isinstance(places, list) or not places:
        raise ApiError(400, "places must be a list of {lon, lat, label}: label places first")
    if len(places) > MAX_PLACES:
        raise ApiError(413, f"{len(places):,} places, over the limit of {MAX_PLACES:,}")
    lon, lat, label = [], [], []
    for k, p in enumerate(places):
        if not (isinstance(p, dict) and _number(p.get("lon")) and _number(p.get("lat"))):
            raise ApiError(400, f"place {k} must be an object with numbers lon and lat")
        check_lonlat(float(p["lon"]), float(p["lat"]))
        name = p.get("label", "")
        if not isinstance(name, str) or len(name) > 100:
            raise ApiError(400, f"place {k}: a label is a text of at most 100 characters")
        lon.append(float(p["lon"]))
        lat.append(float(p["lat"]))
        label.append(name.strip())
    import pyarrow as pa

    return year, bbox, pa.table({"lon": lon, "lat": lat, "label": label})


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def map_routes(store: Any, lim: Limits, heavy: HeavyQueue, scratch: Scratch) -> list[Route]:
    """The map endpoints of :func:`~tessera_vz.serve.app.create_app`."""
    from tessera_vz.maps.area import Area

    files = MapFiles(scratch)

    def finish(ds: Any, rgba: NDArray[np.uint8], write: Any, **doc: Any) -> dict[str, Any]:
        ident, folder = files.new()
        _png(rgba, folder / "map.png")
        write(folder / "map.tif")
        return {"id": ident, "png": f"/api/map/{ident}.png", "download": f"/api/map/{ident}.tif",
                "corners": corners_lonlat(ds), "shape": [ds.sizes["y"], ds.sizes["x"]],
                "crs": str(ds.attrs.get("proj:code", "")), **doc}  # fmt: skip

    async def classify(request: Request) -> Response:
        """Classes of every pixel of the box, by a model fitted on the labelled places."""
        doc = await _body(request)
        year, bbox, places = _request(doc, lim)
        kind = doc.get("model", "logistic")
        if kind not in MODELS:
            raise ApiError(400, f"model must be one of {', '.join(MODELS)}, got {kind!r}")

        def work() -> dict[str, Any]:
            from tessera_vz.export import write_map
            from tessera_vz.maps.classify import fit, predict, training_set
            from tessera_vz.maps.model import NODATA, class_tags

            x, labels, counts = training_set(store, places, year, "label", lon="lon", lat="lat")
            model = fit(x, labels, kind, store.dataset(), label="label", year=year)
            ds = predict(store, Area(bbox), year, model)
            codes = ds["classes"].values
            legend = [{"code": k, "name": name, "colour": PALETTE[k % len(PALETTE)],
                       "pixels": int((codes == k).sum())}
                      for k, name in enumerate(model.classes)]  # fmt: skip
            tags = class_tags(model.classes)
            report = {k: model.report.get(k) for k in ("samples", "folds", "accuracy")}
            return finish(
                ds, class_overlay(codes, model.classes, NODATA),
                lambda p: write_map(ds, "classes", p, nodata=NODATA, tags=tags),
                map="classes", model=kind, legend=legend, training=counts, report=report,
            )  # fmt: skip

        return JSONResponse(await heavy.run(work))

    async def similar(request: Request) -> Response:
        """Cosine similarity of every pixel of the box to the places of one label."""
        doc = await _body(request)
        year, bbox, places = _request(doc, lim)
        label = doc.get("label")
        if label is not None:
            if not isinstance(label, str):
                raise ApiError(400, f"label must be a text, got {label!r}")
            keep = [v == label.strip() for v in places.column("label").to_pylist()]
            if not any(keep):
                raise ApiError(400, f"no place is labelled {label!r}: label references first")
            places = places.filter(keep)

        def work() -> dict[str, Any]:
            from tessera_vz.export import write_map
            from tessera_vz.maps.cosine import reference_embeddings, similar

            refs = reference_embeddings(store, places, year, lon="lon", lat="lat")
            ds, _ = similar(store, Area(bbox), year, refs)
            rgba, lo, hi = similarity_overlay(ds["similarity"].values)
            legend = [{"value": round(lo, 4), "colour": RAMP[0]},
                      {"value": round(hi, 4), "colour": RAMP[1]}]  # fmt: skip
            return finish(
                ds, rgba, lambda p: write_map(ds, "similarity", p, nodata=np.float32(np.nan)),
                map="similarity", references=int(refs.shape[0]), legend=legend,
            )  # fmt: skip

        return JSONResponse(await heavy.run(work))

    def download(request: Request) -> Response:
        """A map made for the page: its overlay PNG or its GeoTIFF."""
        ident, suffix = request.path_params["ident"], request.path_params["suffix"]
        if suffix not in ("png", "tif"):
            raise ApiError(404, f"a map is .png or .tif, not .{suffix}")
        path = files.file(ident, suffix)
        if suffix == "png":
            return FileResponse(path, media_type="image/png")
        return FileResponse(path, media_type="image/tiff", filename=f"tessera_map_{ident[:8]}.tif")

    return [
        Route("/api/map/classify", api_async(classify), methods=["POST"]),
        Route("/api/map/similar", api_async(similar), methods=["POST"]),
        Route("/api/map/{ident}.{suffix}", api(download), methods=["GET", "HEAD"]),
    ]
