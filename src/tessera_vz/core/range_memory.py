"""Origins known to serve one range per request, remembered for the process and across runs.

Many object stores, CDNs and nginx with ``max_ranges 1`` answer a
multi-range request with the whole file (``200``). The boundary recognises
that answer from its status line and never reads its body, but each such
answer still costs a round trip and makes the server start sending a whole
tile. So the first one teaches the reader that the origin serves single
ranges (:func:`learn`): from then on its reads are planned as single,
coalesced ranges, in this process and in later ones, which read the small
JSON document kept in the user cache directory (``$TESSERA_VZ_CACHE``, else
platformdirs' ``user_cache_dir``; ``TESSERA_VZ_CACHE=off`` keeps it in
memory only).

An entry is forgotten after :data:`REMEMBER_DAYS` days, so a mirror that
starts serving multi-range requests is used that way again; forgetting
costs one whole-file answer's status line. The document is written
atomically under a lock (:mod:`~tessera_vz.core.files`); an unreadable one
is ignored (the reader learns again), never an error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from pathlib import Path

from tessera_vz.core.files import atomic_write_bytes, cache_dir, file_lock
from tessera_vz.core.urls import origin

log = logging.getLogger(__name__)

#: Days an origin stays known as single-range without being seen so again.
REMEMBER_DAYS = 30
FORMAT = "tessera-vz single-range origins"
FILE = "single-range-origins.json"

_lock = threading.Lock()
#: Memory file (``None``: memory only) -> origin key -> when it was learned (ISO 8601).
_known: dict[Path | None, dict[str, str]] = {}


def origin_key(url: str) -> str:
    """``scheme://host:port`` of ``url``: what a server's range support belongs to."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


def _file() -> Path | None:
    base = cache_dir()
    return None if base is None else base / FILE


def _load(path: Path | None) -> dict[str, str]:
    """The remembered origins still within :data:`REMEMBER_DAYS` (an unreadable file: none)."""
    if path is None or not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT or not isinstance(doc.get("origins"), dict):
            raise ValueError(f"not a {FORMAT!r} document")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=REMEMBER_DAYS)
        return {
            str(k): str(v)
            for k, v in doc["origins"].items()
            if dt.datetime.fromisoformat(str(v)) >= since
        }
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.info("ignoring the unreadable single-range memory %s: %s", path, exc)
        return {}


def _memory() -> tuple[Path | None, dict[str, str]]:
    path = _file()
    with _lock:
        if path not in _known:
            _known[path] = _load(path)
        return path, _known[path]


def single_range(url: str) -> bool:
    """Whether ``url``'s origin is known to answer multi-range requests with whole files."""
    return origin_key(url) in _memory()[1]


def learn(url: str) -> None:
    """Remember that ``url``'s origin serves one range per request (here and for later runs)."""
    key = origin_key(url)
    path, known = _memory()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with _lock:
        known[key] = now
    if path is None:
        return
    try:
        with file_lock(path.with_suffix(".lock")):
            merged = {**_load(path), key: now}
            doc = {"format": FORMAT, "version": 1, "origins": merged}
            atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    except OSError as exc:  # a read-only cache costs a lesson per process, nothing more
        log.info("could not remember %s in %s: %s", key, path, exc)


__all__ = ["REMEMBER_DAYS", "learn", "origin_key", "single_range"]
