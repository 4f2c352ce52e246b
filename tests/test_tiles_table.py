"""`store.tiles(year)` as the README writes it: every zone's tiles, one after the other.

A tree across the UTM zone 30/31 seam, both hemispheres: the table without a
zone holds exactly the tiles of every zone's own table (each row the same),
with a ``zone`` column saying which and the versions of every zone read; a
year no zone indexed is refused naming the indexed years.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.tiles import make_tree

CENTRES = [(-0.05, 52.15), (0.05, 52.15), (-0.15, -1.05), (0.15, -1.05)]


def test_tiles_of_a_year_across_zones(tmp_path: Path) -> None:
    specs = make_tree(tmp_path / "src", centres=CENTRES, years=(2024,), bands=4, manifest=False)
    make_tree(tmp_path / "src", centres=CENTRES[:1], years=(2025,), bands=4, manifest=False)
    src, ix = str(tmp_path / "src"), str(tmp_path / "ix")
    assert not run_index(IndexOptions(source=src, out=ix)).failed
    store = open_store(ix, allow_local_sources=True)
    assert store.zones() == [30, 31]
    every = store.tiles(2024)  # the README's call
    assert sorted(every.tile.values) == sorted(s.name for s in specs)
    assert sorted(every.attrs["tessera:versions"].split()) == ["utm30/2024-v1", "utm31/2024-v1"]
    for zone in (30, 31):
        one = store.tiles(2024, zone=zone)
        assert set(one.zone.values) == {zone}
        part = every.sel(tile=one.tile.values)
        for name in one.data_vars:
            np.testing.assert_array_equal(part[name].values, one[name].values, err_msg=name)
    # A year only one zone indexed: that zone's table alone.
    only = store.tiles(2025)
    assert list(only.tile.values) == ["grid_-0.05_52.15"] and list(only.zone.values) == [30]
    with pytest.raises(TileNotFoundError, match=r"year 2019 not indexed in .*indexed: 2024, 2025"):
        store.tiles(2019)
