"""``tessera-vz demo``: generate, serve, index and read a small sample tree."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from tessera_vz.demo import run_demo

    return run_demo(args.dir, keep=args.keep)
