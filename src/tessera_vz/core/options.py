"""How a reader reads: one retry policy, and which sources it trusts and how.

Every request tessera-vz makes to a source (header probes, point and window
reads, ``verify``) and every virtual-chunk fetch Icechunk makes for a reader
follow one :class:`RetryPolicy`: the same attempts, the same backoff, the
same limit per attempt, rendered for each client (our HTTP client, obstore's
``retry_config``, Icechunk's ``StorageSettings``). :class:`ReadOptions`
bundles that policy with what a reader is allowed to contact, so that
``open_store``, ``TesseraStore``, ``open_zone`` (whose dask tasks reopen the
store in other processes) and the CLI carry one object instead of a handful
of keyword arguments that drift apart.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.urls import check_root

#: Status codes worth another attempt (as obstore and Icechunk retry them).
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff and per-attempt limits of every source request.

    A mirror under load answers 503, drops connections or stalls; each
    request is tried ``retries + 1`` times, waiting ``backoff`` seconds
    before the first retry and doubling up to ``max_backoff``, and each
    attempt may take ``timeout`` seconds in all (connecting, TLS, redirects,
    the whole body), so a stalled server costs a bounded time instead of a
    hang.
    """

    retries: int = 3
    timeout: float = 30.0
    backoff: float = 0.1
    max_backoff: float = 5.0
    #: Time allowed to open a connection (TCP and TLS), within ``timeout``.
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.retries, int)
            or self.retries < 0
            or not self.timeout > 0
            or not self.backoff >= 0
            or not self.max_backoff >= 0
            or not self.connect_timeout > 0
        ):
            raise ConfigurationError(
                f"retries must be an integer >= 0, timeout and connect_timeout > 0 and "
                f"backoff >= 0; got retries={self.retries!r}, timeout={self.timeout!r}, "
                f"backoff={self.backoff!r}, max_backoff={self.max_backoff!r}, "
                f"connect_timeout={self.connect_timeout!r}"
            )

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def connect(self) -> float:
        """Connect limit, never longer than a whole attempt."""
        return min(self.timeout, self.connect_timeout)

    def delays(self) -> Iterator[float]:
        """Seconds to wait before each attempt: 0, then the backoff doubling up to its cap."""
        yield 0.0
        for k in range(self.retries):
            yield min(max(self.backoff, self.max_backoff), self.backoff * 2**k)

    def worst_case(self) -> float:
        """Longest a request can take in all (every attempt times out)."""
        return self.attempts * self.timeout + sum(self.delays())

    def obstore(self) -> dict[str, Any]:
        """``retry_config`` and ``client_options`` for an obstore store."""
        return {
            "retry_config": {
                "max_retries": self.retries,
                "backoff": {
                    "init_backoff": dt.timedelta(seconds=self.backoff),
                    "max_backoff": dt.timedelta(seconds=max(self.backoff, self.max_backoff)),
                    "base": 2,
                },
                "retry_timeout": dt.timedelta(seconds=self.worst_case()),
            },
            "client_options": {
                "timeout": dt.timedelta(seconds=self.timeout),
                "connect_timeout": dt.timedelta(seconds=self.connect),
            },
        }


def _frozen(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), v) for k, v in (mapping or {}).items()))


@dataclass(frozen=True)
class ReadOptions:
    """Everything that decides how an index is read, in one picklable value.

    Parameters
    ----------
    policy
        Retries, backoff and timeouts of every source request.
    allow_local_sources
        Authorise ``file://`` sources (local tile trees). Off by default, so
        that opening someone else's index never reads local files.
    allowed_sources
        Explicit allow-list of source URL prefixes; when given, only sources
        under these prefixes are read (and redirects only followed to them).
        Matched by scheme, host, port and path on segment boundaries; a
        prefix with ``.``/``..`` segments or credentials is refused.
    allow_private_sources
        Authorise sources on loopback, private, link-local or multicast
        addresses (checked on the address connected to). Off by default, so
        that an index from elsewhere cannot make the reader fetch from the
        user's machine or network.
    remembered_sources
        Sources the user allowed for this index earlier (recorded on their
        machine, see :mod:`~tessera_vz.core.permissions`; ``open_store``
        fills it in): trusted like ``allow_local_sources`` and
        ``allow_private_sources`` for those roots only.
    s3_options
        Endpoint, region, anonymous access or credentials for ``s3://``
        sources and indexes (see :func:`~tessera_vz.core.s3.s3_settings`).
    direct_reads
        Read pixels through tessera-vz's own source reader (the default: it
        checks every answer, follows redirects only to authorised origins and
        merges requests). ``False`` sends them through Icechunk's virtual
        chunk fetch instead, as ``xr.open_zarr`` does; see
        ``docs/reliability.md`` for what that gives up.
    ca_file
        A PEM file of extra certificate authorities to trust for HTTPS (a
        private mirror, a test server), added to the system's roots. Default:
        ``$SSL_CERT_FILE`` when set, as Python's own clients honour it; never
        written anywhere.
    """

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    allow_local_sources: bool = False
    allowed_sources: tuple[str, ...] | None = None
    s3_options: tuple[tuple[str, Any], ...] = ()
    direct_reads: bool = True
    ca_file: str | None = None
    allow_private_sources: bool = False
    remembered_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for prefix in self.allowed_sources or ():
            check_root(prefix)  # a clear error for '..', credentials, a query, no host

    @classmethod
    def of(
        cls,
        *,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: float | None = None,
        allow_local_sources: bool = False,
        allowed_sources: Iterable[str] | None = None,
        s3_options: Mapping[str, Any] | None = None,
        direct_reads: bool = True,
        ca_file: str | None = None,
        allow_private_sources: bool = False,
    ) -> ReadOptions:
        """Build options from plain keyword arguments (``None`` keeps a default)."""
        changes: dict[str, Any] = {"retries": retries, "timeout": timeout, "backoff": backoff}
        policy = replace(RetryPolicy(), **{k: v for k, v in changes.items() if v is not None})
        return cls(
            policy=policy,
            allow_local_sources=allow_local_sources,
            allowed_sources=tuple(allowed_sources) if allowed_sources is not None else None,
            s3_options=_frozen(s3_options),
            direct_reads=direct_reads,
            ca_file=ca_file,
            allow_private_sources=allow_private_sources,
        )

    @property
    def s3(self) -> dict[str, Any]:
        """``s3_options`` as a dict."""
        return dict(self.s3_options)

    def trusted_ca(self) -> str | None:
        """The extra CA file to trust: ``ca_file``, else ``$SSL_CERT_FILE``, else none."""
        path = self.ca_file or os.environ.get("SSL_CERT_FILE") or None
        if path is None:
            return None
        if not Path(path).is_file():
            raise ConfigurationError(
                f"CA file {path!r} (ca_file or SSL_CERT_FILE) does not exist; give a PEM file "
                "of the certificate authorities to trust"
            )
        return path
