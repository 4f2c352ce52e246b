"""The viewer of a published index over a slow link: ``/api/info`` loads the zones concurrently.

Each zone of a published index costs round trips that depend on one another
(its repository info, then the snapshots of its branches ``coverage`` and
``main``); loaded one zone after the other, sixty zones at +20 ms took 7.7 s
before the first ``/api/info``. Here ten one-tile zones are published by
nginx over TLS behind a latency proxy (100 ms a round trip): loaded
sequentially their records need at least two round trips each (2 s for ten
zones; the code before took 3.3 s); the viewer starts and answers its first
``/api/info`` in less, over several connections at once, from the coverage
records (no tiles table loaded), and its answer equals the one the tables give.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.core import published
from tessera_vz.reader import open_store
from tessera_vz.serve import create_app
from tessera_vz.testing.latency import LatencyProxy
from tessera_vz.testing.tiles import make_tree, write_manifest
from tessera_vz.testing.tls import TestCA

from .conftest import published_over_https
from .test_serve_api import running

YEAR = 2024
#: One tile in each of ten zones (zone centres at -177 + 6k degrees).
CENTRES = [(-177 + 6 * k + 0.05, 45.05) for k in range(28, 38)]
#: One-way delay of the proxy: 100 ms a round trip.
DELAY = 0.050
#: Round trips a zone's records need, one after the other: repository, snapshot of ``coverage``.
ROUND_TRIPS_PER_ZONE = 2


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    www = tmp_path_factory.mktemp("www")
    centres = [(round(x, 2), y) for x, y in CENTRES]
    specs = make_tree(www / "tiles", centres=centres, years=(YEAR,), bands=4, sparse=True,
                      manifest=False)  # fmt: skip
    write_manifest(www / "tiles", specs)
    with published_over_https(www, https) as server:
        yield {"www": www, "server": server, "specs": specs}


def _table_answer(index: Path) -> dict[str, Any]:
    """Zones, years, tile count and bounds from the tiles tables of the local index."""
    store = open_store(str(index))
    table = store.tiles(YEAR)
    lon, lat = table["lon"].values, table["lat"].values
    edges = [lon.min() - 0.05, lat.min() - 0.05, lon.max() + 0.05, lat.max() + 0.05]
    return {"zones": store.zones(), "years": [YEAR], "tiles": {str(YEAR): int(lon.size)},
            "bounds": [round(float(v), 2) for v in edges], "gaps": {str(YEAR): 0}}  # fmt: skip


def test_info_loads_the_zones_concurrently_from_the_records(
    site: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(published, "_PROXY", None)  # a new process's repository proxy
    cache = tmp_path / "cache"
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(cache))  # nothing cached: every object fetched
    zones = len(CENTRES)
    with LatencyProxy(site["server"].url, delay=DELAY) as proxy:
        store = open_store(proxy.url + "index/", allow_private_sources=True)
        assert store.zones() == sorted({s.epsg % 100 for s in site["specs"]})
        assert len(store.zones()) == zones
        proxy.reset_stats()
        t = time.perf_counter()  # the viewer's start, then its first /api/info
        with running(create_app(store)) as url:
            with urllib.request.urlopen(url + "/api/info", timeout=120) as r:
                info = json.loads(r.read())
            elapsed = time.perf_counter() - t
            connections = proxy.stats().connections
    tables = list((cache / "tables").rglob("*.npz")) if (cache / "tables").exists() else []
    assert tables == []  # answered from the coverage records: no tiles table was loaded
    sequential = zones * ROUND_TRIPS_PER_ZONE * 2 * DELAY
    # Reported, not asserted (times belong to benchmarks/): concurrency is proven by the
    # connections in flight together below.
    print(
        f"/api/info: {elapsed:.2f} s over {connections} connections (sequential >= {sequential} s)"
    )
    assert connections >= 3, f"{connections} connection(s): requests were not in flight together"
    got = {k: info[k] for k in ("zones", "years", "tiles", "bounds", "gaps")}
    assert got == _table_answer(site["www"] / "index")
    assert info["dataset"]["tessera:dataset"]  # named from each zone's main, as before
    assert np.isfinite(info["bounds"]).all()
