"""The ``azureml`` backend: one experiment is one AzureML sweep job (see :mod:`shared.backends.azureml`)."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from shared.backends.azureml.sweep_job import (
    MODEL_OUTPUT,
    ROOT,
    azureml_compute,
    build_compute,
    build_sweep_job,
    job_name_for,
    stage_code,
)
from shared.backends.azureml.trials import (
    TERMINAL_JOB_STATUSES,
    draws_from_tags,
    number_children,
    seconds_between,
    sweep_timed_out,
    trial_record,
)
from shared.backends.azureml.workspace import AzureMLClient, JobInfo, WorkspaceClient, workspace_settings
from shared.compute_spec import AzureMLCompute
from shared.config import MODEL_PREFIX, Settings
from shared.errors import BackendError
from shared.ports import RunState, RunStatus, Store
from shared.records import ExperimentRecord, TrialRecord, TrialState, best_of
from shared.spec import ExperimentSpec

ESTIMATED_TRIAL_SECONDS = 1800
"""Per-trial estimate when the spec sets no time limit: the seed's recorded run (5 concurrent trials on
Standard_NC6s_v3 took about 35 minutes, node start and image pull included)."""
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


ClientFactory = Callable[[AzureMLCompute], WorkspaceClient]


class AzureMLBackend:
    """Runs an experiment as one AzureML sweep job; implements ``shared.ports.ComputeBackend``."""

    name = "azureml"

    def __init__(self, store: Store, settings: Settings, client_factory: ClientFactory | None = None) -> None:
        self.store = store
        self.settings = settings
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
                self.store.put_artifact(record.id, name, path.read_bytes())
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
        for trial in self.store.list_trials(record.id):
            if trial.state is TrialState.RUNNING:
                duration = seconds_between(trial.started_at, now)
                self.store.put_trial(
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
        stored = {t.number: t for t in self.store.list_trials(record.id)}
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
                self.store.put_trial(trial)
                stored[number] = trial
        return [stored[n] for n in sorted(stored)], {number: child.name for number, child in numbered}
