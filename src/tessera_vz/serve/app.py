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
never blocks the event loop; heavy requests (previews, downloads) run a few at
a time on threads of their own behind a bounded queue
(:class:`~tessera_vz.serve.guard.HeavyQueue`), so memory stays bounded and
light requests always find a thread. Requests are untrusted: sizes are
checked on the output grid, ``Host`` on a loopback bind, and error answers
name no local path (:mod:`tessera_vz.serve.guard`, :mod:`tessera_vz.serve.answers`).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import zipfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
from tessera_vz.core.coords import check_lonlat
from tessera_vz.core.text import printable
from tessera_vz.export import write_region
from tessera_vz.reader import TesseraStore
from tessera_vz.serve.answers import api, api_async, error_response
from tessera_vz.serve.corners import corners_lonlat
from tessera_vz.serve.coverage import Coverage, feature_collection
from tessera_vz.serve.guard import (
    ApiError,
    HeavyQueue,
    HostCheck,
    Limits,
    allowed_hosts,
    check_size,
)
from tessera_vz.serve.maps import map_routes
from tessera_vz.serve.params import _bbox, _number, _param, _values, _year
from tessera_vz.serve.preview import preview_png
from tessera_vz.serve.raster import Pyramids, tile_png
from tessera_vz.serve.scratch import Scratch

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Download formats of ``/api/region`` -> (suffix written by write_region, media type).
FORMATS = {"tif": ("tif", "image/tiff"), "zarr": ("zarr", "application/zip")}


# -- the application --------------------------------------------------------


def create_app(
    store: TesseraStore,
    *,
    limits: Limits | None = None,
    basemap: str | None = None,
    host: str = "127.0.0.1",
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
    host
        The address the server is bound to. When it is a loopback address,
        only requests whose ``Host`` is ``localhost``, ``127.0.0.1``,
        ``[::1]`` or ``host`` itself (any port) are answered, others get a
        400 (a DNS-rebinding page cannot drive the viewer); bound elsewhere
        the user chose to be reached by any name.
    """
    lim = limits or Limits()
    coverage = Coverage(store)
    pyramids = Pyramids(coverage)
    heavy = HeavyQueue(lim.heavy_requests, lim.heavy_queue, lim.heavy_wait)
    scratch = Scratch()

    def info(request: Request) -> Response:
        """Zones, years, bounds and limits: what the page needs to start."""
        # Every zone's records and its dataset, each zone's round trips beside the others'.
        with ThreadPoolExecutor(1, "tessera-vz-dataset") as pool:
            dataset = pool.submit(store.dataset)
            coverage.load()
        years = coverage.years()
        return JSONResponse(
            {
                "store": store.root,
                "dataset": dataset.result(),
                "zones": store.zones(),
                "years": years,
                "tiles": {str(y): coverage.count(y) for y in years},
                "gaps": {str(y): coverage.gap_count(y) for y in years},
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
        cells = coverage.gaps(year, bbox) if gaps else coverage.tiles(year, bbox)
        count = len(cells)
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

    def raster(request: Request) -> Response:
        """A PNG tile (XYZ, Web Mercator) of the year's cells and gaps: coverage at low zoom."""
        p = request.path_params
        year = _year(p["year"])
        if year not in coverage.years():
            raise ApiError(404, f"year {year} is not indexed; indexed years: {coverage.years()}")
        png = tile_png(pyramids.get(year), p["z"], p["x"], p["y"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

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

    async def preview(request: Request) -> Response:
        """PNG false colour (3 principal components) of a box, with its corners in a header."""
        bbox = _bbox(request)
        assert bbox is not None
        year = _year_param(request)
        check_size(bbox, lim.preview_pixels, "preview")

        def work() -> tuple[bytes, Any]:
            ds = store.region(bbox, year, dequantise=False)
            return preview_png(ds), ds

        png, ds = await heavy.run(work)
        corners = corners_lonlat(ds)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Tessera-Corners": json.dumps(corners),
                "X-Tessera-Shape": f"{ds.sizes['y']},{ds.sizes['x']}",
                "X-Tessera-Crs": str(ds.attrs.get("proj:code", "")),
            },
        )

    async def region(request: Request) -> Response:
        """The box as a file written by ``write_region``: GeoTIFF, or a zip of a Zarr store."""
        bbox = _bbox(request)
        assert bbox is not None
        year = _year_param(request)
        fmt = (_param(request, "format", required=False) or "tif").lower()
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        check_size(bbox, lim.region_pixels, "download")
        suffix, media = FORMATS[fmt]
        stem = "tessera_{}_{}".format(year, "_".join(f"{v:.4f}" for v in bbox))

        def work() -> tuple[Path, Path]:
            folder = scratch.new()
            try:
                target = folder / f"{stem}.{suffix}"
                write_region(store.region(bbox, year), target)
                if fmt == "zarr":
                    target = _zip_dir(target, folder / f"{stem}.zarr.zip")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            return folder, target

        folder, target = await heavy.run(work)
        return FileResponse(
            target,
            media_type=media,
            filename=target.name,
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        # The path is the client's own text, not ours: shown as sent.
        return error_response(exc.status_code, f"{exc.detail}: {request.url.path}", local=False)

    routes = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/api/info", api(info), methods=["GET", "HEAD"]),
        Route("/api/tiles", api(tiles), methods=["GET", "HEAD"]),
        Route("/api/gaps", api(gaps), methods=["GET", "HEAD"]),
        Route(
            "/api/coverage/{year}/{z:int}/{x:int}/{y:int}.png", api(raster), methods=["GET", "HEAD"]
        ),
        Route("/api/point", api(point), methods=["GET", "HEAD"]),
        Route("/api/preview.png", api_async(preview), methods=["GET", "HEAD"]),
        Route("/api/region", api_async(region), methods=["GET", "HEAD"]),
        *map_routes(store, lim, heavy, scratch),
        Mount("/static", app=StaticFiles(directory=STATIC, follow_symlink=False), name="static"),
        # The land layer (Natural Earth, shipped): the map shows coasts with no network.
        Mount("/data", app=StaticFiles(directory=land_file().parent), name="data"),
    ]
    headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"content-security-policy", _csp(basemap).encode())]  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scratch.open()  # also removes the downloads of viewers killed before their shutdown
        # The zones' records load while the page loads; /api/info waits for them.
        threading.Thread(
            target=_warm, args=(coverage,), name="tessera-vz-warm", daemon=True
        ).start()
        try:
            yield
        finally:
            heavy.close()
            scratch.close()

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        middleware=[
            Middleware(HostCheck, hosts=allowed_hosts(host)),
            Middleware(SecurityHeaders, headers=headers),
        ],
        lifespan=lifespan,
    )


def _warm(coverage: Coverage) -> None:
    """Load the coverage of every zone ahead of the first ``/api/info`` (which reports failures)."""
    try:
        coverage.load()
    except Exception as exc:  # /api/info loads again and answers the error
        log.info("coverage not loaded at start: %s", printable(str(exc)))


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


def _zip_dir(src: Path, dest: Path) -> Path:
    """Zip a directory (a Zarr store) with paths relative to its parent (``x.zarr/...``)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(src.parent).as_posix())
    shutil.rmtree(src)
    return dest
