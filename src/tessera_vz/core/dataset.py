"""Which TESSERA dataset an index holds: a ``(version, variant)`` pair, named as upstream does.

Upstream publishes each dataset in its own directory with its own manifest
(``npy/v1/`` = 1.0/vultr, ``npy/v1.1-cam/`` = 1.1/cambridge,
``npy/v2-2B-L~beta1/`` = 2.0/2B-L~beta1). The same pixel carries different
numbers in each, so an index holds exactly one, records it, and every output
names it. The names follow geotessera 0.11 (``geotessera/registry.py``:
``KNOWN_DATASETS``, ``dataset_path``, ``dataset_from_path``,
``_parse_dataset_version``, ``_version_path_from_norm``; the legacy
``global_0.1_degree_representation[.<variant>]`` variant directories of
``geotessera/registry_cli.py`` ``_VARIANT_RE``), and so do the GeoTIFF tags
(``geotessera/core.py``: ``TESSERA_DATASET_VERSION`` = ``1.1``,
``TESSERA_DATASET_VERSION_PATH`` = ``v1.1``, ``TESSERA_DATASET_VARIANT`` =
``cambridge``). ``TESSERA_DATASET_PATH`` (the directory, ``v1.1-cam``, as
upstream's ``tessera_metadata.json`` ``dataset_path``) and ``TESSERA_SOURCE``
(the mirror read) are ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera_vz.core.errors import ConfigurationError

#: Upstream's published datasets: (normalised version, variant, npy/ directory).
KNOWN_DATASETS = (
    ("1.0", "vultr", "v1"),
    ("1.1", "cambridge", "v1.1-cam"),
    ("2.0", "2B-L~beta1", "v2-2B-L~beta1"),
)
#: The variant a bare version directory means (upstream's default per version).
_DEFAULT_VARIANT = {"1.0": "vultr", "1.1": "cambridge", "2.0": "2B-L~beta1"}
_DIR_RE = re.compile(r"^v(\d+)(?:\.(\d+))?(?:-(.+))?\Z")
_VERSION_RE = re.compile(r"^v?(\d+)(?:\.(\d+))?\Z")
_LEGACY_VARIANT_RE = re.compile(r"^global_0\.1_degree_representation(?:\.([\w~-]+))?\Z")
#: The value an index written before datasets were recorded reports.
UNKNOWN = "unknown"
#: Output attribute -> upstream GeoTIFF tag (``geotessera/core.py``), plus ours.
GEOTIFF_TAGS = {
    "tessera:dataset_version": "TESSERA_DATASET_VERSION",
    "tessera:dataset_version_path": "TESSERA_DATASET_VERSION_PATH",
    "tessera:dataset_variant": "TESSERA_DATASET_VARIANT",
    "tessera:dataset_path": "TESSERA_DATASET_PATH",
    "tessera:source": "TESSERA_SOURCE",
}
#: Attribute keys every output carries (``tessera:dataset`` = ``1.1/cambridge``).
DATASET_KEYS = ("tessera:dataset", *GEOTIFF_TAGS)


class DatasetMismatchError(ConfigurationError):
    """Two datasets (or source roots) would be mixed; nothing was written or combined."""


def normalise_version(text: object) -> str | None:
    """``v1``/``1``/``1.0`` -> ``1.0``, ``v1.1`` -> ``1.1`` (``None``: not a version)."""
    m = _VERSION_RE.match(str(text).strip())
    return f"{m.group(1)}.{m.group(2) or '0'}" if m else None


def normalise_variant(text: object) -> str:
    """A variant, with upstream's legacy variant directory names mapped to theirs."""
    value = str(text).strip()
    m = _LEGACY_VARIANT_RE.match(value)
    return (m.group(1) or "vultr") if m else value


