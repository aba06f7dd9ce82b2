"""The best trial's refit on AzureML: one command job after the sweep ended (offline, pure).

Issue 26: every trial used to refit its parameters on all rows and convert its forest to save a model nobody
but the best would use. Now the sweep's trials only score (no ``--output``), and once the sweep has ended
(completed, stopped at its timeout, or cancelled with finished trials: a cancelled run keeps its best model
so far) the backend refits the best trial's parameters once, as the other backends' drivers do
(``shared.hpo.refit``): ``python -m gpu_jobs.refit_job`` on the trial's code, environment, data and identity,
with the best trial's hyperparameters as literal flags and the scores that chose them. Its ``model`` output is
what ``finalize`` stores. The job is named after the experiment (:func:`refit_job_name_for`), so a redelivered
poll finds it instead of refitting twice.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from azure.ai.ml.entities import Command

from gpu_jobs.params import HYPERPARAMETERS
from shared.backends.azureml.data_input import DataBinding
from shared.backends.azureml.sweep_job import (
    MODEL_OUTPUT,
    ComputeIdentity,
    command_job,
    data_flags,
    job_name_for,
    submitted_alone,
    with_install,
)
from shared.records import BestTrial
from shared.spec import ExperimentSpec

_SUFFIX = "-refit"
REFIT_PACKAGES: tuple[str, ...] = ("mlflow-skinny",)
"""What the refit installs when the image lacks it: the MLflow model beside the native one."""


def refit_job_name_for(experiment_id: str) -> str:
    """The refit job's name: the sweep's plus ``-refit``, within AzureML's 255 characters."""
    return job_name_for(experiment_id)[: 255 - len(_SUFFIX)] + _SUFFIX


def _literal(value: bool | int | float | str | None) -> str:
    """A hyperparameter's value as ``gpu_jobs.train`` reads it back (the trial's own flag syntax)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"a hyperparameter value the trial CLI cannot take: {value!r}")
    return str(value) if isinstance(value, int) else repr(value) if isinstance(value, float) else shlex.quote(value)


def refit_command(spec: ExperimentSpec, best: BestTrial, data: DataBinding, *, install: bool) -> str:
    """``python -m gpu_jobs.refit_job`` with the trial's flags, the best trial's hyperparameters and its scores."""
    table = HYPERPARAMETERS[spec.trial.model]
    params = [f"--{name} {_literal(value)}" for name, value in sorted(best.params.items()) if name in table]
    scores = {
        "trial": best.number,
        "primary_metric": spec.objective.primary_metric,
        "value": best.value,
        "metrics": best.metrics,
    }
    line = " ".join(
        [
            "python -m gpu_jobs.refit_job",
            *data_flags(spec, data, MODEL_OUTPUT),
            *params,
            f"--cross_validation {shlex.quote(json.dumps(scores, sort_keys=True))}",
        ]
    )
    return with_install(line, [*REFIT_PACKAGES, *data.packages] if install else ())


def build_refit_job(
    spec: ExperimentSpec,
    experiment_id: str,
    best: BestTrial,
    *,
    code_dir: Path,
    data_asset_type: str | None = None,
    identity: ComputeIdentity | None = None,
    traceparent: str | None = None,
) -> Command:
    """The refit's command job for the best trial ``best`` of ``spec``'s sweep (its value must be known)."""
    job = command_job(
        spec,
        experiment_id,
        code_dir=code_dir,
        line=lambda data, install: refit_command(spec, best, data, install=install),
        output=MODEL_OUTPUT,
        data_asset_type=data_asset_type,
        identity=identity,
        traceparent=traceparent,
    )
    label = f"refit of trial {best.number}"
    return submitted_alone(job, spec, experiment_id, name=refit_job_name_for(experiment_id), label=label)
