"""Pinned versions: which snapshot of each zone-year a store reads (pure, no I/O).

Every index run that changes a year commits to the year's branch and tags
the commit ``{year}-v{n}``, numbered per zone repository (a run that
changes only zone 31 makes ``2024-v3`` there and nothing in zone 30). A
store reads each year's branch unless pinned; a pin is one of these tokens:

- ``"2024-v1"``: that tag, in every zone (each zone must have it);
- ``"utm31/2024-v2"``: that tag in zone 31 only (overrides a year pin);
- ``"utm31/2024@SNAPSHOTID"``: an exact snapshot of zone 31's year 2024.

Results carry the tokens they were read at (``tessera:versions``, with the
tag of the snapshot read, and ``tessera:snapshots``), space-separated, so
passing them back (``open_store(root, versions=ds.attrs["tessera:versions"])``)
reads exactly the same snapshots after the index has moved on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import parse_tag

_TOKEN = re.compile(r"^(?:utm(\d\d)/)?((\d{4})-v(\d+))$")
_SNAPSHOT = re.compile(r"^utm(\d\d)/(\d{4})@([0-9A-Z]{20})$")


@dataclass(frozen=True)
class Pins:
    """Tags and snapshots pinned per year (every zone) or per (zone, year).

    Hashable and small, so it travels with :func:`~tessera_vz.reader.store.reopen`
    to dask workers and keys their open stores.
    """

    years: tuple[tuple[int, str], ...] = ()
    zones: tuple[tuple[int, int, str], ...] = ()
    snapshots: tuple[tuple[int, int, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.years or self.zones or self.snapshots)

    def tag(self, zone: int, year: int) -> str | None:
        """The tag pinned for a zone-year, or ``None`` (its branch, or a snapshot pin)."""
        for z, y, t in self.zones:
            if (z, y) == (zone, year):
                return t
        return dict(self.years).get(year)

    def snapshot(self, zone: int, year: int) -> str | None:
        """The snapshot id pinned for a zone-year, or ``None``."""
        for z, y, s in self.snapshots:
            if (z, y) == (zone, year):
                return s
        return None

    def with_snapshot(self, zone: int, year: int, snapshot: str) -> Pins:
        """These pins, plus one zone-year fixed at an exact snapshot."""
        keep = tuple(p for p in self.snapshots if p[:2] != (zone, year))
        zones = tuple(p for p in self.zones if p[:2] != (zone, year))
        return Pins(self.years, zones, tuple(sorted((*keep, (zone, year, snapshot)))))

    def tokens(self) -> list[str]:
        """The pins as tokens :func:`pins` reads back."""
        return [
            *(t for _, t in self.years),
            *(f"utm{z:02d}/{t}" for z, _, t in self.zones),
            *(f"utm{z:02d}/{y}@{s}" for z, y, s in self.snapshots),
        ]


#: What ``versions=`` accepts (see :func:`pins`).
Versions = Pins | str | Iterable[str] | Mapping[Any, str] | None


def token(zone: int, year: int, tag: str | None, snapshot: str) -> str:
    """The token naming what was read of a zone-year: its tag, else its snapshot."""
    return f"utm{zone:02d}/{tag}" if tag else f"utm{zone:02d}/{year}@{snapshot}"


def pins(versions: Versions) -> Pins:
    """Normalise ``versions`` (tokens, a string of them, or ``{year: tag}``) to :class:`Pins`.

    Accepted: ``None``; a token or a string of tokens separated by spaces or
    commas; an iterable of tokens; a mapping ``{2024: "2024-v1"}`` (year ->
    tag) or ``{(31, 2024): "2024-v2"}`` ((zone, year) -> tag). A tag must
    name the year it is pinned for; one zone-year pinned twice differently
    is an error.
    """
    if versions is None:
        return Pins()
    if isinstance(versions, Pins):
        return versions
    items: list[str] = []
    if isinstance(versions, str):
        items = [t for t in re.split(r"[\s,]+", versions) if t]
    elif isinstance(versions, Mapping):
        for key, tag in versions.items():
            items.append(_mapped(key, tag))
    else:
        items = [str(t) for t in versions]
    years: dict[int, str] = {}
    zones: dict[tuple[int, int], str] = {}
    snaps: dict[tuple[int, int], str] = {}
    for item in items:
        m, s = _TOKEN.match(item), _SNAPSHOT.match(item)
        if s:
            _put(snaps, (int(s.group(1)), int(s.group(2))), s.group(3), item)
        elif m:
            year, tag = int(m.group(3)), m.group(2)
            if m.group(1):
                _put(zones, (_zone(m.group(1), item), year), tag, item)
            else:
                _put(years, year, tag, item)
        else:
            raise ConfigurationError(
                f"version {item!r} is not a tag: expected YYYY-vN (e.g. 2024-v1, a tag "
                "`tessera-vz info` lists), utmZZ/YYYY-vN for one zone, or utmZZ/YYYY@SNAPSHOT "
                "as a result's tessera:versions / tessera:snapshots attributes name them"
            )
    return Pins(
        tuple(sorted(years.items())),
        tuple(sorted((z, y, t) for (z, y), t in zones.items())),
        tuple(sorted((z, y, s) for (z, y), s in snaps.items())),
    )


def _mapped(key: Any, tag: Any) -> str:
    """A ``{year: tag}`` or ``{(zone, year): tag}`` entry as a token, checked."""
    text = str(tag)
    zone: Any = None
    year: Any = key
    if isinstance(key, tuple) and len(key) == 2:
        zone, year = key
    parsed = parse_tag(text)
    if parsed is None or str(year) != str(parsed[0]) or not str(zone or 1).isdigit():
        raise ConfigurationError(
            f"versions entry {key!r}: {tag!r} must be a tag of that year, as in "
            "{2024: '2024-v1'} or {(31, 2024): '2024-v2'}"
        )
    return f"utm{int(zone):02d}/{text}" if zone is not None else text


def _zone(text: str, item: str) -> int:
    zone = int(text)
    if not 1 <= zone <= 60:
        raise ConfigurationError(f"version {item!r} names UTM zone {zone}; zones are 01-60")
    return zone


def _put(into: dict[Any, str], key: Any, value: str, item: str) -> None:
    if into.get(key, value) != value:
        raise ConfigurationError(f"version {item!r} conflicts with {into[key]!r} pinned before")
    into[key] = value
