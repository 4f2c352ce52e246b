"""tessera-vz: TESSERA embedding tiles as Zarr v3 through Icechunk virtual references.

The work lives in two sub-packages: :mod:`tessera_vz.reader` (what the data
is and how to read it) and :mod:`tessera_vz.indexer` (how the index is
written). This top level only holds the command-line entry point.
"""

__version__ = "0.1.0"
