"""A fitted classifier with what it was fitted on: classes, bands, dataset (saved with joblib).

A model fitted on one TESSERA dataset means nothing on another (the same
pixel has other numbers in each), so a :class:`Model` records the dataset
``(version, variant)`` and the band order of its training embeddings, and
:meth:`Model.check` refuses to apply it to an index of another dataset or
band count before any pixel is read. ``--model-out``/``--model-in`` save
and load it with joblib; like any pickle, load only models you trust.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera_vz.core.dataset import DatasetMismatchError
from tessera_vz.core.errors import ConfigurationError

log = logging.getLogger(__name__)

#: The kinds of model ``classify`` fits (``--model``).
MODELS = ("knn", "forest", "logistic")
#: The format of a saved model (checked on load).
FORMAT = "tessera-vz-classifier/1"
#: Class codes are uint8; this one means no data.
NODATA = 255


@dataclass
class Model:
    """A fitted scikit-learn estimator and its provenance.

    ``classes[i]`` is the name of class code ``i`` (the estimator predicts
    codes); ``bands`` the embedding bands in the order the estimator takes
    them; ``dataset`` the training index's dataset attributes.
    """

    kind: str
    estimator: Any
    classes: list[str]
    bands: list[str]
    dataset: dict[str, str]
    label: str = ""
    year: int | None = None
    report: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def check(self, dataset: Mapping[str, str], bands: int | None = None) -> None:
        """Refuse applying the model to an index of another dataset or band count."""
        mine, theirs = self.dataset.get("tessera:dataset"), dataset.get("tessera:dataset")
        if mine != theirs:
            raise DatasetMismatchError(
                f"the model was fitted on dataset {mine}, the index holds {theirs}: a model is "
                "never applied to another TESSERA dataset; fit one on this index"
            )
        if bands is not None and bands != len(self.bands):
            raise DatasetMismatchError(
                f"the model takes {len(self.bands)} bands, the index has {bands}; fit one on "
                "this index"
            )

    def save(self, path: str | Path) -> None:
        """Write the model with joblib, whole or not at all."""
        import joblib

        from tessera_vz.core.files import atomic_path

        with atomic_path(path, kind="partial.joblib") as tmp:
            joblib.dump(self, tmp)


def load_model(path: str | Path) -> Model:
    """A model saved by :meth:`Model.save` (``--model-in``).

    Raises
    ------
    ConfigurationError
        The file is missing or not a tessera-vz model.
    """
    import joblib

    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"--model-in {str(path)!r} does not exist")
    try:
        model = joblib.load(p)
    except Exception as exc:
        raise ConfigurationError(f"cannot load model {str(path)!r}: {exc}") from None
    if not isinstance(model, Model) or model.format != FORMAT:
        raise ConfigurationError(
            f"{str(path)!r} is not a tessera-vz classifier ({FORMAT}); save one with "
            "classify --model-out"
        )
    return model


def estimator(kind: str, samples: int) -> Any:
    """A fresh scikit-learn estimator of ``kind`` (``knn``, ``forest`` or ``logistic``)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=max(1, min(5, samples)))
    if kind == "forest":
        # 50 trees: predicting every pixel costs about the read of the area (benchmarks/maps.py)
        return RandomForestClassifier(n_estimators=50, random_state=0)
    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    raise ConfigurationError(f"--model must be one of {', '.join(MODELS)}; got {kind!r}")


def class_table(classes: Sequence[str]) -> list[dict[str, Any]]:
    """``[{"code": 0, "name": …}, …]``: the class table written beside a map."""
    return [{"code": i, "name": name} for i, name in enumerate(classes)]


def class_tags(classes: Sequence[str]) -> dict[str, str]:
    """GeoTIFF tags naming the classes: ``tessera_classes`` (JSON) and ``TESSERA_CLASS_{code}``."""
    import json

    table = class_table(classes)
    tags = {"tessera_classes": json.dumps({str(r["code"]): r["name"] for r in table})}
    return tags | {f"TESSERA_CLASS_{r['code']}": r["name"] for r in table}
