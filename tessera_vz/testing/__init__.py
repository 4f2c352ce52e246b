"""Test fixtures that stand in for the upstream TESSERA mirrors.

:mod:`tessera_vz.testing.tiles` writes synthetic tile trees with the real
geometry and a value formula any test can recompute;
:mod:`tessera_vz.testing.nginx` serves such a tree over HTTP with the same
server software as the real mirrors, so range, conditional-request and
request-count behaviour is tested against the real thing rather than a mock.
"""
