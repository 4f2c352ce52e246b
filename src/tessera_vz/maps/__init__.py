"""Maps from embeddings: classes, similarity and change, computed strip by strip.

Functions over a :class:`~tessera_vz.reader.store.TesseraStore` returning
Datasets on the grid ``store.region`` returns for the same bbox (see
:mod:`.strips`): :func:`~.classify.training_set`, :func:`~.classify.fit`
and :func:`~.classify.predict` (a class map), :func:`~.cosine.similar`
(cosine similarity to references), :func:`~.cosine.change` (cosine
distance between two years), :func:`~.picture.rgb` (a false-colour
picture). Names resolve on first use (:mod:`tessera_vz.core.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera_vz.core.lazy import exports

if TYPE_CHECKING:
    from tessera_vz.maps.area import Area
    from tessera_vz.maps.classify import fit, predict, training_set
    from tessera_vz.maps.cosine import change, reference_embeddings, similar
    from tessera_vz.maps.model import Model, load_model
    from tessera_vz.maps.picture import rgb

__getattr__, __dir__ = exports(
    __name__,
    {
        "Area": "tessera_vz.maps.area",
        "fit": "tessera_vz.maps.classify",
        "predict": "tessera_vz.maps.classify",
        "training_set": "tessera_vz.maps.classify",
        "Model": "tessera_vz.maps.model",
        "load_model": "tessera_vz.maps.model",
        "rgb": "tessera_vz.maps.picture",
        "change": "tessera_vz.maps.cosine",
        "reference_embeddings": "tessera_vz.maps.cosine",
        "similar": "tessera_vz.maps.cosine",
    },
)

__all__ = [
    "Area", "Model", "change", "fit", "load_model", "predict",
    "reference_embeddings", "rgb", "similar", "training_set",
]  # fmt: skip
