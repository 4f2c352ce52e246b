"""``tessera-vz info``: zones, years, tags, tile counts and sources of an index."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tessera_vz.commands.common import out, read_options_of


def info(path: str, options: Any = None) -> dict[str, Any]:
    """What an index holds: zones, years, tags, tile counts, sources.

    ``sources`` are the containers a repository wants to read from;
    ``authorised`` those this reader would read from with the same flags, so
    a user sees what an untrusted repository asks for before trusting it.
    """
    from tessera_vz.core.repos import credentials
    from tessera_vz.reader import ReadOptions, open_store

    opts = options if options is not None else ReadOptions()
    store = open_store(path, options=opts)
    zones = []
    for zone in store.zones():
        repo = store.repo(zone)
        years = []
        for year in store.years(zone):
            tags = sorted(
                (t for t in repo.list_tags() if t.startswith(f"{year}-v")),
                key=lambda t: int(t.split("-v")[1]),
            )
            years.append(
                {
                    "year": year,
                    "tiles": int(store.tiles(year, zone).sizes["tile"]),
                    "latest_tag": tags[-1] if tags else None,
                    "tags": tags,
                    "snapshot": repo.lookup_branch(str(year)),
                }
            )
        zones.append(
            {
                "zone": zone,
                "repo": store._locations[zone],
                "years": years,
                "sources": store.containers(zone),
                "authorised": sorted(credentials(store.containers(zone), store.options)),
            }
        )
    return {"path": path, "dataset": store.dataset(), "zones": zones}


def cmd_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    doc = info(args.store, read_options_of(args))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    dataset = doc["dataset"]
    title = f"tessera-vz index {args.store}: dataset {dataset['tessera:dataset']}"
    if dataset.get("tessera:dataset_path"):
        title += f" ({dataset['tessera:dataset_path']})"
    table = Table(title=title)
    for col in ("zone", "year", "tiles", "latest tag", "sources"):
        table.add_column(col)
    for z in doc["zones"]:
        for y in z["years"]:
            table.add_row(
                f"{z['zone']:02d}",
                str(y["year"]),
                str(y["tiles"]),
                str(y["latest_tag"]),
                ", ".join(
                    s if s in z["authorised"] else f"{s} (not authorised)" for s in z["sources"]
                ),
            )
    out.print(table)
    return 0
