"""A local stand-in for an upstream TESSERA mirror: a generated tile tree and nginx serving it.

:mod:`tessera_vz.mirror.tree` writes trees laid out as upstream publishes
them (real geometry, genuine ``.npy`` files, a manifest:
:mod:`tessera_vz.mirror.manifest`) with values any pixel of which can be
recomputed; :mod:`tessera_vz.mirror.nginx` serves a
tree over HTTP(S) with the same server software as the real mirrors.
``tessera-vz demo`` runs on both; the tests and benchmarks use them through
:mod:`tessera_vz.testing`, which adds the servers that misbehave on purpose.
"""
