"""The viewer's web application: the page, its static files and its public JSON/PNG API.

Every answer comes from the public reader API (:func:`tessera_vz.reader.open_store`):
tile cells from the per-year tiles tables, pixels from ``point``, previews and
downloads from ``region``, and downloads are written by the same
:func:`tessera_vz.export.write_region` as ``tessera-vz region --out``.

The application is read-only (GET and HEAD only), serves static files from its
own package only, and answers every bad request with a 4xx and a one-line JSON
``{"error": ...}``; an unexpected failure is a 500 with a one-line message (the
traceback goes to the server's log, never to the client). Endpoints are plain
functions, so Starlette runs them in its thread pool and a slow region read
never blocks the event loop; heavy requests (previews, downloads) are limited
to a few at a time so that memory stays bounded.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Transformer
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera_vz.core.coastline import land_file
from tessera_vz.core.coords import BBox, check_bbox, check_lonlat
from tessera_vz.export import write_region
from tessera_vz.reader import (
    ConfigurationError,
    SourceChangedError,
    SourceUnavailableError,
    TesseraStore,
)
from tessera_vz.serve.coverage import Coverage, feature_collection
from tessera_vz.serve.preview import preview_png

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Download formats of ``/api/region`` -> (suffix written by write_region, media type).
FORMATS = {"tif": ("tif", "image/tiff"), "zarr": ("zarr", "application/zip")}
#: Metres per degree of latitude, and of longitude at the equator (WGS84, rounded).
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON = 111_320.0


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for; larger requests get a 413.

    Attributes
    ----------
    preview_pixels
        10 m pixels of a preview box (2,000,000 = 14 x 14 km, 256 MB of int8 read).
    region_pixels
        10 m pixels of a download (float32: 512 bytes per pixel written).
    features
        Tile cells (or gaps) in one ``/api/tiles`` answer; the page then
        asks for the tiles of its view only.
    years
        Years in one time-series request.
    heavy_requests
        Previews and downloads computed at the same time (others wait).
    """

    preview_pixels: int = 2_000_000
    region_pixels: int = 1_000_000
    features: int = 50_000
    years: int = 50
    heavy_requests: int = 2


class ApiError(Exception):
    """A request the API refuses: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    line = " ".join(str(message).split()) or "error"
    return JSONResponse({"error": line}, status_code=status)


def _status_of(exc: BaseException) -> int:
    """HTTP status of a reader error: bad input 400, not indexed 404, source trouble 502."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, (SourceChangedError, SourceUnavailableError)):
        return 502
    if isinstance(exc, ConfigurationError):
        return 400
    if isinstance(exc, LookupError):
        return 404
    if isinstance(exc, ValueError):
        return 400
    return 500


