"""An index from a stranger is untrusted input (issue 19, items 2-4; ``docs/security.md``).

Each test is one finding, against real servers on loopback: a crafted index
(a copy of a real one with values rewritten through Icechunk), nginx for the
tiles, moto for S3 and the liar server recording what reaches a server the
index named. A copy of an index is someone else's index: no permission was
remembered for it on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import zarr

from tessera_vz.cli import main as cli_main
from tessera_vz.core.addresses import DestinationRefusedError, refusal
from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.files import inside
from tessera_vz.core.layout import check_tile_name, parse_zone_list, repo_name, year_of_branch
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.permissions import config_dir, index_key, remembered
from tessera_vz.core.repos import container_name, credentials
from tessera_vz.core.text import printable
from tessera_vz.core.urls import check_root, under
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.liar import LiarServer
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.s3 import MotoS3
from tessera_vz.testing.tiles import TileSpec

from . import test_untrusted

# The tree, its nginx over HTTPS on 127.0.0.1 and the index the user made of it.
tree, nginx, http_index = test_untrusted.tree, test_untrusted.nginx, test_untrusted.http_index

YEAR = 2024
ZONE = 31


def _expected(root: Path, spec: TileSpec, lon: float, lat: float, store: object) -> np.ndarray:
    loc = store.locate(lon, lat, YEAR)  # type: ignore[attr-defined]
    emb = np.load(root / spec.emb_path)[loc.row, loc.col].astype(np.float32)
    return emb * np.float32(np.load(root / spec.scales_path)[loc.row, loc.col])


def _rename_tile(index: Path, old: str, new: str) -> None:
    """Rewrite one tile name in the 2024 tiles table (a crafted index)."""
    repo = ic.Repository.open(ic.local_filesystem_storage(str(index / repo_name(ZONE))))
    session = repo.writable_session(str(YEAR))
    group = zarr.open_group(session.store, path="tiles", mode="r+")
    was = group["tile"]
    names = [str(n) for n in was[:]]
    names[names.index(old)] = new
    arr = np.asarray(names)  # fixed width, as the indexer writes it
    attrs = dict(was.attrs)
    del group["tile"]
    tile = group.create_array("tile", shape=arr.shape, dtype=arr.dtype, dimension_names=["tile"])
    tile.attrs.update(attrs)
    tile[:] = arr
    session.commit("craft a tile name")


# -- 2. names from an index never become paths or terminal control -----------------


@pytest.mark.parametrize(
    "crafted", ["../../../../../escaped", "/tmp/abs-escape", "grid_0.85_49.95/.."]
)
def test_catalog_tile_names_never_become_paths(
    http_index: Path,
    tree: tuple[Path, list[TileSpec]],
    tmp_path: Path,
    crafted: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`catalog --out DIR`: a tile named ``../…`` or ``/…`` writes nothing outside DIR."""
    spec = tree[1][0]
    theirs = tmp_path / "theirs"
    shutil.copytree(http_index, theirs)
    name = crafted.replace("/tmp/", f"{tmp_path}/")
    _rename_tile(theirs, spec.name, name)
    out = tmp_path / "nest" / "catalog"
    out.parent.mkdir()
    before = {p for p in tmp_path.rglob("*") if "theirs" not in p.parts}
    code = cli_main(["catalog", str(theirs), "--out", str(out), "--json", "--quiet"])
    printed = capsys.readouterr()
    assert code == 1, printed.err
    report = json.loads(printed.out)
    (failed,) = report["failed"]
    assert failed["tile"] == name and "grid_<lon>_<lat>" in failed["reason"]
    written = {p for p in tmp_path.rglob("*") if "theirs" not in p.parts} - before
    assert written and all(p.is_relative_to(out) for p in written), written
    items = sorted(p.name for p in (out / "stac" / "utm31" / str(YEAR)).glob("grid_*.json"))
    assert items == sorted(f"{s.name}.json" for s in tree[1][1:])


def test_inside_checks_grammar_and_resolved_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "utm31").mkdir(parents=True)
    assert inside(out, "utm31", "2024") == out / "utm31" / "2024"
    for bad in ("..", ".", "", "a/b", "..\\x", "x\x1b[2J"):
        with pytest.raises(ValueError, match="not a plain file name"):
            inside(out, "utm31", bad)
    (out / "utm31" / "2023").symlink_to(tmp_path)  # a link planted in the output folder
    with pytest.raises(ValueError, match="resolves outside"):
        inside(out, "utm31", "2023", "x.json")


