"""A simulated global year of TESSERA tiles, served over HTTPS with computed bytes.

:mod:`.cells` picks the tiles (land cells of the real 0.1-degree grid, with
the real geometry's shapes), :mod:`.content` computes any byte of any file
from the value formula, :mod:`.server` serves them as nginx would (in a child
process: :mod:`.process`), :mod:`.manifest` writes the upstream manifest.
``benchmarks/world.py`` builds, indexes, publishes and reads it.
"""
