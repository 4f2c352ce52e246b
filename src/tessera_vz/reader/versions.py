"""Pinned versions: which snapshot of each zone-year a store reads, and what was read.

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

Pins are pure values (:class:`Pins`, :func:`pins`); resolving them asks a
zone's repository for its tags and branches (:func:`snapshot_to_read`,
:func:`tag_of`), and :func:`provenance` writes what was read as the two
attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tessera_vz.core.errors import ConfigurationError, TileNotFoundError, VersionNotFoundError
from tessera_vz.core.layout import branch_name, parse_tag, year_of_branch

if TYPE_CHECKING:
    import icechunk as ic

_TOKEN = re.compile(r"^(?:utm(\d\d)/)?((\d{4})-v(\d+))\Z")
_SNAPSHOT = re.compile(r"^utm(\d\d)/(\d{4})@([0-9A-Z]{20})\Z")


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


def snapshot_to_read(
    repo: ic.Repository, pinned: Pins, zone: int, year: int, where: str
) -> tuple[str, str | None]:
    """The snapshot id a zone-year is read at, and the tag it was found by (``None``: not by a tag).

    The snapshot pinned for the zone-year, else its pinned tag's, else the
    head of its branch. ``where`` (the index root) is for messages.

    Raises
    ------
    TileNotFoundError
        The year is not indexed in the zone.
    VersionNotFoundError
        The pinned tag does not exist in the zone (the message lists the
        zone's tags of that year: tags are numbered per zone).
    """
    snapshot = pinned.snapshot(zone, year)
    if snapshot is not None:
        return snapshot, None
    tag = pinned.tag(zone, year)
    tags = repo.list_tags() if tag is not None else set()
    if tag is not None and tag in tags:
        return str(repo.lookup_tag(tag)), tag
    branches = repo.list_branches()
    if branch_name(year) not in branches:
        indexed = sorted({y for b in branches if (y := year_of_branch(b))})
        raise TileNotFoundError(
            f"year {year} is not indexed in UTM zone {zone}; indexed years: {indexed}"
        )
    if tag is not None:
        same = sorted((t for t in tags if (p := parse_tag(t)) and p[0] == year),
                      key=lambda t: parse_tag(t) or (0, 0))  # fmt: skip
        raise VersionNotFoundError(
            f"tag {tag} does not exist in UTM zone {zone} of {where}; its tags of "
            f"{year}: {', '.join(same) or 'none'}. Tags are numbered per zone: pin this zone "
            f"with utm{zone:02d}/<tag> (`tessera-vz info` lists them)"
        )
    return str(repo.lookup_branch(branch_name(year))), None


def tag_of(repo: ic.Repository, year: int, snapshot: str) -> str | None:
    """The newest tag of ``year`` that points at ``snapshot``, or ``None``."""
    mine = [(p[1], t) for t in repo.list_tags() if (p := parse_tag(t)) and p[0] == year]
    return next((t for _, t in sorted(mine, reverse=True) if repo.lookup_tag(t) == snapshot), None)


def provenance(read: Iterable[tuple[int, int, str | None, str]]) -> dict[str, str]:
    """``tessera:versions`` and ``tessera:snapshots`` of what was read.

    ``read`` holds ``(zone, year, tag, snapshot)`` per zone-year read, in
    order. Space-separated tokens (``utm31/2024-v2``; ``utm31/2024@SNAPSHOT``),
    one per zone-year; either attribute passed back as ``versions=`` reads
    the same snapshots again.
    """
    found = list(read)
    return {
        "tessera:versions": " ".join(token(z, y, tag, snap) for z, y, tag, snap in found),
        "tessera:snapshots": " ".join(f"utm{z:02d}/{y}@{snap}" for z, y, _, snap in found),
    }
