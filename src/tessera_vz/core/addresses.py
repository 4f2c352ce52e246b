"""Destinations an index may not pick: loopback, private, link-local, multicast addresses.

An index names the servers its tiles live on; opened from a stranger, it
could name ``http://127.0.0.1:8080/admin`` or a router's page, and a point
read would fetch it for them and return its bytes as an embedding. Such
addresses are contacted only with the user's explicit permission
(:mod:`~tessera_vz.core.permissions`). The check applies to the address
actually connected to: our HTTP client resolves names through
:class:`PublicResolver`, which drops the refused addresses from the answer
the connection is made with (a name that resolves to a public address for
the check and to ``127.0.0.1`` for the connection, DNS rebinding, meets the
same check both times), and IP literals, which aiohttp does not resolve, are
checked by :func:`check_literal`.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from tessera_vz.core.errors import ConfigurationError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

PERMISSION = (
    "tessera-vz contacts loopback, private, link-local and multicast addresses for an index "
    "only if you allow it: allow_private_sources=True (CLI: --allow-private), or list the "
    "source in allowed_sources (CLI: --allow-source)"
)


class DestinationRefusedError(ConfigurationError):
    """A source resolved to an address the user did not allow (not worth a retry)."""


def refusal(address: str) -> str | None:
    """What kind of refused address ``address`` is (``"loopback"``…), or ``None`` if public."""
    try:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return kind
    return None


def _refused(host: str, address: str, kind: str) -> DestinationRefusedError:
    named = host if host == address else f"{host} resolves to {address}, which"
    return DestinationRefusedError(f"{named} is a {kind} address; {PERMISSION}")


def check_literal(url: str) -> None:
    """Refuse a URL whose host is a refused IP literal (names are checked on resolution)."""
    host = urlsplit(url).hostname or ""
    kind = refusal(host)
    if kind is not None:
        raise _refused(host, host, kind)


def check_resolved(url: str) -> None:
    """Resolve ``url``'s host now and refuse it if any address is refused.

    For clients we cannot hand a resolver (Icechunk's): checked when a
    container is authorised, not at each connection, so a name that changes
    its answer later is not caught there; see ``docs/security.md``.
    """
    host = urlsplit(url).hostname or ""
    check_literal(url)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return  # unresolvable: nothing will be contacted
    for info in infos:
        address = str(info[4][0])
        kind = refusal(address)
        if kind is not None:
            raise _refused(host, address, kind)


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses (the connection uses those)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        kept = [a for a in answers if refusal(a["host"]) is None]
        if not kept:
            first = answers[0]["host"] if answers else host
            raise _refused(host, first, refusal(first) or "refused")
        return kept

    async def close(self) -> None:
        await self._inner.close()


__all__ = [
    "DestinationRefusedError",
    "PublicResolver",
    "check_literal",
    "check_resolved",
    "refusal",
]
