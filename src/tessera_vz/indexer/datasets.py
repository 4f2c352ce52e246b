"""One dataset per index: which one a run indexes, and no mixing with what is there.

A run's dataset comes from the manifest's ``version``/``variant`` columns
(a manifest of several datasets is filtered to the one asked for), else from
SOURCE's directory name by upstream's rules (``v1.1-cam`` -> 1.1/cambridge;
see :mod:`tessera_vz.core.dataset`), else from ``--dataset``; failing all
three it is unknown. An existing index records its dataset and source root
on each repository's ``main`` (``tessera:dataset``, ``tessera:source``);
indexing another dataset or another source root into it is refused before
anything is written (a deliberate move to another mirror of the same
dataset takes ``--move-source``). An index written before datasets were
recorded has an unknown dataset: the run's dataset is recorded when the run
reads the tree the index was made from, or when ``--dataset`` says it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import icechunk as ic
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from tessera_vz.core.dataset import (
    UNKNOWN,
    Dataset,
    DatasetMismatchError,
    from_dir_name,
    from_document,
    normalise_variant,
    normalise_version,
    parse_dataset,
)
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.repos import repositories, storage_for
from tessera_vz.indexer.roots import SourceRoot

log = logging.getLogger(__name__)

#: The manifest columns naming each row's dataset (upstream's s3scan writes both).
DATASET_COLUMNS = ("version", "variant")


@dataclass(frozen=True)
class Identity:
    """What an index holds: its dataset (``None``: unknown) and source root (``None``: none)."""

    dataset: Dataset | None
    source: str | None

    @property
    def label(self) -> str:
        return self.dataset.label if self.dataset else UNKNOWN


def _stat_pairs(pf: pq.ParquetFile) -> list[tuple[object, object]] | None:
    """The (version, variant) pairs from row-group statistics, when every group has one of each.

    Upstream's manifest holds one dataset, so each row group's minimum equals
    its maximum: the pairs cost no decoding of millions of rows (decoding and
    grouping them took ~3.5 s for 4.7 M rows). ``None`` when statistics do not say.
    """
    cols = [pf.schema_arrow.get_field_index(c) for c in DATASET_COLUMNS]
    pairs = set()
    for g in range(pf.metadata.num_row_groups):
        rg = pf.metadata.row_group(g)
        stats = [rg.column(c).statistics for c in cols]
        if rg.num_rows and not all(
            st is not None and st.has_min_max and st.min == st.max and st.null_count == 0
            for st in stats
        ):
            return None
        if rg.num_rows:
            pairs.add((stats[0].min, stats[1].min))
    return sorted(pairs, key=str)


def _pairs(manifest: pa.Table | pq.ParquetFile) -> dict[tuple[str, str], Dataset | None]:
    """Each distinct raw (version, variant) of a manifest and the dataset it means."""
    found = _stat_pairs(manifest) if isinstance(manifest, pq.ParquetFile) else None
    if found is None:
        t = manifest.read(columns=list(DATASET_COLUMNS)) if isinstance(
            manifest, pq.ParquetFile) else manifest.select(list(DATASET_COLUMNS))  # fmt: skip
        uniq = t.group_by(list(DATASET_COLUMNS)).aggregate([])
        found = list(zip(uniq.column(0).to_pylist(), uniq.column(1).to_pylist(), strict=True))
    out: dict[tuple[str, str], Dataset | None] = {}
    for v, var in found:
        version = normalise_version(v) if v is not None else None
        ok = version is not None and var not in (None, "")
        out[(str(v), str(var))] = Dataset(version, normalise_variant(var)) if ok else None  # type: ignore[arg-type]
    return out


def manifest_datasets(manifest: pa.Table | pq.ParquetFile) -> set[Dataset] | None:
    """The datasets a manifest's rows name (``None``: it has no version/variant columns)."""
    names = manifest.schema_arrow.names if isinstance(manifest, pq.ParquetFile) else (
        manifest.column_names)  # fmt: skip
    if not all(c in names for c in DATASET_COLUMNS):
        return None
    return {d for d in _pairs(manifest).values() if d is not None}


def dir_dataset(root: SourceRoot) -> Dataset | None:
    """The dataset SOURCE's directory name means by upstream's rules, else ``None``."""
    name = unquote(urlsplit(root.url).path).rstrip("/").rsplit("/", 1)[-1]
    return from_dir_name(name)


def run_dataset(
    asked: str | None, in_manifest: set[Dataset] | None, root: SourceRoot, where: str
) -> Dataset | None:
    """The dataset a run indexes (see the module docstring); ``None`` when unknown.

    ``asked`` is ``--dataset``; ``in_manifest`` the manifest's datasets
    (``None`` without a manifest or its columns); ``where`` names the manifest.
    """
    wanted = parse_dataset(asked) if asked else None
    if in_manifest:
        if wanted is not None:
            if wanted not in in_manifest:
                raise DatasetMismatchError(
                    f"--dataset {wanted.label}: {where} lists no row of it, only "
                    f"{', '.join(sorted(d.label for d in in_manifest))} (nothing was written)"
                )
            return wanted
        if len(in_manifest) == 1:
            return next(iter(in_manifest))
        named = dir_dataset(root)
        if named in in_manifest:
            return named
        raise ConfigurationError(
            f"{where} lists several datasets ({', '.join(sorted(d.label for d in in_manifest))}); "
            "an index holds one: pass --dataset VERSION/VARIANT (nothing was written)"
        )
    named = dir_dataset(root)
    if wanted is not None and named is not None and wanted != named:
        log.warning("--dataset %s overrides %s, named by the directory", wanted.label, named.label)
    return wanted or named


