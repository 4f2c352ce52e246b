"""Shared fixtures: generated tile trees and a real nginx serving them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera_vz.testing.nginx import NginxServer


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the reader's on-disk table cache inside the test session's temp area."""
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def serve(root: Path) -> NginxServer:
    """Start nginx on ``root``; fails (never skips) when nginx is missing."""
    return NginxServer(root).start()


@pytest.fixture
def nginx_factory() -> Iterator[list[NginxServer]]:
    """Start servers on demand; all are stopped at the end of the test."""
    servers: list[NginxServer] = []
    yield servers
    for s in servers:
        s.stop()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