def _api(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Run an endpoint, turning every failure into a one-line JSON error."""

    def endpoint(request: Request) -> Response:
        try:
            return fn(request)
        except Exception as exc:
            # A deliberate catch-all: a server answers every request. Our errors and the
            # built-in kinds they subclass get their 4xx/502 (``_status_of``); anything
            # else is a bug, a 500 whose traceback goes to the log, never to the client.
            status = _status_of(exc)
            if status >= 500:
                log.warning("%s %s failed: %s", request.method, request.url.path, exc,
                            exc_info=status == 500)  # fmt: skip
            message = str(exc) if status != 500 else f"internal error: {type(exc).__name__}"
            return _error(status, message)

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


# -- parameters -----------------------------------------------------------


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


def _pixels(bbox: BBox) -> float:
    """About how many 10 m pixels a lon/lat box holds (enough to enforce a limit)."""
    w, s, e, n = bbox
    mid = math.radians((s + n) / 2)
    width_m = (e - w) * M_PER_DEG_LON * max(math.cos(mid), 0.0)
    height_m = (n - s) * M_PER_DEG_LAT
    return width_m * height_m / 100.0


def _check_size(bbox: BBox, limit: int, what: str) -> None:
    pixels = _pixels(bbox)
    if pixels > limit:
        side = math.sqrt(limit) * 10 / 1000
        raise ApiError(
            413,
            f"the {what} box covers about {pixels:,.0f} pixels of 10 m, over the limit of "
            f"{limit:,} (about {side:.0f} x {side:.0f} km); draw a smaller box",
        )


def _values(vec: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in vec]


# -- the application --------------------------------------------------------


def create_app(
    store: TesseraStore, *, limits: Limits | None = None, basemap: str | None = None
) -> Starlette:
    """The viewer over an open store.

    Parameters
    ----------
    store
        What :func:`tessera_vz.reader.open_store` returned.
    limits
        Request size limits (:class:`Limits`).
    basemap
        Optional XYZ raster tile URL template (``https://…/{z}/{x}/{y}.png``)
        the page shows under the tile cells when it can reach it; ``None``
        (default) draws no basemap, so the page needs no network at all.
    """
    lim = limits or Limits()
    coverage = Coverage(store)
    heavy = threading.BoundedSemaphore(lim.heavy_requests)

    def info(request: Request) -> Response:
        """Zones, years, bounds and limits: what the page needs to start."""
        years = coverage.years()
        return JSONResponse(
            {
                "store": store.root,
                "dataset": store.dataset(),
                "zones": store.zones(),
                "years": years,
                "tiles": {str(y): len(coverage.tiles(y)) for y in years},
                "bounds": coverage.bounds(),
                "limits": asdict(lim),
                "basemap": basemap,
            }
        )

    def _year_param(request: Request) -> int:
        return _year(_param(request, "year") or "")

    def _features(request: Request, gaps: bool) -> Response:
        year = _year_param(request)
        bbox = _bbox(request, required=False)
        cells = coverage.gaps(year) if gaps else coverage.tiles(year)
        count = int(cells.within(bbox).sum())
        if count > lim.features:
            raise ApiError(
                413,
                f"{count:,} {'gaps' if gaps else 'tiles'} of {year} in this area, over the limit "
                f"of {lim.features:,} per request; pass a smaller bbox=west,south,east,north",
            )
        return JSONResponse(feature_collection(cells, year, bbox))

    def tiles(request: Request) -> Response:
        """GeoJSON cells (0.1 degree) of the year's indexed tiles."""
        return _features(request, gaps=False)

    def gaps(request: Request) -> Response:
        """GeoJSON cells missing in the year (indexed in other years, or holes)."""
        return _features(request, gaps=True)

    def point(request: Request) -> Response:
        """The embedding of the pixel holding lon/lat, for one year or a time series."""
        lon, lat = _number(request, "lon"), _number(request, "lat")
        check_lonlat(lon, lat)
        years_text = _param(request, "years", required=False)
        if years_text is None:
            year = _year_param(request)
            loc = store.locate(lon, lat, year)
            vec = store.point(lon, lat, year)
            return JSONResponse(
                {"lon": lon, "lat": lat, "year": year, "zone": loc.zone, "tile": loc.name,
                 "row": loc.row, "col": loc.col, "embedding": _values(vec)}
            )  # fmt: skip
        years = (
            coverage.years()
            if years_text == "all"
            else sorted({_year(t) for t in years_text.split(",") if t.strip()})
        )
        if not years:
            raise ApiError(400, "years= names no year; give comma-separated years or 'all'")
        if len(years) > lim.years:
            raise ApiError(413, f"{len(years)} years asked, over the limit of {lim.years}")
        entries: dict[int, dict[str, Any]] = {}
        found = []
        for y in years:
            try:
                loc = store.locate(lon, lat, y)
            except LookupError as exc:
                entries[y] = {"year": y, "embedding": None, "error": " ".join(str(exc).split())}
                continue
            entries[y] = {"year": y, "zone": loc.zone, "tile": loc.name, "row": loc.row,
                          "col": loc.col}  # fmt: skip
            found.append(y)
        if found:
            series = store.point(lon, lat, years=found)
            for y, vec in zip(found, series, strict=True):
                entries[y]["embedding"] = _values(vec)
        return JSONResponse(
            {"lon": lon, "lat": lat, "years": years, "series": [entries[y] for y in years]}
        )

    def preview(request: Request) -> Response:
        """PNG false colour (3 principal components) of a box, with its corners in a header."""
        bbox = _bbox(request)
        assert bbox is not None
        year = _year_param(request)
        _check_size(bbox, lim.preview_pixels, "preview")
        with heavy:
            ds = store.region(bbox, year, dequantise=False)
            png = preview_png(ds)
        corners = _corners(ds)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Tessera-Corners": json.dumps(corners),
                "X-Tessera-Shape": f"{ds.sizes['y']},{ds.sizes['x']}",
                "X-Tessera-Crs": str(ds.attrs.get("proj:code", "")),
            },
        )

    def region(request: Request) -> Response:
        """The box as a file written by ``write_region``: GeoTIFF, or a zip of a Zarr store."""
        bbox = _bbox(request)
        assert bbox is not None
        year = _year_param(request)
        fmt = (_param(request, "format", required=False) or "tif").lower()
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        _check_size(bbox, lim.region_pixels, "download")
        suffix, media = FORMATS[fmt]
        stem = "tessera_{}_{}".format(year, "_".join(f"{v:.4f}" for v in bbox))
        work = Path(tempfile.mkdtemp(prefix="tessera-vz-region-"))
        try:
            with heavy:
                ds = store.region(bbox, year)
                target = work / f"{stem}.{suffix}"
                write_region(ds, target)
                if fmt == "zarr":
                    target = _zip_dir(target, work / f"{stem}.zarr.zip")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return FileResponse(
            target,
            media_type=media,
            filename=target.name,
            background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
        )

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{exc.detail}: {request.url.path}")

    routes = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/api/info", _api(info), methods=["GET", "HEAD"]),
        Route("/api/tiles", _api(tiles), methods=["GET", "HEAD"]),
        Route("/api/gaps", _api(gaps), methods=["GET", "HEAD"]),
        Route("/api/point", _api(point), methods=["GET", "HEAD"]),
        Route("/api/preview.png", _api(preview), methods=["GET", "HEAD"]),
        Route("/api/region", _api(region), methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=STATIC, follow_symlink=False), name="static"),
        # The land layer (Natural Earth, shipped): the map shows coasts with no network.
        Mount("/data", app=StaticFiles(directory=land_file().parent), name="data"),
    ]
    headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"content-security-policy", _csp(basemap).encode())]  # fmt: skip
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(SecurityHeaders, headers=headers)],
    )


