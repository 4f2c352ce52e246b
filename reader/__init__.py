"""What the data is: npy headers, tile geometry, the index layout, and reads."""

from .errors import (
    ConfigurationError,
    InvalidTileError,
    NpyFormatError,
    SourceChangedError,
    SourceUnavailableError,
    TesseraError,
    TileNotFoundError,
)
from .parser import NpyParser
from .store import TesseraStore, dequantise, open_store

__all__ = [
    "ConfigurationError",
    "InvalidTileError",
    "NpyFormatError",
    "NpyParser",
    "SourceChangedError",
    "SourceUnavailableError",
    "TesseraError",
    "TesseraStore",
    "TileNotFoundError",
    "dequantise",
    "open_store",
]
