"""Count aborted exits of short processes that read a point (the exit race of settle.py).

A script a person runs: it builds a small local index, then runs ``--runs``
short processes (``--parallel`` at a time, to load the machine the way CI
does) that open the index, read one point and exit, three ways: the
``tessera-vz point`` command, a Python script (``atexit`` hook on), and the
same script with the hook unregistered. It prints how many of each exited
with a non-zero status (134 is SIGABRT) and writes nothing else.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_SCRIPT = """
import atexit, sys
import tessera_vz.core.shutdown as settle
if sys.argv[2] == "off":
    atexit.unregister(settle._settle)
from tessera_vz.reader import open_store
print(open_store(sys.argv[1], allow_local_sources=True).point(0.85, 49.85, 2024)[0])
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--parallel", type=int, default=6)
    args = ap.parse_args()
    from tessera_vz.indexer.run import IndexOptions, run_index
    from tessera_vz.testing.tiles import make_tree

    work = Path(tempfile.mkdtemp(prefix="tvz-exit-"))
    make_tree(work / "tree", bbox=(0.8, 49.8, 0.9, 49.9), years=(2024,), bands=4)
    run_index(IndexOptions(source=str(work / "tree"), out=str(work / "index")))
    index = str(work / "index")
    cli = [str(Path(sys.executable).with_name("tessera-vz")), "point", "0.85", "49.85",
           "--year", "2024", "--store", index, "--allow-local-sources", "--json"]  # fmt: skip
    ways = {
        "tessera-vz point (os._exit)": cli,
        "python script, atexit hook": [sys.executable, "-c", _SCRIPT, index, "on"],
        "python script, no hook": [sys.executable, "-c", _SCRIPT, index, "off"],
    }
    for label, argv in ways.items():

        def one(_: int, argv: list[str] = argv) -> int:
            return subprocess.run(argv, capture_output=True, check=False).returncode

        with ThreadPoolExecutor(args.parallel) as pool:
            codes = list(pool.map(one, range(args.runs)))
        bad = [c for c in codes if c != 0]
        print(f"{label:32s} {len(bad):3d} of {args.runs} exited non-zero {sorted(set(bad))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
