"""Reading a published index over HTTPS + 20 ms: a cold point, and points over many zones.

A script a person runs (not a timed test): ``python benchmarks/published_read.py``
(``--quick`` for a smoke run of a minute or two; ``--before /path/to/src`` also
runs another checkout's reader, e.g. the main branch before a change, on the
same index). One TLS nginx serves a sparse tree of real-size tiles (128
bands; the data regions are holes, so values read as no-data) over
``--zones`` UTM zones and the index written from it; a streaming delay proxy
(:mod:`links`, 10 ms each way) sits in front of it, and the tiles are
indexed through the proxy, so every request of a read (index and tiles)
pays 20 ms.

Each figure is taken in a new process (imports excluded, as in
``read_points.py``), with what crossed the link counted from nginx's access
log:

* **cold point**: ``open_store(url)`` then one ``point``, with an empty
  cache folder (``TESSERA_VZ_CACHE``) and again with the one the first
  run left (tiles tables cached per snapshot): time, requests to the index
  (and how many answered 404, how many fetched ``repo``), index bytes;
* **points over many zones**: ``--points`` points spread over every zone's
  tiles, read by ``sample_batches`` (as ``tessera-vz sample`` and
  ``TesseraStore.sample`` do, ``--batch`` at a time), from an empty cache:
  points/s, peak memory (the process's maximum resident set), requests; the
  pixel each point read (tile, row, col) is checked against ``locate``
  for a subset.

Prints a table, writes ``benchmarks/results/published_read.json`` and its
own section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))

import results_section
from links import ProxyProcess

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import make_test_ca

console = Console()
HERE = Path(__file__).parent
YEAR = 2024
FIRST_ZONE = 28
#: Targets (issue 23, "Read the world"), on the +20 ms link.
COLD_POINT_S = 1.0
POINTS_PER_S = 1_500
PEAK_BYTES = 2 << 30
#: This script's section of RESULTS.md (:mod:`results_section`).
OWNER = "published_read.py"

#: A new process's cold point: prints seconds (imports excluded).
_COLD = """
import json, sys, time
import dask.array, xarray, icechunk  # imports are not part of the lookup
from tessera_vz.reader import open_store
t = time.perf_counter()
store = open_store(sys.argv[1], allow_private_sources=True)
store.point(float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

#: A new process sampling points over many zones, batch by batch.
_POINTS = """
import json, sys, time
import dask.array, xarray, icechunk
import numpy as np, pyarrow as pa
from tessera_vz.reader import open_store
url, lon_path, year, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pts = np.load(lon_path)
t = time.perf_counter()
store = open_store(url, allow_private_sources=True)
inp = store.points_input(pa.table({"lon": pts[:, 0], "lat": pts[:, 1]}))
statuses, check = {}, []
for part in store.sample_batches(inp, year, batch_size=batch):
    for s, n in zip(*np.unique(part.column("status").to_numpy(zero_copy_only=False),
                               return_counts=True)):
        statuses[str(s)] = statuses.get(str(s), 0) + int(n)
    ids = part.column("point_id").to_numpy()
    pick = np.arange(0, part.num_rows, max(1, part.num_rows // 20))
    check += [(int(ids[i]), part.column("tile")[i].as_py(), part.column("row")[i].as_py(),
               part.column("col")[i].as_py()) for i in pick]
seconds = time.perf_counter() - t
# VmHWM: this process's own high-water mark (ru_maxrss carries a parent's across exec)
status = open("/proc/self/status").read().splitlines()
peak = next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmHWM:"))
wrong = 0
for i, tile, row, col in check:
    loc = store.locate(float(pts[i, 0]), float(pts[i, 1]), year)
    wrong += (loc.name, loc.row, loc.col) != (tile, row, col)
print(json.dumps({"seconds": seconds, "peak": peak, "statuses": statuses,
                  "checked": len(check), "wrong": wrong}))
"""


def centres(zones: int, per_zone: int, columns: int = 20) -> list[tuple[float, float]]:
    """``per_zone`` cell centres in each of ``zones`` zones, ``columns`` to a row, from 45.05 N.

    A big zone-year (``--tiles 20000 --columns 56``) stays within the zone and below 84 N.
    """
    out = []
    for zone in range(FIRST_ZONE, FIRST_ZONE + zones):
        west = (zone - 1) * 6 - 180  # the zone's western meridian
        for i in range(per_zone):
            col, row = i % columns, i // columns
            out.append((round(west + 2.05 + 0.1 * col, 2), round(45.05 + 0.1 * row, 2)))
    return out


def child(src: str, code: str, args: list[str], cache: Path) -> dict[str, Any]:
    """Run ``code`` in a new process with ``src`` first on the path and ``cache`` as its cache."""
    env = {**os.environ, "PYTHONPATH": src, "TESSERA_VZ_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, check=False,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def traffic(server: NginxServer) -> dict[str, int]:
    """Requests since the log was cleared: to the index, its 404s and ``repo`` reads, to tiles."""
    time.sleep(0.3)  # nginx logs a line just after its answer
    logged = server.requests()
    index = [r for r in logged if r["uri"].startswith("/index/")]
    return {
        "index_requests": len(index),
        "index_404": sum(r["status"] == 404 for r in index),
        "repo_reads": sum(r["uri"].endswith("/repo") for r in index),
        "index_bytes": sum(int(r["bytes_sent"]) for r in index),
        "tile_requests": sum(r["uri"].startswith("/tiles/") for r in logged),
        "index_log": [(r["uri"].removeprefix("/index/"), r["range"], r["status"],
                       int(r["bytes_sent"])) for r in index],
    }  # fmt: skip


def measure(server: NginxServer, src: str, code: str, args: list[str], cache: Path) -> dict:
    server.clear_log()
    out = child(src, code, args, cache)
    return {**out, **traffic(server)}


def cold_point(server: NginxServer, url: str, src: str, point: tuple[float, float],
               work: Path, repeat: int) -> dict[str, Any]:  # fmt: skip
    """Best of ``repeat`` cold points with an empty cache, then with the cache it left."""
    args = [url, str(point[0]), str(point[1]), str(YEAR)]
    empty, warm = [], []
    for i in range(repeat):
        cache = Path(tempfile.mkdtemp(prefix=f"cache{i}-", dir=work))
        empty.append(measure(server, src, _COLD, args, cache))
        warm.append(measure(server, src, _COLD, args, cache))
    return {"empty": min(empty, key=lambda r: r["seconds"]),
            "warm": min(warm, key=lambda r: r["seconds"])}  # fmt: skip


def many_points(server: NginxServer, url: str, src: str, specs: list[Any], n: int,
                batch: int, work: Path) -> dict[str, Any]:  # fmt: skip
    """``n`` points spread over every tile (uniform within each tile's cell), empty cache."""
    import numpy as np

    rng = np.random.default_rng(23)
    which = rng.integers(0, len(specs), n)
    lon = np.array([s.lon for s in specs])[which] + rng.uniform(-0.049, 0.049, n)
    lat = np.array([s.lat for s in specs])[which] + rng.uniform(-0.049, 0.049, n)
    path = work / f"points-{n}.npy"
    np.save(path, np.stack([lon, lat], axis=1))
    cache = Path(tempfile.mkdtemp(prefix="cache-points-", dir=work))
    out = measure(server, src, _POINTS, [url, str(path), str(YEAR), str(batch)], cache)
    out["points"] = n
    out["pts_s"] = n / out["seconds"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        return run_in(args, Path(args.work))
    with tempfile.TemporaryDirectory(prefix="published-read-") as tmp:
        return run_in(args, Path(tmp))


def run_in(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build, serve, index and measure everything under ``work``."""
    ca = make_test_ca(work / "ca")
    os.environ["SSL_CERT_FILE"] = str(ca.ca_cert)
    www = work / "www"
    t = time.perf_counter()
    at = centres(args.zones, args.tiles, args.columns)
    specs = make_tree(www / "tiles", centres=at, years=(YEAR,), bands=128, sparse=True)
    took = time.perf_counter() - t
    console.print(f"tree: {len(specs)} tiles in {args.zones} zones, {took:.0f} s")
    sources = {"after": str(HERE.parent / "src")}
    if args.before:
        sources = {"before": args.before, **sources}
    result: dict[str, Any] = {"zones": args.zones, "tiles": len(specs), "sources": sources}
    with NginxServer(www, tls=ca) as server, ProxyProcess(server.url) as proxy:
        t = time.perf_counter()
        report = run_index(IndexOptions(
            source=proxy.url + "tiles/", out=str(www / "index"),
            manifest=str(www / "tiles" / "manifest.parquet"), allowed_sources=[proxy.url],
        ))  # fmt: skip
        if report.exit_code != 0:
            raise RuntimeError(f"indexing failed: {report.failed[:3]}")
        result["index_s"] = time.perf_counter() - t
        console.print(f"indexed through +20 ms in {result['index_s']:.0f} s")
        url = proxy.url + "index/"
        spec = specs[len(specs) // 2]
        point = (spec.lon + 0.011, spec.lat - 0.013)
        for name, src in sources.items():
            result[name] = {"cold": cold_point(server, url, src, point, work, args.repeat)}
            console.print(f"{name}: cold point {result[name]['cold']}")
            result[name]["points"] = many_points(
                server, url, src, specs, args.points, args.batch, work
            )
            console.print(f"{name}: points {result[name]['points']}")
    return result


def table(result: dict[str, Any]) -> tuple[Table, str]:
    """The figures as a rich table and as the RESULTS.md section."""
    rows: list[tuple[str, ...]] = []
    names = [n for n in ("before", "after") if n in result]
    for label, key, fmt in (
        ("cold point, empty cache: time", ("cold", "empty", "seconds"), "{:.2f} s"),
        ("cold point, empty cache: index requests", ("cold", "empty", "index_requests"), "{}"),
        ("cold point, empty cache: 404s", ("cold", "empty", "index_404"), "{}"),
        ("cold point, empty cache: `repo` reads", ("cold", "empty", "repo_reads"), "{}"),
        ("cold point, empty cache: index bytes", ("cold", "empty", "index_bytes"), "{:,}"),
        ("cold point, cached table: time", ("cold", "warm", "seconds"), "{:.2f} s"),
        ("cold point, cached table: index requests", ("cold", "warm", "index_requests"), "{}"),
        ("cold point, cached table: index bytes", ("cold", "warm", "index_bytes"), "{:,}"),
        ("points over all zones: points/s", ("points", "pts_s"), "{:,.0f}"),
        ("points over all zones: peak memory", ("points", "peak"), "{}"),
        ("points over all zones: index requests", ("points", "index_requests"), "{:,}"),
        ("points over all zones: tile requests", ("points", "tile_requests"), "{:,}"),
        ("points checked against locate: wrong", ("points", "wrong"), "{}"),
    ):
        cells = []
        for n in names:
            value: Any = result[n]
            for k in key:
                value = value[k]
            cells.append(f"{value / 2**20:,.0f} MB" if key[-1] == "peak" else fmt.format(value))
        rows.append((label, *cells))
    t = Table(title=f"published index over HTTPS + 20 ms: {result['zones']} zones, "
                    f"{result['tiles']:,} tiles")  # fmt: skip
    for h in ("", *names):
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    after = result["after"]
    met = {
        "cold point < 1 s (empty cache)": after["cold"]["empty"]["seconds"] < COLD_POINT_S,
        "no 404s": after["cold"]["empty"]["index_404"] == 0,
        f"points >= {POINTS_PER_S:,}/s": after["points"]["pts_s"] >= POINTS_PER_S,
        "peak < 2 GB": after["points"]["peak"] < PEAK_BYTES,
    }
    n = after["points"]["points"]
    md = [
        "## Reading a published index (issue 23)",
        "",
        f"`python benchmarks/published_read.py`: {result['tiles']:,} real-size sparse tiles "
        f"(128 bands) over {result['zones']} UTM zones, indexed and published on one TLS "
        "nginx, read through a streaming delay proxy (+20 ms per request, index and tiles); "
        "every figure in a new process, imports excluded. Points: "
        f"{n:,} spread over every tile, `sample_batches` from an empty cache.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'missed'}" for k, v in met.items()) + ".",
        "",
        "Where a cold point's requests go (after): `zones.json`, the zone's `repo` (once: "
        "Icechunk asks for it at every call, the repository proxy keeps it per handle, and "
        "answers Icechunk's probes for a version-1 repository, `config.yaml` and "
        "`refs/branch.main/ref.json`, itself once `repo` exists), its snapshot, then one "
        "manifest per column of the tiles table and its two chunk objects, all asked at "
        "once (before: one after another), and the two ranged reads of the pixel. The "
        "manifests are the index's layout (one per array per commit); with the table "
        "cached (per snapshot id) only `zones.json` and `repo` remain. A points batch "
        "opens the repositories and tables of its zones six at a time, concurrently, and "
        "the store keeps at most 16 zone-years loaded (a table costs ~1.15 kB per tile in "
        "memory: a 30,000-tile zone-year ~35 MB), so a global sample's memory is bounded "
        "by its batch, not by the 60 zones. The machine is shared: the times move with "
        "its load from run to run (before and after are taken in the same run; compare "
        "them with each other).",
    ]
    return t, "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zones", type=int, default=10)
    p.add_argument("--tiles", type=int, default=200, help="tiles per zone")
    p.add_argument("--columns", type=int, default=20, help="tiles per row in a zone")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--before", help="another checkout's src/ to measure beside this one")
    p.add_argument("--work", help="working folder, kept: a later run reuses its tree and index")
    p.add_argument("--quick", action="store_true", help="3 zones, 40 tiles, 5,000 points")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = p.parse_args()
    if args.quick:
        args.zones, args.tiles, args.points, args.repeat = 3, 40, 5_000, 1
    result = run(args)
    rich_table, md = table(result)
    console.print(rich_table)
    out = HERE / "results" / "published_read.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    if not args.no_write:
        results_section.write(HERE / "RESULTS.md", md, OWNER)


if __name__ == "__main__":
    main()
