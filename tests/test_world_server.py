"""The simulated world's tile server answers as nginx would, with the formula's bytes.

``benchmarks/world.py`` checks every value it reads against the content
formula; these tests make sure the server itself tells the truth: its
ranges equal ``np.load`` of a file written by numpy from the same formula,
it speaks nginx's range, multipart and precondition rules, and its manifest
reads through our manifest reader exactly as upstream's does.
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tessera_vz.core.byteranges import parts
from tessera_vz.indexer.manifest import manifest_inventory, open_manifest
from tessera_vz.indexer.roots import source_root
from tessera_vz.mirror.tree import embedding_values, scale_values
from tessera_vz.testing.tls import TestCA, client_context
from tessera_vz.testing.world.cells import World, cell_key, world_of
from tessera_vz.testing.world.content import content_year, header
from tessera_vz.testing.world.manifest import write_world_manifest
from tessera_vz.testing.world.process import WorldServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("world")
    # One cell in each of 30 zones (+ grid_0.85_49.95): what --cells spreads over the globe.
    lon_i = np.r_[np.arange(-17955, 17955, 1200), 85]
    lat_i = np.r_[np.resize([-4505, -505, 2505, 4995, 6805], 30), 4995]
    world = world_of(cell_key(lon_i, lat_i))
    path = world.save(work / "world.npz")
    write_world_manifest(world, work / "v1")
    with WorldServer(path, work / "v1", test_ca) as server:
        yield {"world": world, "server": server, "work": work, "path": path}


def get(url: str, ca: TestCA, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    async def go() -> tuple[int, Any, bytes]:
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, url, headers=headers or {}, ssl=client_context(ca)) as r,
        ):
            return r.status, r.headers, await r.read()

    return asyncio.run(go())


def tile_url(served: dict[str, Any], i: int, scales: bool = False) -> str:
    w: World = served["world"]
    name = w.names()[i]
    return f"{served['server'].url}{w.year}/{name}/{name}{'_scales' if scales else ''}.npy"


def test_world_tiles_have_the_real_geometry(served: dict[str, Any]) -> None:
    w: World = served["world"]
    assert len(w) == 31 and np.unique(w.zone).size == 30
    assert ((w.lat > -56) & (w.lat < 72)).all()
    assert np.all(w.lon_i % 10 == 5) and np.all(np.abs(w.lat_i) % 10 == 5)
    i = int(w.find(np.array([85]), np.array([4995]))[0])
    assert (w.height[i], w.width[i]) == (1132, 749)  # as the README's open_tile shows


def test_ranges_equal_np_load_of_the_formula(served: dict[str, Any], test_ca: TestCA) -> None:
    w: World = served["world"]
    i = int(w.find(np.array([85]), np.array([4995]))[0])
    h, wd = int(w.height[i]), int(w.width[i])
    rows, cols = np.arange(3)[:, None, None], np.arange(wd)[None, :, None]
    emb = embedding_values(w.year, 0.85, 49.95, rows, cols, np.arange(128)[None, None, :])
    head = header("emb", h, wd)
    status, hdrs, body = get(
        tile_url(served, i), test_ca, {"Range": f"bytes=0-{len(head) + 3 * wd * 128 - 1}"}
    )
    assert (
        status == 206
        and hdrs["Content-Range"] == f"bytes 0-{len(body) - 1}/{len(head) + h * wd * 128}"
    )
    # The head of the file is a .npy numpy reads (shape as the geometry rule says).
    buf = BytesIO(body)
    assert np.lib.format.read_magic(buf) == (1, 0)
    assert np.lib.format.read_array_header_1_0(buf)[0] == (h, wd, 128)
    np.testing.assert_array_equal(
        np.frombuffer(body[len(head) :], np.int8).reshape(3, wd, 128), emb
    )
    # Scales: an unaligned range cuts float32 values at the right byte.
    sh = len(header("scales", h, wd))
    want = scale_values(
        w.year, 0.85, 49.95, np.arange(2)[:, None], np.arange(wd)[None, :]
    ).tobytes()
    _, _, got = get(
        tile_url(served, i, True), test_ca, {"Range": f"bytes={sh + 5}-{sh + 2 * wd * 4 - 2}"}
    )
    assert got == want[5:-1]


def test_multirange_head_and_preconditions_as_nginx(
    served: dict[str, Any], test_ca: TestCA
) -> None:
    url = tile_url(served, 3)
    status, hdrs, body = get(url, test_ca, {"Range": "bytes=200-299,1000-1009"})
    assert status == 206
    found = parts(body, hdrs["Content-Type"], None)
    _, _, whole = get(url, test_ca, {"Range": "bytes=0-1009"})
    assert found.firsts.tolist() == [200, 1000] and found.lengths.tolist() == [100, 10]
    got = [body[a : a + n] for a, n in zip(found.at, found.lengths, strict=True)]
    assert got == [whole[200:300], whole[1000:1010]]
    status, hdrs, _ = get(url, test_ca, method="HEAD")
    size, etag, modified = int(hdrs["Content-Length"]), hdrs["ETag"], hdrs["Last-Modified"]
    assert status == 200 and etag.startswith('"') and size > 10_000_000
    assert get(url, test_ca, {"Range": "bytes=5-1"})[0] == 416
    assert get(url, test_ca, {"Range": f"bytes={size}-"})[0] == 416
    assert get(url, test_ca, {"Range": "bytes=0-0", "If-Match": etag})[0] == 206
    assert get(url, test_ca, {"Range": "bytes=0-0", "If-Match": etag.strip('"')})[0] == 412
    assert get(url, test_ca, {"Range": "bytes=0-0", "If-Unmodified-Since": modified})[0] == 206
    earlier = email.utils.formatdate(
        email.utils.parsedate_to_datetime(modified).timestamp() - 1, usegmt=True
    )
    assert get(url, test_ca, {"Range": "bytes=0-0", "If-Unmodified-Since": earlier})[0] == 412
    assert get(served["server"].url + "2024/grid_0.15_0.15/grid_0.15_0.15.npy", test_ca)[0] == 404


def test_a_new_generation_changes_mtime_and_values(served: dict[str, Any], test_ca: TestCA) -> None:
    w: World = served["world"]
    url = tile_url(served, 0)
    _, old, before = get(url, test_ca, {"Range": "bytes=128-255"})
    changed = w.changed(every=len(w))  # the first tile only
    changed.save(served["path"])
    served["server"].reload()
    try:
        _, new, after = get(url, test_ca, {"Range": "bytes=128-255"})
        assert new["Last-Modified"] != old["Last-Modified"] and new["ETag"] != old["ETag"]
        year = content_year(w.year, 1)
        assert after == embedding_values(year, w.lon[0], w.lat[0], 0, 0, np.arange(128)).tobytes()
        assert after != before
    finally:
        w.save(served["path"])
        served["server"].reload()


def test_the_manifest_reads_through_our_manifest_reader(served: dict[str, Any]) -> None:
    w: World = served["world"]
    path: Path = served["work"] / "v1" / "manifest.parquet"
    root = source_root(served["server"].url)
    tiles, failures = manifest_inventory(open_manifest(str(path)), root)
    assert failures == [] and tiles.num_rows == len(w)
    names = sorted(tiles.column("name").to_pylist())
    assert names == sorted(w.names())
