"""Which sources a reader may contact for an index, and what the user allowed before.

The policy (``docs/security.md``): everything an index records is the
choice of whoever wrote it. Remote sources on public addresses are read by
default; ``file://`` sources, and sources on loopback, private, link-local
or multicast addresses (:mod:`~tessera_vz.core.addresses`), only with the
user's explicit permission: ``allow_local_sources``,
``allow_private_sources``, a root listed in ``allowed_sources`` (which,
when given, is the only list read), or a permission remembered for that
index. Prefixes match by parsed scheme, host, port and path on segment
boundaries (:func:`~tessera_vz.core.urls.under`).

Remembered permissions live on the user's machine (the user config
directory, ``$TESSERA_VZ_CONFIG`` to move it), one small JSON keyed by the
canonical URL of the index root, never inside the index, which travels:
``tessera-vz index`` records the SOURCE it read for the ``--out`` it wrote,
so the user who indexed a tree on their own machine reads it without
repeating a permission, and a copy of that index elsewhere (or someone
else's) gets none.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from tessera_vz.core.files import atomic_write_bytes, file_lock
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.urls import check_root, under

log = logging.getLogger(__name__)

FILE = "permissions.json"
FORMAT = "tessera-vz permissions"


def config_dir() -> Path:
    """``$TESSERA_VZ_CONFIG``, else the user config directory of tessera-vz."""
    env = os.environ.get("TESSERA_VZ_CONFIG")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("tessera-vz"))


def index_key(root: str) -> str:
    """The canonical URL of an index root: a local path as its resolved ``file://`` URI."""
    parts = urlsplit(root)
    if parts.scheme in ("", "file"):
        path = Path(parts.path if parts.scheme == "file" else root).expanduser().resolve()
        return path.as_uri().rstrip("/") + "/"
    scheme, host = parts.scheme.lower(), (parts.netloc or "").lower()
    return f"{scheme}://{host}{parts.path}".rstrip("/") + "/"


def _load() -> dict[str, list[str]]:
    path = config_dir() / FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable permissions file %s: %s", path, exc)
        return {}
    indexes = doc.get("indexes") if isinstance(doc, dict) else None
    if not isinstance(indexes, dict):
        return {}
    return {str(k): [str(s) for s in v] for k, v in indexes.items() if isinstance(v, list)}


def remembered(root: str) -> tuple[str, ...]:
    """Sources the user allowed for the index at ``root`` on this machine (maybe none)."""
    return tuple(_load().get(index_key(root), ()))


def remember(root: str, sources: Iterable[str]) -> None:
    """Record that the user allows ``sources`` for the index at ``root`` (kept, deduplicated)."""
    new = [check_root(s) for s in sources]
    folder = config_dir()
    try:
        _remember(folder, index_key(root), new)
    except OSError as exc:  # a read-only home: the run goes on, the user passes the flag
        log.warning("could not remember the sources of %s in %s: %s", root, folder, exc)


def _remember(folder: Path, key: str, new: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / (FILE + ".lock")):
        indexes = _load()
        have = indexes.get(key, [])
        if all(s in have for s in new):
            return
        indexes[key] = sorted({*have, *new})
        doc = {"format": FORMAT, "version": 1, "indexes": indexes}
        atomic_write_bytes(folder / FILE, json.dumps(doc, indent=1).encode())
    log.info("remembered that %s may read %s", key, ", ".join(new))


def with_remembered(root: str, options: ReadOptions) -> ReadOptions:
    """``options`` with the permissions remembered for the index at ``root``."""
    from dataclasses import replace

    have = remembered(root)
    return replace(options, remembered_sources=have) if have else options


def explicitly_allowed(url: str, options: ReadOptions) -> bool:
    """Whether the user named ``url``'s root: in ``allowed_sources`` or remembered."""
    named = (*(options.allowed_sources or ()), *options.remembered_sources)
    return any(under(url, p) for p in named)


def authorised(prefix: str, options: ReadOptions) -> bool:
    """Whether a source root recorded in an index may be read (addresses aside).

    With ``allowed_sources``, only roots under it; otherwise remote roots,
    and ``file://`` ones with ``allow_local_sources`` or a remembered
    permission. A root with dot segments or credentials is under nothing.
    """
    if options.allowed_sources is not None:
        return any(under(prefix, p) for p in options.allowed_sources)
    scheme = urlsplit(prefix).scheme
    if scheme == "file":
        return options.allow_local_sources or explicitly_allowed(prefix, options)
    return scheme in ("http", "https", "s3") and under(prefix, prefix)


def private_permitted(url: str, options: ReadOptions) -> bool:
    """Whether ``url`` may be on a loopback or private address (the user allowed it)."""
    return options.allow_private_sources or explicitly_allowed(url, options)


__all__ = [
    "authorised",
    "config_dir",
    "explicitly_allowed",
    "index_key",
    "private_permitted",
    "remember",
    "remembered",
    "with_remembered",
]
