"""Which dataset an index holds, as its repositories record it, for every output to name.

The indexer records the dataset (``tessera:dataset``: version, variant,
path) and the source root (``tessera:source``) on each zone repository's
``main`` (:mod:`tessera_vz.indexer.datasets`). A read names them in its
provenance (``tessera:dataset`` = ``1.1/cambridge``, ``tessera:dataset_version``,
…; :meth:`tessera_vz.core.dataset.Dataset.attrs`). A read that would combine
zones recording different datasets is refused. An index written before
datasets were recorded reads as dataset ``unknown``. Repository attributes
are untrusted: a value that is not a dataset name is read as unknown.
"""

from __future__ import annotations

import re

import icechunk as ic
import zarr

from tessera_vz.core.dataset import UNKNOWN, from_document

_SOURCE_RE = re.compile(r"^[a-z0-9+.-]+://[^\s\x00-\x1f\x7f]{1,2000}\Z")
_VARIANT_RE = re.compile(r"^[\w.~+-]{1,64}\Z")


def recorded_identity(repo: ic.Repository) -> dict[str, str]:
    """The dataset attributes a repository's ``main`` records (``unknown`` if none)."""
    try:
        group = zarr.open_group(repo.readonly_session("main").store, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except (ic.IcechunkError, OSError, ValueError, KeyError):
        return {"tessera:dataset": UNKNOWN}
    dataset = from_document(attrs.get("tessera:dataset"))
    source = attrs.get("tessera:source")
    source = source if isinstance(source, str) and _SOURCE_RE.match(source) else None
    if dataset is None or not _VARIANT_RE.match(dataset.variant):
        return {"tessera:dataset": UNKNOWN, **({"tessera:source": source} if source else {})}
    return dataset.attrs(source)
