"""A throwaway nginx serving a tile tree, with a request log a caller can read.

Upstream mirrors serve tiles as static files over HTTPS; ``tessera-vz demo``
serves its generated tree the same way, and so do the tests and benchmarks,
because several of our traps are server-specific (nginx compares
``If-Match`` literally, icechunk splits ranged reads into several
requests). The access log counts requests and bytes exactly.

The server runs the system's nginx binary in the foreground with a generated
config whose pid file, logs and temp paths all live in a private temp
directory, so it runs unprivileged or as root without touching ``/var``.
Given a server certificate (such as a test CA's,
:mod:`tessera_vz.testing.tls`) it serves HTTPS, as the real mirrors do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, Self

from tessera_vz.core.ports import fresh_port

logger = logging.getLogger(__name__)

NGINX_FALLBACK = "/usr/sbin/nginx"
NOT_FOUND_MESSAGE = (
    "nginx not found: install it with `apt-get install nginx-light` "
    "(make test does this when run as root)"
)
#: Fields of one access-log line, in order (tab-separated in the log).
LOG_FIELDS = (
    "method",
    "uri",
    "range",
    "status",
    "bytes_sent",
    "body_bytes_sent",
    "if_match",
    "if_unmodified_since",
    "user_agent",
    "request_time",
    "connection",
    "connection_requests",
)
_LOG_FORMAT = "\\t".join(
    [
        "$request_method",
        "$request_uri",
        "$http_range",
        "$status",
        "$bytes_sent",
        "$body_bytes_sent",
        "$http_if_match",
        "$http_if_unmodified_since",
        "$http_user_agent",
        "$request_time",
        "$connection",
        "$connection_requests",
    ]
)
_INT_FIELDS = frozenset(
    {"status", "bytes_sent", "body_bytes_sent", "connection", "connection_requests"}
)
#: Header fields where nginx logs an absent value as "-"; reported as None.
_HEADER_FIELDS = frozenset({"range", "if_match", "if_unmodified_since", "user_agent"})
_ESCAPE_RE = re.compile(r"\\x([0-9A-Fa-f]{2})")


class Certificate(Protocol):
    """A server certificate and its private key as PEM files (a ``TestCA`` is one)."""

    @property
    def server_cert(self) -> Path: ...

    @property
    def server_key(self) -> Path: ...


def find_nginx() -> str:
    """Path of the nginx binary, or RuntimeError saying how to install it."""
    found = shutil.which("nginx")
    if found:
        return found
    if os.access(NGINX_FALLBACK, os.X_OK):
        return NGINX_FALLBACK
    raise RuntimeError(NOT_FOUND_MESSAGE)


def _quote(value: str | Path) -> str:
    """Quote a path for nginx's config syntax."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _unescape(value: str) -> str:
    """Undo nginx's default log escaping (``\\xHH`` for quotes, backslash, controls)."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), value)


def parse_log_line(line: str) -> dict[str, Any]:
    """One access-log line as a dict keyed by :data:`LOG_FIELDS`.

    Counts become ints and ``request_time`` a float; absent request headers
    (logged by nginx as ``-``) become ``None``.
    """
    parts = line.rstrip("\n").split("\t")
    if len(parts) != len(LOG_FIELDS):
        raise ValueError(f"unexpected nginx access-log line: {line!r}")
    out: dict[str, Any] = {}
    for key, raw in zip(LOG_FIELDS, parts, strict=True):
        value = _unescape(raw)
        if key in _INT_FIELDS:
            out[key] = int(value)
        elif key == "request_time":
            out[key] = float(value)
        elif key in _HEADER_FIELDS and value == "-":
            out[key] = None
        else:
            out[key] = value
    return out


class NginxServer:
    """nginx serving ``root`` as static files on ``127.0.0.1``.

    Range requests, ``If-Match``/``If-Unmodified-Since`` (answered 412 when
    they fail) and ETags are nginx's own, exactly as on a real mirror. Use as
    a context manager or call :meth:`start` / :meth:`stop`.

    Parameters
    ----------
    root
        Directory to serve; ``{url}{relative path}`` fetches a file under it.
    port
        Port to listen on; default a free one chosen at start.
    max_ranges
        nginx's ``max_ranges``: with 1, a multi-range request is answered
        200 with the whole file, as by a mirror that does not serve them
        (S3 behind a CDN, some object gateways). Default: nginx's, no limit.
    worker_user
        Run the workers as this user (and group: ``"nobody nogroup"``), as a
        packaged nginx does, so files a server would refuse to publish (not
        world-readable) answer 403 here too. Needs root; default: the
        invoking user.
    tls
        Serve HTTPS with this server certificate (a test CA's:
        :func:`tessera_vz.testing.tls.make_test_ca`), as the real mirrors
        do; :attr:`url` is then ``https://127.0.0.1:PORT/``. Default: plain HTTP.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        port: int | None = None,
        max_ranges: int | None = None,
        tls: Certificate | None = None,
        worker_user: str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self._worker_user = worker_user
        self._max_ranges = max_ranges
        self.tls = tls
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    # -- lifecycle -------------------------------------------------------

    def _config(self, tmp: Path, port: int) -> str:
        """The whole nginx.conf: everything writable points into ``tmp``."""
        # As root, nginx would drop its worker to "nobody", who cannot read a
        # pytest tmp dir (mode 0700); keep the worker as the invoking user.
        user = "user root;\n" if os.geteuid() == 0 else ""
        if self._worker_user is not None:
            user = f"user {self._worker_user};\n"
        temp_paths = "\n".join(
            f"    {kind}_temp_path {_quote(tmp / kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        listen = f"127.0.0.1:{port}"
        ssl = ""
        if self.tls is not None:
            listen += " ssl"
            ssl = (
                f"        ssl_certificate {_quote(self.tls.server_cert)};\n"
                f"        ssl_certificate_key {_quote(self.tls.server_key)};\n"
                "        ssl_protocols TLSv1.2 TLSv1.3;\n"
                "        ssl_session_cache shared:tls:1m;\n"
            )
        return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {_quote(tmp / "nginx.pid")};
error_log {_quote(tmp / "error.log")} warn;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
{temp_paths}
    log_format tessera "{_LOG_FORMAT}";
    access_log {_quote(tmp / "access.log")} tessera;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server_tokens off;
    server {{
        listen {listen};
{ssl}        server_name localhost;
        root {_quote(self.root)};
        autoindex off;
        etag on;
{f"        max_ranges {self._max_ranges};" if self._max_ranges is not None else ""}
        location / {{
        }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> Self:
        """Start nginx and return once its port accepts connections.

        Retries on a fresh port if another process grabbed the chosen one
        between probing and nginx binding it.
        """
        if self._proc is not None:
            return self
        binary = find_nginx()
        if not self.root.is_dir():
            raise FileNotFoundError(f"cannot serve {self.root}: not a directory")
        attempts = 1 if self._requested_port is not None else 5
        last_error = ""
        for _ in range(attempts):
            tmp = Path(tempfile.mkdtemp(prefix="tessera-nginx-"))
            port = self._requested_port or fresh_port()
            conf = tmp / "nginx.conf"
            conf.write_text(self._config(tmp, port))
            (tmp / "access.log").touch()
            # Own session: a terminal's Ctrl-C reaches us, and we stop nginx.
            with open(tmp / "stderr.log", "wb") as stderr:
                proc = subprocess.Popen(
                    [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            if self._wait_ready(proc, port, timeout):
                self._proc, self._tmp, self._port = proc, tmp, port
                logger.info("nginx serving %s at %s", self.root, self.url)
                return self
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            last_error = "\n".join(
                (tmp / name).read_text(errors="replace")
                for name in ("stderr.log", "error.log")
                if (tmp / name).exists()
            ).strip()
            shutil.rmtree(tmp, ignore_errors=True)
            logger.warning("nginx failed to start on port %d: %s", port, last_error)
        raise RuntimeError(f"nginx failed to start: {last_error}")

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
        """Poll until the port answers (True) or nginx exits / time runs out (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop nginx (fast shutdown, then kill if it lingers) and remove its temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        # Never leave an orphaned nginx behind a test that forgot stop().
        with contextlib.suppress(Exception):
            self.stop()

    def wait(self) -> int:
        """Block until nginx exits; return its exit status."""
        if self._proc is None:
            raise RuntimeError("nginx is not running")
        return self._proc.wait()

    # -- introspection ---------------------------------------------------

    @property
    def port(self) -> int:
        """Listening port (only while running)."""
        if self._port is None or self._proc is None:
            raise RuntimeError("nginx is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL with a trailing slash: ``http(s)://127.0.0.1:PORT/``."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    @property
    def access_log(self) -> Path:
        """Path of the access log (tab-separated, one line per request)."""
        if self._tmp is None:
            raise RuntimeError("nginx is not running")
        return self._tmp / "access.log"

    @property
    def error_log(self) -> Path:
        """Path of nginx's error log, for diagnosing a failing test."""
        if self._tmp is None:
            raise RuntimeError("nginx is not running")
        return self._tmp / "error.log"

    def requests(self, min_count: int = 0, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Requests logged since start (or the last :meth:`clear_log`), oldest first.

        nginx writes a log line just after sending the response, so a client
        can see its response a moment before the line exists; ``min_count``
        waits up to ``timeout`` seconds for at least that many lines.
        Each dict has the keys of :data:`LOG_FIELDS`.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.access_log.read_text(errors="replace")
            lines = [ln for ln in text.splitlines() if ln]
            if len(lines) >= min_count or time.monotonic() >= deadline:
                return [parse_log_line(ln) for ln in lines]
            time.sleep(0.01)

    def clear_log(self) -> None:
        """Forget logged requests (nginx appends, so truncating in place is safe)."""
        os.truncate(self.access_log, 0)


def serve_forever(root: str | Path, *, port: int | None = None) -> None:
    """Serve ``root`` over nginx until Ctrl-C, SIGTERM or nginx exits, printing the URL.

    SIGTERM is turned into the same clean stop as Ctrl-C so that ``kill`` on
    the CLI never leaves an orphaned nginx (it runs in its own session).
    """

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with NginxServer(root, port=port) as server:
            print(f"serving {server.root} at {server.url} (Ctrl-C to stop)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