def row_filter(manifest: pa.Table | pq.ParquetFile, dataset: Dataset | None) -> Any:
    """``batch -> batch`` keeping only ``dataset``'s rows, or ``None`` when nothing is dropped."""
    if dataset is None or manifest_datasets(manifest) in (None, {dataset}):
        return None
    raw = [k for k, d in _pairs(manifest).items() if d == dataset]
    keys = pa.array(sorted(f"{v}\x00{var}" for v, var in raw))

    def keep(batch: pa.RecordBatch) -> pa.RecordBatch:
        key = pc.binary_join_element_wise(
            pc.cast(batch.column("version"), pa.string()),
            pc.cast(batch.column("variant"), pa.string()), "\x00",
        )  # fmt: skip
        return batch.filter(pc.fill_null(pc.is_in(key, value_set=keys), False))

    return keep


def _main_attrs(location: str, s3_options: dict[str, Any] | None) -> dict[str, Any]:
    """The root attributes of a repository's ``main`` (empty if it has none)."""
    repo = ic.Repository.open(storage_for(location, s3_options=s3_options))
    group = zarr.open_group(repo.readonly_session("main").store, mode="r", zarr_format=3)
    return dict(group.attrs)


def recorded(out: str, s3_options: dict[str, Any] | None) -> dict[int, Identity]:
    """Zone -> what its repository's ``main`` records (nothing for a new index)."""
    found = {}
    for zone, name in repositories(out, s3_options).items():
        try:
            attrs = _main_attrs(out.rstrip("/") + "/" + name, s3_options)
        except (ic.IcechunkError, OSError, ValueError) as exc:  # not a repository (yet)
            log.info("cannot read main of %s: %s", name, exc)
            continue
        source = attrs.get("tessera:source")
        sources = attrs.get("tessera:sources")
        if not isinstance(source, str) and isinstance(sources, list) and len(sources) == 1:
            source = sources[0]  # an older index read from one tree
        found[zone] = Identity(
            from_document(attrs.get("tessera:dataset")), source if isinstance(source, str) else None
        )
    return found


def settle(
    out: str,
    existing: dict[int, Identity],
    dataset: Dataset | None,
    root: SourceRoot,
    *,
    explicit: bool,
    move_source: bool,
) -> Identity:
    """The identity this run records, or :class:`DatasetMismatchError` (exit 2, nothing written).

    ``explicit``: the dataset was given by ``--dataset``; ``move_source``:
    the user moves the index to another mirror of the same dataset.
    """
    datasets = {i.dataset for i in existing.values() if i.dataset is not None}
    sources = {i.source for i in existing.values() if i.source is not None}
    if len(datasets) > 1:
        raise DatasetMismatchError(
            f"index {out} already mixes datasets {' and '.join(sorted(d.label for d in datasets))}"
            "; re-index each dataset into its own --out"
        )
    held = next(iter(datasets), None)
    if held is not None and dataset is not None and held != dataset:
        raise DatasetMismatchError(
            f"index {out} holds dataset {held.label} ({held.path}); {root.url} is dataset "
            f"{dataset.label} ({dataset.path}): datasets are never mixed; index it into another "
            "--out (nothing was written)"
        )
    other = sorted(s for s in sources if s != root.url)
    if other and not move_source:
        raise DatasetMismatchError(
            f"index {out} was made from {other[0]}; this run reads {root.url}: refusing to "
            "replace its tiles with another tree's. Index it into another --out, or pass "
            "--move-source if it is another mirror of the same dataset (nothing was written)"
        )
    if existing and held is None and dataset is not None and other and not explicit:
        raise DatasetMismatchError(
            f"index {out} records no dataset (written before datasets were recorded) and "
            f"{root.url} is another tree: pass --dataset {dataset.label} to say it holds "
            "the same dataset (nothing was written)"
        )
    chosen = dataset if dataset is not None else held
    if chosen is None:
        log.warning(
            "cannot tell which dataset %s is (no version/variant columns in the manifest, no "
            "upstream directory name such as v1.1-cam): recorded as %r; pass --dataset",
            root.url, UNKNOWN,
        )  # fmt: skip
    return Identity(chosen, root.url)


def zones_to_describe(existing: dict[int, Identity], identity: Identity) -> list[int]:
    """Existing zones whose ``main`` does not record ``identity`` yet."""
    return sorted(z for z, i in existing.items() if i != identity)


__all__ = [
    "Identity",
    "dir_dataset",
    "manifest_datasets",
    "recorded",
    "row_filter",
    "run_dataset",
    "settle",
    "zones_to_describe",
]
