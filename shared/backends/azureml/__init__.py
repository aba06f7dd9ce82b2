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
                               ``mlflow.log_metric`` (any metric of the task: ``accuracy``, ``rmse``, ...); ``goal``
``trial``, ``dataset``         the trial's command line (``python -m gpu_jobs.train ...``, with ``--task``); fixed
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
  cancelled -> CANCELLED, or failed -> FAILED; an early-termination policy is configured -> PRUNED (nothing
  else cancels single trials of a running sweep, bar a person in the studio); no policy -> FAILED. A child in
  ``CancelRequested`` stays RUNNING until it is ``Canceled``.
* **The best trial** is ranked on the final CV mean (each trial's last logged value) over the synced trial
  records, as ``shared.records.best_of`` ranks them for the other backends. The sweep's
  ``best_child_run_id`` property is only reported beside it (``azureml_best_child``): AzureML ranks on the
  best value *ever* logged, and a trial logs running means per fold, so using it would repeat the seed's
  "best of the splits" defect. With no completed trial nothing is downloaded.
* **The data check** runs first, a command job on the cluster (:mod:`~shared.backends.azureml.check_job`);
  the sweep is submitted only by the poll that reads its passing verdict.
* **Best-only refit**: trials only score (no ``--output``, no model files); once the sweep ended, the best
  trial is refit on all rows once, a command job (:mod:`~shared.backends.azureml.refit_job`), and
  ``finalize`` stores that job's ``model`` output (a sweep from before this rule: the best child's).
* **Teardown** deletes nothing: an AmlCompute cluster scales to ``min_instances`` (0 by default, which costs
  nothing) after ``idle_time_before_scale_down`` and may serve other experiments. It cancels the sweep (and a
  check or refit job) if still running, and marks trials still RUNNING in the store as FAILED (CANCELLED after
  a cancel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.backends.azureml.section import AzureMLCompute
from shared.ports import Capabilities, Registration

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ports import ComputeBackend, Planner, Store


def _create(store: Store, settings: Settings) -> ComputeBackend:
    from shared.backends.azureml.backend import AzureMLBackend

    return AzureMLBackend(store, settings)


def _planner() -> Planner:
    from shared.backends.azureml.planner import AzureMLPlanner

    return AzureMLPlanner()


CAPABILITIES = Capabilities(
    model_from="finalize",
    cloud_resources=True,
    finds_orphans=False,
    restarts_driver=False,
    model_on_cancel=True,
    reasons={
        "model_from": "finalize downloads the best trial's model from the workspace",
        "cloud_resources": "a sweep job, and the AmlCompute cluster if it does not exist (it scales to zero)",
        "finds_orphans": "a cluster may serve other experiments and scales to min_instances by itself",
        "restarts_driver": "AzureML runs the sweep; there is no driver of ours to restart",
        "model_on_cancel": "cancel cancels the sweep; once AzureML reports it Canceled, finalize downloads the best "
        "finished trial's model output (each trial saves its model), as for a completed sweep",
    },
)
BACKEND = Registration(section=AzureMLCompute, capabilities=CAPABILITIES, create=_create, planner=_planner)

_WHERE = {
    **dict.fromkeys(["SWEEP_STATES", "AzureMLBackend", "AzureMLHandle", "ClientFactory"], "backend"),
    **dict.fromkeys(["ESTIMATED_TRIAL_SECONDS", "AzureMLPlanner"], "planner"),
    **dict.fromkeys(
        [
            "CREATED_BY",
            "MODEL_OUTPUT",
            "ROOT",
            "TAG_CREATED_BY",
            "TAG_EXPERIMENT",
            "TAG_SEED",
            "ComputeIdentity",
            "azureml_compute",
            "build_check_job",
            "build_compute",
            "build_sweep_job",
            "finish_draw",
            "job_name_for",
            "stage_code",
            "trial_command",
            "value_token",
        ],
        "sweep_job",
    ),
    **dict.fromkeys(["DataBinding", "data_binding"], "data_input"),
    **dict.fromkeys(["CHECK_OUTPUT", "build_check_job", "check_job_name_for", "parse_verdict"], "check_job"),
    **dict.fromkeys(["child_state", "number_children", "trial_params", "trial_record"], "trials"),
    **dict.fromkeys(["AzureMLClient", "JobInfo", "RunMetrics", "WorkspaceClient", "workspace_settings"], "workspace"),
}


def __getattr__(name: str) -> Any:  # lazy: the registry imports this package for its section only
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "CHECK_OUTPUT",
    "CREATED_BY",
    "ESTIMATED_TRIAL_SECONDS",
    "MODEL_OUTPUT",
    "ROOT",
    "SWEEP_STATES",
    "TAG_CREATED_BY",
    "TAG_EXPERIMENT",
    "TAG_SEED",
    "AzureMLBackend",
    "AzureMLClient",
    "AzureMLHandle",
    "AzureMLPlanner",
    "ClientFactory",
    "ComputeIdentity",
    "DataBinding",
    "JobInfo",
    "RunMetrics",
    "WorkspaceClient",
    "azureml_compute",
    "build_check_job",
    "build_compute",
    "build_sweep_job",
    "check_job_name_for",
    "child_state",
    "data_binding",
    "finish_draw",
    "job_name_for",
    "number_children",
    "parse_verdict",
    "stage_code",
    "trial_command",
    "trial_params",
    "trial_record",
    "value_token",
    "workspace_settings",
]
