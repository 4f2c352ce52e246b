"""A local tree's links leading outside it, found without resolving every path.

Tiles without a link on their way are kept after three ``lstat`` calls; a
link at any level (year directory, tile directory, file) sends the tile to
the exact check, which skips it when it leads outside SOURCE and keeps it
when it stays inside.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tessera_vz.indexer.inventory import table_of
from tessera_vz.indexer.roots import source_root
from tessera_vz.indexer.symlinks import skip_outside_links
from tessera_vz.testing.tiles import make_tree


def test_links_at_every_level_are_judged_by_where_they_lead(tmp_path: Path) -> None:
    root, away = tmp_path / "tree", tmp_path / "elsewhere"
    centres = [(1.05, 50.05), (1.15, 50.05), (1.25, 50.05), (1.35, 50.05)]
    specs = make_tree(root, centres=centres, years=(2023, 2024), bands=2, manifest=False)
    by = {(s.year, s.lon): s for s in specs}
    # 2023's year directory moved away and linked back: every 2023 tile leads outside.
    away.mkdir()
    shutil.move(root / "2023", away / "2023")
    (root / "2023").symlink_to(away / "2023")
    # A 2024 tile directory linked outside, a file linked outside, a file linked inside.
    tile_dir = root / by[(2024, 1.15)].directory
    shutil.move(tile_dir, away / "tile")
    tile_dir.symlink_to(away / "tile")
    outside = root / by[(2024, 1.25)].emb_path
    shutil.move(outside, away / "emb.npy")
    outside.symlink_to(away / "emb.npy")
    inside = root / by[(2024, 1.35)].scales_path
    shutil.move(inside, root / "kept.npy")
    inside.symlink_to(root / "kept.npy")

    kept, failures = skip_outside_links(
        table_of([(s.year, s.name, s.lon, s.lat, "", "") for s in specs]), source_root(str(root))
    )
    names = {(y, n) for y, n in zip(kept.column("year").to_pylist(),
                                    kept.column("name").to_pylist(), strict=True)}  # fmt: skip
    assert names == {(2024, by[(2024, 1.05)].name), (2024, by[(2024, 1.35)].name)}
    assert len(failures) == 6
    assert all("--follow-symlinks" in f.reason for f in failures)
