"""The trained model as an MLflow model, loadable with ``mlflow.pyfunc.load_model`` on a machine without a GPU.

* random forest: the **sklearn** flavour, a pipeline of the NaN handling used in training (NaN becomes
  ``FOREST_MISSING_VALUE``) and the scikit-learn forest (cuML forests arrive here already converted);
  ``pyfunc`` ``predict`` returns ``predict_proba`` for classes (an ``(n, K)`` array, one column per
  ``target_classes`` entry; two for a binary task) and the predicted values ``(n,)`` for a regression.
* XGBoost: the **xgboost** flavour (the booster as JSON, set to predict on the CPU); ``pyfunc`` ``predict``
  returns the positive class's probability ``(n,)`` (binary), ``(n, K)`` probabilities (multiclass) or
  the predicted values ``(n,)`` (regression).

Input, for both: a pandas frame of the *encoded* features (columns named as in training; the codes of
categorical columns are in ``features.json`` beside the model), of any numeric type: the frame pandas
reads from the training CSV as it is (float64 decimals, int64 whole numbers, float32). The signature
therefore declares the output only: MLflow checks a declared input type column by column and refuses int64
against doubles ("cannot safely convert") and float64 against longs, so no declaration of types fits a
CSV whose whole-number columns read as int64 in one file and float64 (a missing value) in another. The
columns are still checked, by name and order, by the model itself (scikit-learn's fitted feature names,
XGBoost's booster feature names), and listed in the metadata (``inputs``). Both models see float32 inside,
as in training, so the width of the input changes nothing. The MLmodel's ``metadata`` holds the
hyperparameters, the metrics, the task, the target classes (the labels the probability columns stand for,
in order) and the encoding; the signature's output is inferred from the model's own prediction, so it
states the shape above.
MLflow's own ``mlflow-skinny`` has both flavours (plus scikit-learn / XGBoost and pandas to use them).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpu_jobs.encoding import FeatureEncoding
from gpu_jobs.target import TargetEncoding
from gpu_jobs.trainers import FOREST_MISSING_VALUE

XGBOOST_NAME_FORBIDDEN = re.compile(r"[\[\]<]")
"""Characters XGBoost refuses in feature names."""


def mlflow_feature_names(model: str, encoding: FeatureEncoding) -> list[str]:
    """Column names of the model's input: the training names (XGBoost's forbidden characters become ``_``)."""
    names = list(encoding.encoded_names)
    if model == "xgboost":
        names = [XGBOOST_NAME_FORBIDDEN.sub("_", name) for name in names]
        seen: set[str] = set()
        for index, original in enumerate(names):
            unique = original
            while unique in seen:
                unique = f"{unique}_{index}"
            seen.add(unique)
            names[index] = unique
    return names


def logged_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``metrics`` (what the MLmodel's metadata records)."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def save_mlflow_model(
    path: Path,
    *,
    model: str,
    estimator: Any,
    encoding: FeatureEncoding,
    target: TargetEncoding,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> Path:
    """Save the portable ``estimator`` (scikit-learn forest or ``xgboost.Booster``) as an MLflow model at
    ``path`` (an earlier model there is replaced); returns ``path``. Raises ``ImportError`` without MLflow."""
    import mlflow.models

    if path.exists():  # MLflow refuses to write into a non-empty folder: this one is ours to replace
        shutil.rmtree(path)

    names = mlflow_feature_names(model, encoding)
    example = pd.DataFrame(np.zeros((2, len(names)), dtype=np.float64), columns=names)
    metadata = {
        "inputs": names,
        "params": dict(params),
        "metrics": logged_metrics(metrics),
        **target.to_json(),
        "features": encoding.to_json(),
        "written_by": "gpu_jobs (rapids-hpo-control)",
    }
    if model == "random_forest":
        import mlflow.sklearn
        import sklearn

        pipeline = forest_pipeline(estimator, names)
        predict_fn = "predict" if target.task == "regression" else "predict_proba"
        signature = output_signature(getattr(pipeline, predict_fn)(example))
        mlflow.sklearn.save_model(
            pipeline,
            str(path),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
            signature=signature,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", "pandas", "numpy"],
            pyfunc_predict_fn=predict_fn,
            metadata=metadata,
        )
    else:
        import mlflow.xgboost
        import xgboost

        booster = estimator.copy()
        booster.set_param({"device": "cpu"})
        booster.feature_names = names
        booster.feature_types = None
        predictions = booster.predict(xgboost.DMatrix(example))
        signature = output_signature(predictions)
        mlflow.xgboost.save_model(
            booster,
            str(path),
            model_format="json",
            signature=signature,
            pip_requirements=[xgboost_requirement(xgboost.__version__), "pandas", "numpy"],
            metadata=metadata,
        )
    return path


def output_signature(predictions: Any) -> Any:
    """A signature of the model's output only (see the module's docstring: inputs of any numeric type)."""
    import mlflow.models

    return mlflow.models.ModelSignature(inputs=None, outputs=mlflow.models.infer_signature(None, predictions).outputs)


def xgboost_requirement(version: str) -> str:
    """What a loader of an XGBoost JSON model needs: any release of the writer's major. Not the writer's
    exact version: the GPU image's 3.4 needs Python 3.12, and a Python 3.11 loader gets at most 3.2."""
    major = int(version.split(".", maxsplit=1)[0])
    return f"xgboost>={major}.0,<{major + 1}"


def forest_pipeline(forest: Any, feature_names: Sequence[str]) -> Any:
    """A fitted scikit-learn pipeline: NaN -> ``FOREST_MISSING_VALUE`` (as in training), then ``forest``.
    Input columns are checked by name (``feature_names``)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    missing = SimpleImputer(strategy="constant", fill_value=FOREST_MISSING_VALUE, keep_empty_features=True)
    missing.fit(pd.DataFrame(np.zeros((1, len(feature_names)), dtype=np.float32), columns=list(feature_names)))
    return Pipeline([("missing_values", missing), ("forest", forest)])
