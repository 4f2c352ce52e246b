"""Package faces that import nothing until a name is asked for (PEP 562).

``import tessera_vz.reader`` used to load icechunk, xarray, zarr, aiohttp,
obstore, pyarrow and pyproj (1.5 s on a loaded machine) so that a script
catching one exception class, or ``tessera-vz --help``, paid for all of them.
A package's ``__init__`` now declares where each public name lives and
:func:`exports` resolves it on first use, so a caller pays only for what it
touches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for a package whose names live in submodules.

    Parameters
    ----------
    package
        The package's ``__name__``, used in the ``AttributeError`` of an
        unknown name so the message reads like Python's own.
    names
        Public name -> the absolute module that defines it.
    """

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def dir_() -> list[str]:
        return sorted(names)

    return getattr_, dir_
