"""The exceptions' former home, kept so existing ``from tessera_vz.reader.errors import``
lines go on working; they live in :mod:`tessera_vz.core.errors`."""

from tessera_vz.core.errors import *  # noqa: F403
from tessera_vz.core.errors import __all__ as __all__
