"""Read an index: open a store, then tiles, points, regions and zone mosaics.

The names below are resolved on first use (:mod:`tessera_vz.core.lazy`), so
importing an exception class from here loads nothing heavy. Their homes:
exceptions and options in :mod:`tessera_vz.core`, the store in
:mod:`tessera_vz.reader.store`, the ``.npy`` parser beside the indexer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera_vz.core.lazy import exports

if TYPE_CHECKING:
    from tessera_vz.core.dataset import DatasetMismatchError, same_dataset
    from tessera_vz.core.errors import (
        ConfigurationError,
        InvalidTileError,
        NpyFormatError,
        SourceChangedError,
        SourceNotFoundError,
        SourceUnavailableError,
        TesseraError,
        TileNotFoundError,
        VersionNotFoundError,
    )
    from tessera_vz.core.options import ReadOptions, RetryPolicy
    from tessera_vz.indexer.parser import NpyParser
    from tessera_vz.reader.store import TesseraStore, dequantise, open_store

_ERRORS = "tessera_vz.core.errors"
__getattr__, __dir__ = exports(
    __name__,
    {
        "ConfigurationError": _ERRORS,
        "DatasetMismatchError": "tessera_vz.core.dataset",
        "same_dataset": "tessera_vz.core.dataset",
        "InvalidTileError": _ERRORS,
        "NpyFormatError": _ERRORS,
        "SourceChangedError": _ERRORS,
        "SourceNotFoundError": _ERRORS,
        "SourceUnavailableError": _ERRORS,
        "TesseraError": _ERRORS,
        "TileNotFoundError": _ERRORS,
        "VersionNotFoundError": _ERRORS,
        "ReadOptions": "tessera_vz.core.options",
        "RetryPolicy": "tessera_vz.core.options",
        "NpyParser": "tessera_vz.indexer.parser",
        "TesseraStore": "tessera_vz.reader.store",
        "dequantise": "tessera_vz.reader.store",
        "open_store": "tessera_vz.reader.store",
    },
)

__all__ = [
    "ConfigurationError",
    "DatasetMismatchError",
    "InvalidTileError",
    "NpyFormatError",
    "NpyParser",
    "ReadOptions",
    "RetryPolicy",
    "SourceChangedError",
    "SourceNotFoundError",
    "SourceUnavailableError",
    "TesseraError",
    "TesseraStore",
    "TileNotFoundError",
    "VersionNotFoundError",
    "dequantise",
    "open_store",
    "same_dataset",
]
