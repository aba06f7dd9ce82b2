"""A trial's output folder: the model, its MLflow form, metrics, params and feature encoding.

Layout (what the HPO driver stores under ``model/`` and the API's model zip holds)::

    model.joblib | model.json   the scikit-learn forest (joblib) or the XGBoost booster (JSON)
    mlflow/                     the same model as an MLflow model (sklearn or xgboost flavour)
    metrics.json params.json features.json   (features.json: feature encoding, task, target classes)

Everything here loads without a GPU. A forest is a pickle: it loads only under the scikit-learn minor
release that wrote it, so the image and the loaders pin one minor (:data:`SKLEARN_MINOR`) and
:func:`load_model` checks it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpu_jobs.encoding import FeatureEncoding, encode_features
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import Task
from gpu_jobs.target import TargetEncoding
from gpu_jobs.trainers import FOREST_MISSING_VALUE, forest_prediction

MODEL_FILES: dict[str, str] = {"random_forest": "model.joblib", "xgboost": "model.json"}
FEATURES_FILE = "features.json"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
MLFLOW_DIR = "mlflow"
SKLEARN_MINOR = "1.9"
"""The scikit-learn minor release of the GPU image and of every loader (requirements-dev.txt,
gpu_jobs/environment.yml and gpu_jobs/Dockerfile pin it; tests/test_gpu_jobs_packaging.py checks)."""

log = logging.getLogger(__name__)


def minor_of(version: str) -> str:
    """``"1.9"`` of ``"1.9.1"`` (or of ``"1.9.dev0"``)."""
    return ".".join(version.split(".")[:2])


def check_sklearn_version(saved: str | None, installed: str, *, source: str) -> None:
    """:class:`UserError` when a forest pickled by scikit-learn ``saved`` cannot be trusted to load under
    ``installed`` (another minor release: tree internals change between minors)."""
    if saved is None or minor_of(saved) == minor_of(installed):
        return
    raise UserError(
        f"{source} holds a random forest saved by scikit-learn {saved}, but this Python has scikit-learn "
        f"{installed}: install scikit-learn=={minor_of(saved)}.* to load it (the project pins {SKLEARN_MINOR}.*)"
    )


def save_model_file(directory: Path, model: str, estimator: Any) -> Path:
    """Write the portable ``estimator`` (scikit-learn forest or ``xgboost.Booster``) as ``model``'s file."""
    path = directory / MODEL_FILES[model]
    if model == "random_forest":
        import joblib

        joblib.dump(estimator, path, compress=3)
    else:
        estimator.save_model(path)
    return path


def save_outputs(
    directory: Path,
    *,
    model: str,
    estimator: Any,
    metrics: dict[str, Any],
    trial: Mapping[str, Any],
    encoding: FeatureEncoding,
    target: TargetEncoding,
) -> None:
    """Write the whole output folder; ``metrics`` gains ``model_path`` and ``mlflow_model`` (the MLflow
    model's folder, or ``None`` with ``mlflow_model_error`` saying why it could not be written)."""
    from gpu_jobs.mlflow_model import save_mlflow_model

    directory.mkdir(parents=True, exist_ok=True)
    metrics["model_path"] = str(save_model_file(directory, model, estimator))
    try:
        metrics["mlflow_model"] = str(
            save_mlflow_model(
                directory / MLFLOW_DIR,
                model=model,
                estimator=estimator,
                encoding=encoding,
                target=target,
                params=trial["params"],
                metrics=metrics,
            )
        )
    except ImportError as exc:  # a compute environment without MLflow still yields the model files
        log.warning("MLflow model not written: %s", exc)
        metrics.update(mlflow_model=None, mlflow_model_error=f"mlflow is not installed here ({exc})")
    write_trial_files(directory, metrics=metrics, trial=trial, encoding=encoding, target=target)


def write_trial_files(
    directory: Path,
    *,
    metrics: Mapping[str, Any],
    trial: Mapping[str, Any],
    encoding: FeatureEncoding,
    target: TargetEncoding,
) -> None:
    """Write ``metrics.json``, ``params.json`` and ``features.json`` (read by :func:`load_model`); the
    latter holds the feature encoding and the target's (task, classes in code order)."""
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (directory / PARAMS_FILE).write_text(json.dumps(trial, indent=2, sort_keys=True) + "\n")
    features: dict[str, Any] = {
        **encoding.to_json(),
        "model": trial["model"],
        "target": trial["target"],
        **target.to_json(),
        "forest_missing_value": FOREST_MISSING_VALUE,
    }
    if trial["model"] == "random_forest":
        import sklearn

        features["scikit_learn_version"] = sklearn.__version__
    (directory / FEATURES_FILE).write_text(json.dumps(features, indent=2) + "\n")


@dataclass(frozen=True)
class SavedModel:
    """A trained model loaded back from a trial's output folder; needs no GPU."""

    model: str
    estimator: Any
    """A scikit-learn forest or an ``xgboost.Booster``."""
    encoding: FeatureEncoding
    target: TargetEncoding
    forest_missing_value: float = FOREST_MISSING_VALUE

    @property
    def task(self) -> Task:
        return self.target.task

    @property
    def target_classes(self) -> tuple[Any, ...]:
        """The original class labels, in code order (empty for regression)."""
        return self.target.classes

    def _raw(self, frame: Any) -> np.ndarray:
        """What the model predicts for a pandas frame (see ``gpu_jobs.trainers.Trainer.predict``).

        Raw columns (strings, datetimes) are encoded as in training; numeric columns are used as given.
        """
        features = encode_features(frame, self.encoding).to_numpy(dtype=np.float32)
        if self.model == "random_forest":
            features = np.where(np.isnan(features), np.float32(self.forest_missing_value), features)
            return np.asarray(forest_prediction(np, self.estimator, features, self.task, self.target.n_classes))
        return np.asarray(self.estimator.inplace_predict(features), dtype=np.float64)

    def predict_proba(self, frame: Any) -> np.ndarray:
        """``(n, K)`` probabilities, one column per class of ``target_classes`` (classification only)."""
        if self.task == "regression":
            raise UserError("a regression model predicts values, not class probabilities: use predict")
        raw = self._raw(frame)
        return np.column_stack([1.0 - raw, raw]) if self.task == "binary" else raw

    def predict(self, frame: Any) -> np.ndarray:
        """Predicted values (float64) for a regression, the most probable original class label otherwise."""
        if self.task == "regression":
            return self._raw(frame).reshape(-1)
        return self.target.decode(self.predict_proba(frame).argmax(axis=1))


def load_model(path: str | Path) -> SavedModel:
    """Load the model a trial saved: ``path`` is its output folder or the model file inside it."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    features_file = directory / FEATURES_FILE
    if not features_file.exists():
        raise UserError(f"no {FEATURES_FILE} in {directory}: not a trial output folder")
    described = json.loads(features_file.read_text())
    model = described["model"]
    model_file = directory / MODEL_FILES[model] if path.is_dir() else path
    if not model_file.exists():
        raise UserError(f"model file not found: {model_file}")
    if model == "random_forest":
        import joblib
        import sklearn

        check_sklearn_version(described.get("scikit_learn_version"), sklearn.__version__, source=str(model_file))
        estimator: Any = joblib.load(model_file)
    else:
        import xgboost

        estimator = xgboost.Booster()
        estimator.load_model(model_file)
    return SavedModel(
        model=model,
        estimator=estimator,
        encoding=FeatureEncoding.from_json(described),
        target=TargetEncoding.from_json(described),
        forest_missing_value=float(described.get("forest_missing_value", FOREST_MISSING_VALUE)),
    )