def test_the_layout_grammar() -> None:
    assert check_tile_name("grid_0.85_49.95") == "grid_0.85_49.95"
    assert check_tile_name("grid_-179.95_-89.95") == "grid_-179.95_-89.95"
    bad_names = [
        "grid_0.80_49.95",
        "grid_0.85_49.9",
        "grid_00.85_49.95",
        "grid_180.05_0.05",
        "grid_0.85_90.05",
        "grid_0.85_49.95\n",
        "../grid_0.85_49.95",
        "grid_+0.85_1.05",
    ]
    for bad in bad_names:
        with pytest.raises(ValueError, match="not grid_<lon>_<lat>"):
            check_tile_name(bad)
    branches = ("2024", "99999", "0042", "main", "\uff12\uff10\uff12\uff14")  # fullwidth digits
    assert [year_of_branch(b) for b in branches] == [2024, None, None, None, None]
    with pytest.raises(ValueError):
        parse_zone_list(
            {"format": "tessera-vz zone list", "zones": [{"zone": 0, "repo": "utm00.icechunk"}]}
        )
    assert printable("grid\x1b]0;pwned\x07\u202e") == "grid\\x1b]0;pwned\\x07\\u202e"


def test_escape_sequences_in_a_tile_name_never_reach_the_terminal(
    http_index: Path, tree: tuple[Path, list[TileSpec]], nginx: NginxServer, tmp_path: Path
) -> None:
    """A tile named with an escape sequence: its read fails, and stderr holds no ESC byte."""
    spec = tree[1][0]
    theirs = tmp_path / "theirs"
    shutil.copytree(http_index, theirs)
    _rename_tile(theirs, spec.name, spec.name + "\x1b]0;pwned\x07\x1b[2J")
    run = subprocess.run(
        [sys.executable, "-m", "tessera_vz.cli", "region", str(spec.lon - 0.04),
         str(spec.lat - 0.04), str(spec.lon + 0.04), str(spec.lat + 0.04), "--year", str(YEAR),
         "--store", str(theirs), "--out", str(tmp_path / "r.tif"), "--allow-source", nginx.url],
        capture_output=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert run.returncode != 0
    assert b"\x1b" not in run.stderr + run.stdout
    assert b"\\x1b]0;pwned" in run.stderr  # the name is shown, inert


# -- 3. credentials go only where the user sent them ------------------------------------


def test_s3_credentials_never_reach_the_endpoint_an_index_records(
    tree: tuple[Path, list[TileSpec]], s3_env: MotoS3, tmp_path: Path
) -> None:
    """A container recording its own endpoint: reads go to the user's; it gets no request."""
    root, specs = tree
    s3_env.upload_tree(root, "trust-tiles", "v1")
    source = "s3://trust-tiles/v1/"
    out = tmp_path / "index"
    opts = IndexOptions(source=source, out=str(out))
    assert run_index(opts).exit_code == 0
    (tmp_path / "empty").mkdir()
    with LiarServer(tmp_path / "empty") as recorder:
        storage = ic.local_filesystem_storage(str(out / repo_name(ZONE)))
        cfg = ic.Repository.fetch_config(storage)
        assert cfg is not None
        store = ic.s3_store(endpoint_url=recorder.url, allow_http=True, s3_compatible=True,
                            force_path_style=True, region="us-east-1")  # fmt: skip
        cfg.set_virtual_chunk_container(
            ic.VirtualChunkContainer(source, store, name=container_name(source))
        )
        ic.Repository.open(storage, config=cfg).save_config()

        mine = {"endpoint_url": s3_env.endpoint}
        spec = specs[0]
        lon, lat = spec.lon + 0.013, spec.lat - 0.017
        through = open_store(str(out), s3_options=mine, direct_reads=False)
        want = _expected(root, spec, lon, lat, through)
        np.testing.assert_array_equal(through.point(lon, lat, YEAR), want)
        tile = through.open_tile(spec.lon, spec.lat, YEAR).embeddings.values
        np.testing.assert_array_equal(tile, np.load(root / spec.emb_path))
        assert recorder.requests() == []  # not one request, signed or not


# -- 4. destinations the user did not choose are refused --------------------------------


def test_internal_servers_are_not_read_for_someone_elses_index(
    http_index: Path,
    tree: tuple[Path, list[TileSpec]],
    nginx: NginxServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An index whose tiles live on 127.0.0.1 (or a name resolving there) reads nothing."""
    root, specs = tree
    spec = specs[1]
    lon, lat = spec.lon + 0.013, spec.lat - 0.017
    theirs = tmp_path / "theirs"
    shutil.copytree(http_index, theirs)
    nginx.clear_log()
    with pytest.raises(DestinationRefusedError, match="loopback"):
        open_store(str(theirs)).point(lon, lat, YEAR)
    with pytest.raises(ConfigurationError, match="not authorised"):
        open_store(str(theirs), direct_reads=False).point(lon, lat, YEAR)
    argv = ["point", str(lon), str(lat), "--year", str(YEAR), "--store", str(theirs), "--json"]
    assert cli_main(argv) == 2
    assert "--allow-private" in capsys.readouterr().err
    assert cli_main(["verify", str(theirs), "--json"]) == 1  # every tile: its reason
    assert "is a loopback address" in capsys.readouterr().out
    assert nginx.requests() == []
    # Allowed explicitly, it is read (and equals the file).
    mine = open_store(str(theirs), allow_private_sources=True)
    np.testing.assert_array_equal(mine.point(lon, lat, YEAR), _expected(root, spec, lon, lat, mine))
    assert cli_main([*argv, "--allow-private"]) == 0
    assert cli_main([*argv, "--allow-source", nginx.url]) == 0
    capsys.readouterr()


def test_a_name_resolving_to_loopback_is_refused_on_the_address_connected_to(
    tree: tuple[Path, list[TileSpec]], nginx: NginxServer, tmp_path: Path
) -> None:
    """``localhost`` passes no name check; the resolver refuses the address it gives."""
    _root, specs = tree
    named = nginx.url.replace("127.0.0.1", "localhost")
    out = tmp_path / "index"
    assert run_index(IndexOptions(source=named, out=str(out))).exit_code == 0
    theirs = tmp_path / "theirs"
    shutil.copytree(out, theirs)
    spec = specs[2]
    nginx.clear_log()
    with pytest.raises(DestinationRefusedError, match=r"localhost resolves to .*loopback"):
        open_store(str(theirs)).point(spec.lon, spec.lat, YEAR)
    assert nginx.requests() == []
    assert open_store(str(out)).point(spec.lon, spec.lat, YEAR).shape == (2,)  # remembered


def test_allowed_sources_match_parsed_parts_on_segment_boundaries(
    http_index: Path, tree: tuple[Path, list[TileSpec]], nginx: NginxServer, tmp_path: Path
) -> None:
    """``--allow-source http://127.0.0.1:1875`` does not authorise port 18759, and so on."""
    import shutil

    # A copy: no permission is remembered for it, so only the prefixes given authorise.
    index = tmp_path / "copy"
    shutil.copytree(http_index, index)
    spec = tree[1][3]
    port = str(nginx.port)
    nginx.clear_log()
    for prefix in (f"http://127.0.0.1:{port[:-1]}", f"http://127.0.0.1:{port}0/"):
        store = open_store(str(index), allowed_sources=[prefix])
        with pytest.raises(ConfigurationError, match="not authorised"):
            store.point(spec.lon, spec.lat, YEAR)
    assert nginx.requests() == []
    assert not under("https://mirror.example.org.attacker.net/x", "https://mirror.example.org")
    assert not under("https://mirror.example.org/tilesX/a", "https://mirror.example.org/tiles")
    assert under("https://Mirror.example.org:443/tiles/a", "https://mirror.example.org/tiles")
    sneaky_urls = [
        "https://m.org/tiles/../secret/a",
        "https://m.org/tiles/%2e%2e/secret/a",
        "https://m.org/tiles/%2E%2E%2Fsecret/a",
        "https://u:p@m.org/tiles/a",
    ]
    for sneaky in sneaky_urls:
        assert not under(sneaky, "https://m.org/tiles/")
    files = SourceFiles(["https://m.org/tiles/"])
    assert files.root_of("https://m.org/tiles/2024/x.npy") == "https://m.org/tiles/"
    assert files.root_of("https://m.org/tiles/../etc/passwd") is None
    assert files.root_of("https://m.org/tilesX/a") is None
    for bad_root in ("https://m.org/tiles/../secret/", "https://m.org/a/%2e%2e/b/"):
        with pytest.raises(ConfigurationError, match=r"'\.' or '\.\.' segments"):
            check_root(bad_root)
        with pytest.raises(ConfigurationError):
            ReadOptions.of(allowed_sources=[bad_root])
    opts = ReadOptions.of(allowed_sources=["https://m.org/tiles/"])
    got = credentials(["https://m.org/tiles/../x/", "https://m.org/tiles/", "https://m.org/t/"],
                      opts)  # fmt: skip
    assert list(got) == ["https://m.org/tiles/"]


def test_addresses_refused_without_permission() -> None:
    cases = [("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
             ("192.168.0.1", "private"), ("172.16.5.4", "private"), ("fd00::1", "private"),
             ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
             ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
             ("::ffff:127.0.0.1", "loopback")]  # fmt: skip
    for address, kind in cases:
        assert refusal(address) == kind, address
    assert refusal("93.184.216.34") is None and refusal("2606:4700::1111") is None


def test_a_permission_is_remembered_on_this_machine_never_in_the_index(
    http_index: Path, nginx: NginxServer
) -> None:
    assert remembered(str(http_index)) == (nginx.url,)
    assert (config_dir() / "permissions.json").is_file()
    assert index_key(str(http_index)) in (config_dir() / "permissions.json").read_text()
    for path in http_index.rglob("*"):
        if path.is_file():
            assert b"permissions" not in path.read_bytes()
