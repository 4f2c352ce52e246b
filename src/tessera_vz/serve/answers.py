"""The viewer's error answers: one line of JSON, the right status, and no local path.

A request to the viewer may come from anyone who reaches it, so an error
answer says what was wrong without telling where things lie on this machine:
absolute paths and ``file://`` URLs in a message become their last component
(``…/grid_0.75_49.75.npy``), and the full message goes to the server's log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tessera_vz.reader import ConfigurationError, SourceChangedError, SourceUnavailableError
from tessera_vz.serve.guard import ApiError

log = logging.getLogger(__name__)

#: A ``file:`` URL, or an absolute POSIX / Windows path not inside a word or URL.
_LOCAL = re.compile(r"file:/*[^\s'\"<>]*|(?<![\w.:/~-])(?:/|[A-Za-z]:[\\/])[^\s'\"<>,;)]*")


def scrub(text: str) -> str:
    """``text`` with every local path or ``file:`` URL reduced to its last component."""

    def last(match: re.Match[str]) -> str:
        name = re.split(r"[\\/]", match.group(0).rstrip("/\\"))[-1]
        return f"…/{name}" if name and not name.endswith(":") else "…"

    return _LOCAL.sub(last, text)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, *, local: bool = True
) -> Response:
    """A one-line JSON ``{"error": ...}``; local paths scrubbed unless ``local=False``.

    ``local=False`` is for messages that hold only the client's own text (the
    request path of a 404), which is no path of this machine.
    """
    line = " ".join(str(message).split())
    line = (scrub(line) if local else line) or "error"
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def status_of(exc: BaseException) -> int:
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


def failure(request: Request, exc: Exception) -> Response:
    """The answer to an endpoint's failure; the details (paths, traceback) go to the log."""
    # A deliberate catch-all: a server answers every request. Our errors and the
    # built-in kinds they subclass get their 4xx/502/503; anything else is a bug,
    # a 500 whose traceback goes to the log, never to the client.
    status = status_of(exc)
    if status >= 500 or scrub(str(exc)) != str(exc):
        log.warning("%s %s failed (%d): %s", request.method, request.url.path, status, exc,
                    exc_info=status == 500)  # fmt: skip
    message = str(exc) if status != 500 else f"internal error: {type(exc).__name__}"
    headers = exc.headers if isinstance(exc, ApiError) else None
    return error_response(status, message, headers)


def api(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """A light endpoint (run on Starlette's thread pool) whose failures are JSON errors."""

    def endpoint(request: Request) -> Response:
        try:
            return fn(request)
        except Exception as exc:
            return failure(request, exc)

    endpoint.__name__, endpoint.__doc__ = fn.__name__, fn.__doc__
    return endpoint


def api_async(
    fn: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A heavy endpoint (a coroutine handing its work to the heavy queue), same errors."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return failure(request, exc)

    endpoint.__name__, endpoint.__doc__ = fn.__name__, fn.__doc__
    return endpoint
