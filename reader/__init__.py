"""What the data is: npy headers, tile geometry, the index layout, and reads."""

from . import settle  # noqa: F401  (an exit hook: see the module)
from .errors import (
    ConfigurationError,
    InvalidTileError,
    NpyFormatError,
    SourceChangedError,
    SourceNotFoundError,
    SourceUnavailableError,
    TesseraError,
    TileNotFoundError,
)
from .options import ReadOptions, RetryPolicy
from .parser import NpyParser
from .store import TesseraStore, dequantise, open_store

__all__ = [
    "ConfigurationError",
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
    "dequantise",
    "open_store",
]