@dataclass(frozen=True, order=True)
class Dataset:
    """One upstream dataset: normalised ``version`` (``1.1``) and ``variant`` (``cambridge``)."""

    version: str
    variant: str

    @property
    def label(self) -> str:
        """``1.1/cambridge``: how the command line and the outputs name it."""
        return f"{self.version}/{self.variant}"

    @property
    def version_path(self) -> str:
        """``v1.1`` (``v1`` for 1.0): upstream's ``TESSERA_DATASET_VERSION_PATH``."""
        major, _, minor = self.version.partition(".")
        return f"v{major}" if minor in ("", "0") else f"v{major}.{minor}"

    @property
    def path(self) -> str:
        """The dataset's directory in upstream's ``npy/`` tree (``v1.1-cam``)."""
        if self.version == "1.0":
            return "v1"
        for v, var, d in KNOWN_DATASETS:
            if (v, var) == (self.version, self.variant):
                return d
        return f"{self.version_path}-{self.variant}"

    def attrs(self, source: str | None = None) -> dict[str, str]:
        """The ``tessera:dataset*`` attributes (and ``tessera:source``) an output carries."""
        out = {
            "tessera:dataset": self.label,
            "tessera:dataset_version": self.version,
            "tessera:dataset_version_path": self.version_path,
            "tessera:dataset_variant": self.variant,
            "tessera:dataset_path": self.path,
        }
        if source:
            out["tessera:source"] = source
        return out

    def document(self) -> dict[str, str]:
        """As recorded in ``zones.json`` and on each repository's ``main``."""
        return {"version": self.version, "variant": self.variant, "path": self.path}


def from_dir_name(name: str) -> Dataset | None:
    """The dataset a directory name means (``v1.1-cam`` -> 1.1/cambridge), else ``None``.

    Upstream's ``dataset_from_path``: known directories first, then
    ``v{major}[.{minor}][-{variant}]`` with the version's default variant.
    """
    for v, var, d in KNOWN_DATASETS:
        if d == name:
            return Dataset(v, var)
    m = _DIR_RE.match(name)
    if not m:
        return None
    version = f"{m.group(1)}.{m.group(2) or '0'}"
    return Dataset(version, m.group(3) or _DEFAULT_VARIANT.get(version, "vultr"))


def parse_dataset(text: str) -> Dataset:
    """``--dataset``: ``1.1/cambridge``, ``v1.1/cambridge``, ``v1.1-cam`` or ``1.1``."""
    value = text.strip()
    version, sep, variant = value.partition("/")
    norm = normalise_version(version)
    if sep and norm and variant.strip():
        return Dataset(norm, normalise_variant(variant))
    if not sep and norm:
        return Dataset(norm, _DEFAULT_VARIANT.get(norm, "vultr"))
    found = from_dir_name(value) if not sep else None
    if found is None:
        raise ConfigurationError(
            f"--dataset {text!r} is not a dataset; expected VERSION/VARIANT (1.1/cambridge, "
            "1.0/vultr) or an upstream directory name (v1, v1.1-cam, v2-2B-L~beta1)"
        )
    return found


def from_document(doc: object) -> Dataset | None:
    """A recorded dataset (:meth:`Dataset.document`), ``None`` if absent or malformed."""
    if not isinstance(doc, Mapping):
        return None
    version = normalise_version(doc.get("version", ""))
    variant = doc.get("variant")
    if version is None or not isinstance(variant, str) or not variant:
        return None
    return Dataset(version, variant)


def only_one(labels: Iterable[str | None], what: str) -> str:
    """The one dataset label of ``labels`` (``unknown`` if none); refuse two.

    Used where reads would be combined (zones of one index, results of
    several stores): different datasets must never meet in one result.
    """
    found = sorted({label for label in labels if label and label != UNKNOWN})
    if len(found) > 1:
        raise DatasetMismatchError(
            f"{what} would combine datasets {' and '.join(found)}: embeddings of different "
            "TESSERA datasets must not be mixed; read each dataset on its own"
        )
    return found[0] if found else UNKNOWN


def geotiff_tags(attrs: Mapping[str, object]) -> dict[str, str]:
    """Upstream's GeoTIFF tag names for the dataset attributes present in ``attrs``."""
    return {tag: str(attrs[key]) for key, tag in GEOTIFF_TAGS.items() if attrs.get(key)}


def same_dataset(*results: object) -> str:
    """The one dataset of several results (Datasets, DataArrays, Arrow tables); refuse two.

    Call it before combining results of several stores (``xr.concat``,
    ``pa.concat_tables``): each carries ``tessera:dataset`` in its attributes
    or schema metadata. Returns the label (``unknown`` when none says).
    """
    labels = []
    for r in results:
        attrs = getattr(r, "attrs", None)
        if isinstance(attrs, Mapping):
            labels.append(attrs.get("tessera:dataset"))
            continue
        meta = getattr(getattr(r, "schema", None), "metadata", None) or {}
        value = meta.get(b"tessera:dataset")
        labels.append(value.decode() if isinstance(value, bytes) else None)
    return only_one(labels, "combining these results")
