"""Test fixtures that stand in for the upstream TESSERA mirrors.

:mod:`tessera_vz.testing.tiles` writes synthetic tile trees with the real
geometry and a value formula any test can recompute;
:mod:`tessera_vz.testing.nginx` serves such a tree over HTTP with the same
server software as the real mirrors, so range, conditional-request and
request-count behaviour is tested against the real thing rather than a mock.
Both live in :mod:`tessera_vz.mirror` (the demo uses them too) and are
imported from there.

For the HTTP read path: :mod:`~tessera_vz.testing.tls` makes a throwaway CA
so nginx and the other servers speak HTTPS like the real mirrors;
:mod:`~tessera_vz.testing.liar` serves files honestly except for one chosen
misbehaviour (duplicate multipart parts, lying lengths, redirects, ...);
:mod:`~tessera_vz.testing.latency` puts a streaming delay proxy in front of
any of them; :mod:`~tessera_vz.testing.faults` injects transient faults.
"""
