"""``tessera-vz serve``: a MapLibre map viewer over an index, and its public HTTP API."""

from tessera_vz.serve.app import Limits, create_app

__all__ = ["Limits", "create_app"]
