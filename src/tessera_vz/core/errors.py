"""The exceptions tessera-vz raises.

Each subclasses the built-in exception a caller would already catch for the
same kind of failure (``ValueError`` for bad input, ``LookupError`` for a
missing tile or year, ``OSError`` for a source that cannot be read as
indexed), following icechunk's habit, so ``except ValueError`` keeps working
for users who never heard of this package.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error raised on purpose by tessera-vz."""


class NpyFormatError(TesseraError, ValueError):
    """A ``.npy`` header is malformed or describes data we must not map."""


class InvalidTileError(TesseraError, ValueError):
    """A tile's files are readable but do not form a valid TESSERA tile."""


class TileNotFoundError(TesseraError, LookupError):
    """No indexed tile, year or zone matches the request."""


class VersionNotFoundError(TileNotFoundError):
    """A pinned tag or snapshot does not exist in a zone's repository."""


class SourceChangedError(TesseraError, OSError):
    """A source file no longer matches the checksum recorded at indexing time."""


class SourceUnavailableError(TesseraError, OSError):
    """A source file could not be fetched (missing, refused or unreachable).

    ``transient`` is True when the last attempt failed in a way another try
    later may not (a 503, a reset, a timeout), False for answers that broke
    the rules or files that are gone.
    """

    transient: bool = False


class SourceNotFoundError(SourceUnavailableError, FileNotFoundError):
    """A source file the index names is gone (404, or no such object or file)."""


class ConfigurationError(TesseraError, ValueError):
    """Arguments or settings that cannot work together; nothing was written."""


def translate_error(exc: BaseException, what: str) -> BaseException:
    """Turn icechunk's storage errors into ours, naming the tile and source."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "checksum of the object owning the virtual chunk has changed" in text:
        return SourceChangedError(
            f"{what}: {first}. The source file changed after it was indexed; re-run "
            "`tessera-vz index --reprobe` for this source to index its new bytes"
        )
    if "authoriz" in text.lower():
        return ConfigurationError(
            f"{what}: the repository reads this tile from a source you have not authorised. "
            "Pass allow_local_sources=True (CLI: --allow-local-sources) for file:// sources "
            "you trust, or list it in allowed_sources"
        )
    return SourceUnavailableError(f"{what}: {first}")


__all__ = [
    "ConfigurationError",
    "InvalidTileError",
    "NpyFormatError",
    "SourceChangedError",
    "SourceNotFoundError",
    "SourceUnavailableError",
    "TesseraError",
    "TileNotFoundError",
    "VersionNotFoundError",
]
