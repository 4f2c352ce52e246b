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


class AnswerError(TesseraError, OSError):
    """An answer that breaks what HTTP or the request allows; its bytes are never used.

    Raised inside the byte boundary, which turns it into
    :class:`SourceUnavailableError` naming the file once its attempts are
    spent. ``transient`` says whether another attempt may fare better (a cut
    transfer, a 503) or not (a server that answers other bytes than asked).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RedirectRefusedError(AnswerError):
    """A redirect to an origin the caller has not authorised (never followed)."""


def translate_error(exc: BaseException, label: str) -> TesseraError:
    """Turn an Icechunk storage error into ours, naming what was read (``label``).

    Icechunk names each failure by a stable ``kind`` code
    (``icechunk.ErrorKind``): a virtual chunk whose file changed after
    indexing becomes :class:`SourceChangedError`, a container the reader has
    not authorised :class:`ConfigurationError`, anything else
    :class:`SourceUnavailableError`.
    """
    # Imported here, not at the top: this module is what `import tessera_vz.reader.errors`
    # loads, and that must not load icechunk. An Icechunk error exists only once icechunk
    # is loaded, so the import costs nothing when it matters.
    from icechunk import ErrorKind, IcechunkError

    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    kind = exc.kind if isinstance(exc, IcechunkError) else None
    if kind == ErrorKind.VIRTUAL_CHUNK_MODIFIED:
        return SourceChangedError(
            f"{label}: {first}. The source file changed after it was indexed; re-run "
            "`tessera-vz index --reprobe` for this source to index its new bytes"
        )
    if kind == ErrorKind.UNAUTHORIZED_VIRTUAL_CHUNK_CONTAINER:
        return ConfigurationError(
            f"{label}: the repository reads this tile from a source you have not authorised. "
            "Pass allow_local_sources=True (CLI: --allow-local-sources) for file:// sources "
            "you trust, allow_private_sources=True (CLI: --allow-private) for sources on "
            "loopback or private addresses, or list it in allowed_sources"
        )
    return SourceUnavailableError(f"{label}: {first}")


# AnswerError and RedirectRefusedError stay inside the byte boundary (which turns
# them into SourceUnavailableError), so they are no part of the public face.
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
