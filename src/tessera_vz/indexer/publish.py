"""The zone list at an index's root, so the index can be read from a web server.

An index published next to the tiles on a static web server (nginx, a CDN,
an S3 website) cannot be listed, so a reader could not find its
``utm??.icechunk`` repositories. Every index run therefore writes a small
``zones.json`` at the index root naming the repositories that are there
(:data:`~tessera_vz.core.layout.ZONE_LIST`), rewritten at the end of each
run from what the root really holds, so it stays in step with them whether
the run changed anything or not. Publishing an index is then copying or
syncing its folder; the reader opens ``https://…/index/`` through it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore

from tessera_vz.core.dataset import Dataset
from tessera_vz.core.files import atomic_write_bytes
from tessera_vz.core.layout import ZONE_LIST, zone_list_document
from tessera_vz.core.repos import repositories
from tessera_vz.core.s3 import s3_settings

log = logging.getLogger(__name__)


def write_zone_list(
    out: str,
    s3_options: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
    source: str | None = None,
) -> dict[str, Any] | None:
    """Write ``zones.json`` at ``out`` from the repositories there; return the document.

    It also names the index's ``dataset`` (version, variant, path; ``None``
    when unknown) and the ``source`` root it reads.

    Nothing is written where no repository exists yet (a run that indexed
    nothing). Local files are replaced atomically; on S3 a put is atomic.
    """
    repos = repositories(out, s3_options)
    if not repos:
        return None
    doc = zone_list_document(repos, written=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    doc["dataset"] = dataset.document() if dataset is not None else None
    doc["source"] = source
    data = (json.dumps(doc, indent=1) + "\n").encode()
    parts = urlsplit(out)
    if parts.scheme == "s3":
        store = s3_settings(s3_options).obstore(out.rstrip("/") + "/")
        obstore.put(store, ZONE_LIST, data)
    else:
        root = Path(parts.path if parts.scheme == "file" else out).expanduser()
        same = _unchanged(root / ZONE_LIST, doc)
        if same is not None:
            # Nothing to say anew: an unchanged sync leaves the index's files as they were.
            return same
        # 0o644: readable by the web server that publishes it.
        atomic_write_bytes(root / ZONE_LIST, data, mode=0o644)
    log.info("wrote %s/%s (%d zones)", out.rstrip("/"), ZONE_LIST, len(repos))
    return doc


def _unchanged(path: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The zone list at ``path`` if it says what ``doc`` says (its time of writing aside)."""
    try:
        old = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict):
        return None
    keep = {k: v for k, v in old.items() if k != "written"}
    return old if keep == {k: v for k, v in doc.items() if k != "written"} else None