class SecurityHeaders:
    """ASGI middleware adding fixed headers (no sniffing, no referrer, the page's CSP)."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _csp(basemap: str | None) -> str:
    """Page policy: own scripts only; MapLibre's worker is a blob; the basemap's origin."""
    extra = ""
    if basemap:
        from urllib.parse import urlsplit

        parts = urlsplit(basemap)
        extra = f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'self'; script-src 'self'; worker-src blob:; child-src blob:; "
        f"img-src 'self' data: blob:{extra}; connect-src 'self' blob:{extra}; "
        "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def _corners(ds: Any) -> list[list[float]]:
    """Lon/lat of the region's outer corners: top-left, top-right, bottom-right, bottom-left."""
    x = np.asarray(ds["x"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    dx = float(x[1] - x[0]) if x.size > 1 else 10.0
    dy = float(y[1] - y[0]) if y.size > 1 else -10.0
    left, right = x[0] - dx / 2, x[-1] + dx / 2
    top, bottom = y[0] - dy / 2, y[-1] + dy / 2
    to_lonlat = Transformer.from_crs(str(ds.attrs["proj:code"]), "EPSG:4326", always_xy=True)
    xs = np.array([left, right, right, left])
    ys = np.array([top, top, bottom, bottom])
    lon, lat = to_lonlat.transform(xs, ys)
    return [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]


def _zip_dir(src: Path, dest: Path) -> Path:
    """Zip a directory (a Zarr store) with paths relative to its parent (``x.zarr/...``)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(src.parent).as_posix())
    shutil.rmtree(src)
    return dest
