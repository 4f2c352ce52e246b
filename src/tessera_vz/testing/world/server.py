"""An HTTPS server that computes every byte of the simulated world.

1.45 M tiles of ~100 MB cannot be files, even sparse ones (the inodes and
the time to create them cost more than the whole benchmark), so this server
answers for them from :mod:`~tessera_vz.testing.world.content`: the path
names the tile, the world arrays give its shape, mtime and generation, and
the formula gives the bytes of any range. It behaves as nginx serves static
files, since that is what the real mirrors run and what every client of ours
is tested against:

* ``GET``/``HEAD``, ``Content-Length``, ``Accept-Ranges: bytes``,
  ``Last-Modified`` and an nginx-style ``ETag`` (``"{mtime:x}-{size:x}"``),
  both stable per tile and generation;
* ``Range``: one range → ``206`` with ``Content-Range``; several →
  ``206 multipart/byteranges`` laid out as nginx lays it out; a syntax error,
  ``start > end`` or no satisfiable range → ``416``; ranges adding up to more
  than the file → ``200`` with the whole file (streamed), as nginx declines them;
* ``If-Unmodified-Since`` older than the file, or ``If-Match`` with no
  entry equal to the ETag *literally* (quotes included, as nginx compares:
  the trap an unquoted ETag from Icechunk falls into) → ``412``;
* ``{prefix}manifest.parquet`` is the real file of the dataset directory;
  anything else is ``404``.

``--delay`` waits that long before answering each request (an
``asyncio.sleep``: the latency costs no CPU). It runs in its own process
(:class:`~tessera_vz.testing.world.process.WorldServer`), so its event loop
never competes with the client measured. Counters of requests, statuses and
bytes are kept for the benchmark to read.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import re
import ssl
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiohttp import web

from tessera_vz.core.ports import fresh_port
from tessera_vz.testing.world import content
from tessera_vz.testing.world.cells import World

MANIFEST = "manifest.parquet"
#: Bytes computed per block of a whole-file (200) answer.
BLOCK = 4 << 20
_TILE = re.compile(r"(grid_(-?\d+\.\d\d)_(-?\d+\.\d\d))/\1(_scales)?\.npy")
_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass(frozen=True)
class Obj:
    """What the server knows of one file: its length, validators and bytes."""

    kind: str
    size: int
    mtime: int
    read: Callable[[int, int], bytes]

    @property
    def etag(self) -> str:
        return f'"{self.mtime:x}-{self.size:x}"'


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | int | None:
    """Half-open ranges of a ``Range`` header as nginx reads it.

    Returns the ranges, ``None`` to answer the whole file (200), or ``416``.
    """
    unit, _, specs = value.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    out: list[tuple[int, int]] = []
    for spec in specs.split(","):
        m = _SPEC.fullmatch(spec)
        if m is None or (not m[1] and not m[2]):
            return 416
        if not m[1]:  # suffix: the last n bytes
            start, stop = max(size - int(m[2]), 0), size
        else:
            start = int(m[1])
            if m[2] and start > int(m[2]):
                return 416
            stop = min(int(m[2]) + 1, size) if m[2] else size
        if start < stop:
            out.append((start, stop))
        elif start == 0:
            return None
    if not out:
        return 416
    return None if sum(b - a for a, b in out) > size else out


def precondition_failed(request: web.BaseRequest, obj: Obj) -> bool:
    """nginx's ``If-Unmodified-Since`` and ``If-Match`` tests (412 when either fails)."""
    since = request.headers.get("If-Unmodified-Since")
    if since is not None:
        try:
            when = email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return True  # nginx: an unparsable date is earlier than any file
        if when < obj.mtime:
            return True
    match = request.headers.get("If-Match")
    if match is not None and match.strip() != "*":
        return obj.etag not in [m.strip() for m in match.split(",")]
    return False


