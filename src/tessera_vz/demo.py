"""``tessera-vz demo``: the whole job on a small generated tree, with timings.

Generates a sample TESSERA tree (real geometry, 128 bands, a manifest),
serves it over a local nginx, indexes it over HTTP, opens a tile with
xarray, reads a point, and prints what each step did and how long it took.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.mirror.nginx import NginxServer
from tessera_vz.mirror.tree import embedding_values, make_tree, scale_values
from tessera_vz.reader import open_store

console = Console()
BBOX = (0.7, 49.8, 0.9, 50.0)  # 2 x 2 cells, 2 years: 8 real-size tiles (~860 MiB)
YEARS = (2024, 2025)


def run_demo(workdir: str, *, keep: bool = False) -> int:
    """Run the demo in ``workdir`` (recreated); return the process exit code."""
    base = Path(workdir).resolve()
    shutil.rmtree(base, ignore_errors=True)
    src, out = base / "tiles", base / "index"
    steps = Table(title="tessera-vz demo")
    for col in ("step", "result", "seconds"):
        steps.add_column(col)

    t = time.perf_counter()
    specs = make_tree(src, bbox=BBOX, years=YEARS, bands=128)
    size = sum(
        (src / s.emb_path).stat().st_size + (src / s.scales_path).stat().st_size for s in specs
    )
    steps.add_row(
        "generate",
        f"{len(specs)} tiles, {size / 2**20:.0f} MiB in {src}",
        f"{time.perf_counter() - t:.2f}",
    )

    with NginxServer(src) as server:
        steps.add_row("serve", f"nginx at {server.url}", "")
        t = time.perf_counter()
        report = run_index(
            IndexOptions(source=server.url, out=str(out), manifest=str(src / "manifest.parquet"))
        )
        index_s = time.perf_counter() - t
        repo_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        steps.add_row(
            "index",
            f"{report.indexed} tiles, {len(report.commits)} commits "
            f"({', '.join(c.tag for c in report.commits)}), {report.bytes_read} bytes of "
            f"headers read, repos {repo_bytes / 1024:.0f} KiB",
            f"{index_s:.2f}",
        )

        spec = specs[len(specs) // 2]
        lon, lat = spec.lon + 0.013, spec.lat - 0.021
        t = time.perf_counter()
        store = open_store(str(out))
        ds = store.open_tile(lon, lat, spec.year)
        steps.add_row(
            "open_tile",
            f"{spec.name} {dict(ds.sizes)} {ds.attrs['proj:code']}",
            f"{time.perf_counter() - t:.2f}",
        )

        t = time.perf_counter()
        loc = store.locate(lon, lat, spec.year)
        window = ds.embeddings.isel(
            y=slice(loc.row, loc.row + 4), x=slice(loc.col, loc.col + 4)
        ).values
        steps.add_row(
            "xarray read",
            f"4x4 window at row {loc.row}, col {loc.col}: {window.nbytes} bytes",
            f"{time.perf_counter() - t:.2f}",
        )

        server.clear_log()
        t = time.perf_counter()
        value = store.point(lon, lat, spec.year)
        point_s = time.perf_counter() - t
        reqs = server.requests()
        wire = sum(r["bytes_sent"] for r in reqs)
        steps.add_row(
            "point",
            f"{len(value)} bands via {len(reqs)} requests, {wire} bytes on the wire",
            f"{point_s:.3f}",
        )

        expected = embedding_values(spec.year, spec.lon, spec.lat, loc.row, loc.col, np.arange(128))
        scale = scale_values(spec.year, spec.lon, spec.lat, loc.row, loc.col)
        ok = np.allclose(value, expected.astype(np.float32) * np.float32(scale), equal_nan=True)
        steps.add_row("check", "point equals the source bytes x scale" if ok else "MISMATCH", "")
        console.print(steps)
        console.print(ds)
        if keep:
            console.print(f"serving {src} at {server.url}; index in {out}. Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    return 0 if ok and not report.failed else 1
