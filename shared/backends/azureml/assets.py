"""The best model as an AzureML asset: the ``Model`` that ``output.register_model`` registers.

The trial saves an MLflow model (``MLmodel``, the sklearn or xgboost flavour) in the ``mlflow/`` folder of
its ``model`` output (``gpu_jobs``); the best trial's copy is registered straight from that job output
(``azureml://jobs/<child>/outputs/model/paths/mlflow/``), as AzureML registers job outputs, so nothing is
uploaded again. The version carries the experiment id as a tag: a retried finalize finds it instead of
registering a second version (:meth:`AzureMLClient.register_model`).
"""

from __future__ import annotations

from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import Model

from shared.backends.azureml.sweep_job import CREATED_BY, MODEL_OUTPUT, TAG_CREATED_BY, TAG_EXPERIMENT
from shared.spec import ExperimentSpec

MLFLOW_FOLDER = "mlflow"
"""Where the trial's MLflow model lives inside its ``model`` output (and under ``model/`` in our store):
``gpu_jobs.model_files.MLFLOW_DIR`` (not imported: it pulls numpy into the control plane)."""
TAG_BEST_TRIAL = "rapids-hpo.best-trial"


def model_entity(
    spec: ExperimentSpec,
    experiment_id: str,
    child: str,
    tags: dict[str, str] | None = None,
    *,
    source: str | None = None,
) -> Model:
    """The ``mlflow_model`` to register for the best trial's job ``child`` (offline, pure), from the ``model``
    output of job ``source`` (the refit of that trial; ``child`` itself for a sweep whose trials saved models);
    ``tags`` (the deployment's own, :meth:`shared.backends.azureml.scope.AzureMLScope.tags`) are added."""
    register = spec.output.register_model
    if register is None:
        raise ValueError("the spec sets no output.register_model")
    return Model(
        name=register.name,
        type=AssetTypes.MLFLOW_MODEL,
        path=f"azureml://jobs/{source or child}/outputs/{MODEL_OUTPUT}/paths/{MLFLOW_FOLDER}/",
        description=f"best trial of experiment {experiment_id} ({spec.name}): {spec.objective.primary_metric}",
        tags={
            **register.tags,
            **(tags or {}),
            TAG_EXPERIMENT: experiment_id,
            TAG_CREATED_BY: CREATED_BY,
            TAG_BEST_TRIAL: child,
        },
    )