class WorldSite:
    """The request handler over one world (reloadable) and one dataset directory."""

    def __init__(self, world_path: Path, dataset_dir: Path, prefix: str, delay: float) -> None:
        self.world_path = world_path
        self.dataset_dir = dataset_dir
        self.prefix = prefix
        self.delay = delay
        self._cached: tuple[tuple[int, int], Obj] | None = None
        self.reload()
        self.stats: Counter[str] = Counter()

    def reload(self) -> None:
        """Read the world file again (a sync benchmark changed generations and mtimes)."""
        self.world = World.load(self.world_path)
        self.year_prefix = f"{self.prefix}{self.world.year}/"

    def lookup(self, path: str) -> Obj | None:
        if path == self.prefix + MANIFEST:
            return self._manifest()
        if not path.startswith(self.year_prefix):
            return None
        m = _TILE.fullmatch(path[len(self.year_prefix) :])
        if m is None:
            return None
        lon_i, lat_i = round(float(m[2]) * 100), round(float(m[3]) * 100)
        if m[1] != f"grid_{lon_i / 100:.2f}_{lat_i / 100:.2f}":
            return None
        i = int(self.world.find(np.array([lon_i]), np.array([lat_i]))[0])
        if i < 0:
            return None
        w = self.world
        kind = "scales" if m[4] else "emb"
        h, wd = int(w.height[i]), int(w.width[i])
        year = content.content_year(w.year, int(w.generation[i]))
        lon, lat = lon_i / 100, lat_i / 100

        def read(a: int, b: int) -> bytes:
            return content.read_range(kind, year, lon, lat, h, wd, a, b)

        return Obj(kind, content.file_size(kind, h, wd), int(w.mtime[i]), read)

    def _manifest(self) -> Obj | None:
        """The dataset's real manifest file, read again only when it changed."""
        file = self.dataset_dir / MANIFEST
        try:
            st = file.stat()
        except FileNotFoundError:
            return None
        if self._cached is None or self._cached[0] != (st.st_mtime_ns, st.st_size):
            data = file.read_bytes()
            obj = Obj("manifest", len(data), int(st.st_mtime), lambda a, b: data[a:b])
            self._cached = ((st.st_mtime_ns, st.st_size), obj)
        return self._cached[1]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        obj = self.lookup(request.path) if request.method in ("GET", "HEAD") else None
        self.stats["requests"] += 1
        self.stats[f"requests_{obj.kind if obj else 'other'}"] += 1
        if request.method not in ("GET", "HEAD"):
            return self._count(web.Response(status=405, headers={"Allow": "GET, HEAD"}))
        if obj is None:
            return self._count(web.Response(status=404, text="not found\n"))
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(obj.mtime, usegmt=True),
            "ETag": obj.etag,
        }
        if precondition_failed(request, obj):
            return self._count(web.Response(status=412, headers=headers))
        asked = request.headers.get("Range")
        ranges = parse_ranges(asked, obj.size) if asked is not None else None
        if ranges == 416:
            headers["Content-Range"] = f"bytes */{obj.size}"
            return self._count(web.Response(status=416, headers=headers))
        if isinstance(ranges, list) and len(ranges) == 1:
            (a, b), head = ranges[0], request.method == "HEAD"
            headers["Content-Range"] = f"bytes {a}-{b - 1}/{obj.size}"
            return self._send(request, 206, headers, b - a, None if head else obj.read(a, b))
        if isinstance(ranges, list):
            self.stats["multirange_requests"] += 1
            body = self._multipart(obj, ranges)
            headers["Content-Type"] = "multipart/byteranges; boundary=00000000023"
            return self._send(request, 206, headers, len(body), body)
        return await self._whole(request, obj, headers)

    def _multipart(self, obj: Obj, ranges: list[tuple[int, int]]) -> bytes:
        parts = []
        for a, b in ranges:
            parts.append(
                b"\r\n--00000000023\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Range: bytes {a}-{b - 1}/{obj.size}\r\n\r\n".encode()
                + obj.read(a, b)
            )
        return b"".join(parts) + b"\r\n--00000000023--\r\n"

    def _send(
        self, request: web.BaseRequest, status: int, headers: dict[str, str], length: int,
        body: bytes | None,
    ) -> web.Response:  # fmt: skip
        if request.method == "HEAD" or body is None:
            resp = web.Response(status=status, headers={**headers, "Content-Length": str(length)})
            return self._count(resp)
        return self._count(web.Response(status=status, body=body, headers=headers))

    async def _whole(
        self, request: web.BaseRequest, obj: Obj, headers: dict[str, str]
    ) -> web.StreamResponse:
        headers["Content-Length"] = str(obj.size)
        resp = web.StreamResponse(status=200, headers=headers)
        self._count(resp)
        await resp.prepare(request)
        if request.method == "GET":
            for a in range(0, obj.size, BLOCK):
                block = obj.read(a, min(a + BLOCK, obj.size))
                self.stats["bytes"] += len(block)
                await resp.write(block)
        await resp.write_eof()
        return resp

    def _count[R: web.StreamResponse](self, resp: R) -> R:
        self.stats[f"status_{resp.status}"] += 1
        body = getattr(resp, "body", None)
        if isinstance(body, bytes):
            self.stats["bytes"] += len(body)
        return resp


def _commands(site: WorldSite, loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Answer ``stats``, ``reset``, ``reload`` and ``delay S`` lines on stdin; EOF stops."""
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "stats":
            reply = json.dumps(dict(site.stats))
        elif word == "reset":
            site.stats.clear()
            reply = "{}"
        elif word == "reload":
            site.reload()  # one attribute swap: requests see the old or the new world
            reply = "{}"
        elif word == "delay":
            site.delay = float(arg)
            reply = "{}"
        else:
            break
        print(reply, flush=True)
    loop.call_soon_threadsafe(done.set)


async def _serve(args: argparse.Namespace) -> None:
    site = WorldSite(Path(args.world), Path(args.dataset_dir), args.prefix, args.delay)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    runner = web.ServerRunner(web.Server(site.handle, access_log=None), handle_signals=False)
    await runner.setup()
    for _ in range(5):
        port = args.port or fresh_port()
        try:
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=1024).start()
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the world server")
    print(f"https://127.0.0.1:{port}{args.prefix}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_commands, args=(site, loop, done), daemon=True).start()
    await done.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="serve a simulated TESSERA world over HTTPS")
    ap.add_argument("world", help="the world's .npz (World.save)")
    ap.add_argument("dataset_dir", help="folder holding the dataset's manifest.parquet")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--prefix", default="/npy/v1/")
    ap.add_argument("--port", type=int, default=0, help="port (default: a fresh one)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = ap.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
