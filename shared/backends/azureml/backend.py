"""The ``azureml`` backend: one experiment is one AzureML sweep job (see :mod:`shared.backends.azureml`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.backends.azureml import CAPABILITIES
from shared.backends.azureml.around_sweep import AroundSweep
from shared.backends.azureml.assets import model_entity
from shared.backends.azureml.check_job import build_check_job, check_job_name_for
from shared.backends.azureml.handle import AzureMLHandle, handle_update
from shared.backends.azureml.planner import AzureMLPlanner
from shared.backends.azureml.scope import AzureMLScope, cluster_problem, model_problem
from shared.backends.azureml.section import AzureMLCompute
from shared.backends.azureml.sweep_job import (
    MODEL_OUTPUT,
    ComputeIdentity,
    azureml_compute,
    build_compute,
    job_name_for,
    stage_code,
)
from shared.backends.azureml.trials import (
    TERMINAL_JOB_STATUSES,
    draws_from_tags,
    number_children,
    sweep_timed_out,
    trial_record,
)
from shared.backends.azureml.workspace import AzureMLClient, JobInfo, WorkspaceClient, workspace_settings
from shared.config import MODEL_PREFIX, Settings
from shared.errors import BackendError
from shared.ports import HandleUpdate, RunDetails, RunState, RunStatus, Store
from shared.records import (
    ExperimentRecord,
    TrialRecord,
    TrialState,
    best_of,
    utcnow,
)
from shared.spec import ExperimentSpec
from shared.trials import counts_by_state, end_running_trials

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


ClientFactory = Callable[[AzureMLCompute], WorkspaceClient]


class AzureMLBackend(AroundSweep):
    """Runs an experiment as one AzureML sweep job; implements ``shared.ports.ComputeBackend``."""

    name = "azureml"
    handle_type = AzureMLHandle
    capabilities = CAPABILITIES
    planner = AzureMLPlanner()

    def __init__(
        self,
        store: Store,
        settings: Settings,
        client_factory: ClientFactory | None = None,
        *,
        scope: AzureMLScope | None = None,
        identity: ComputeIdentity | None = None,
    ) -> None:
        """``scope`` and ``identity`` default to the deployment's app settings (:mod:`shared.backends.azureml.scope`,
        :class:`ComputeIdentity`); the scope's workspace checks apply in hosted mode only."""
        self.store = store
        self.settings = settings
        self.scope = scope or AzureMLScope.of(settings.azure, settings.azureml)
        self.identity = identity if identity is not None else ComputeIdentity.of(settings.azureml)
        self._factory: ClientFactory = client_factory or (
            lambda compute: AzureMLClient.from_compute(compute, settings.azure, settings.azureml)
        )
        self._clients: dict[tuple[str | None, ...], WorkspaceClient] = {}

    # -- helpers
    @staticmethod
    def _spec(record: ExperimentRecord) -> ExperimentSpec:
        if record.spec is None:
            raise BackendError(f"experiment {record.id} has no spec (refused at intake)", retryable=False)
        return record.spec

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
        job_name = AzureMLHandle.model_validate(record.backend_state).job_name or job_name_for(record.id)
        return spec, self._client(compute), job_name

    # -- ComputeBackend
    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        """Find or create the AmlCompute cluster; a cluster of another VM size or without a managed identity is
        an error, and so (hosted) is a cluster or a registered model name this deployment does not own."""
        spec, client, _ = self._setup(record)
        compute = azureml_compute(spec)
        cluster = client.ensure_compute(build_compute(compute, self.identity, self.scope.tags()))
        problem = (
            cluster_problem(compute.compute_name, dict(cluster.tags or {}), self.scope)
            if self.settings.hosted
            else None
        )
        if problem is None and getattr(cluster, "identity", None) is None:
            problem = (
                f"compute.compute_name: AmlCompute {compute.compute_name} has no managed identity, and trials run "
                "as the compute's identity: choose another compute_name"
            )
        if problem is None:
            problem = self._model_problem(spec, client)
        if problem is not None:
            raise BackendError(problem, retryable=False)
        size = str(getattr(cluster, "size", "") or "")
        if size and size.lower() != compute.vm_size.lower():
            raise BackendError(
                f"AmlCompute {compute.compute_name} exists with VM size {size}, but the spec asks for "
                f"{compute.vm_size}: set compute.vm_size to {size} or choose another compute_name",
                retryable=False,
            )
        subscription, resource_group, workspace = workspace_settings(
            compute, self.settings.azure, self.settings.azureml
        )
        update = {
            "compute_name": compute.compute_name,
            "subscription_id": subscription,
            "resource_group": resource_group,
            "workspace": workspace,
        }
        return handle_update(record, update)

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        """Submit the data check's command job unless it exists (its name derives from the experiment id);
        the sweep follows at the poll that reads a passing verdict (:meth:`_after_check`)."""
        spec, client, _ = self._setup(record)
        name = check_job_name_for(record.id)
        existing = client.find(name)
        if existing is None:
            with tempfile.TemporaryDirectory(prefix="rapids-hpo-code-") as tmp:
                job = build_check_job(
                    spec, record.id, code_dir=stage_code(Path(tmp)), **self._job_options(record, client)
                )
                client.submit(job)
            existing = client.find(name)
        return handle_update(record, {"check_job": name, "studio_url": existing.studio_url if existing else None})

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """The sweep's state; every trial seen so far is written to the store on the way. A sweep gone from
        the workspace (no driver of ours to restart: AzureML runs it) fails the run."""
        spec, client, job_name = self._setup(record)
        if not AzureMLHandle.model_validate(record.backend_state).job_name:
            return self._after_check(record, client)
        found = client.find(job_name)
        if found is None:
            return RunStatus(RunState.FAILED, error=f"AzureML sweep job {job_name} is gone from the workspace")
        sweep = found
        timed_out = sweep_timed_out(spec, sweep, utcnow())
        trials, _ = self._sync_trials(record, spec, client, sweep, timed_out=timed_out)
        details = RunDetails(compute_status=sweep.status, job_name=job_name, trials=counts_by_state(trials))
        state = SWEEP_STATES.get(sweep.status, RunState.PENDING)
        if state is RunState.CANCELLED and timed_out:
            reason = f"the sweep reached limits.timeout ({spec.limits.timeout} s)"
            ended = RunStatus(RunState.SUCCEEDED, details=details.model_copy(update={"reason": reason}))
            return self._refit(record, spec, client, best_of(trials, spec.objective.goal), ended)
        if state is RunState.FAILED:
            where = f"; see {sweep.studio_url}" if sweep.studio_url else ""
            return RunStatus(state, error=f"AzureML sweep job {job_name} failed{where}", details=details)
        if state in {RunState.SUCCEEDED, RunState.CANCELLED}:
            return self._refit(
                record, spec, client, best_of(trials, spec.objective.goal), RunStatus(state, details=details)
            )
        return RunStatus(state, details=details)

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        """Store the best trial's ``model`` output under ``model/`` and, with ``output.register_model``, register
        its MLflow model in the workspace; returns ``{"best_child": name, ...}``."""
        spec, client, job_name = self._setup(record)
        sweep = client.get(job_name)
        timed_out = sweep_timed_out(spec, sweep, utcnow())
        trials, names = self._sync_trials(record, spec, client, sweep, timed_out=timed_out)
        best = best_of(trials, spec.objective.goal)
        child = names.get(best.number) if best is not None else None
        if best is None or child is None:
            return {}  # no trial completed with a value: the state machine fails the experiment
        handle_now = AzureMLHandle.model_validate(record.backend_state)
        refit = handle_now.refit_job if handle_now.refit_trial == best.number else None
        source = refit or child  # a sweep from before best-only refits: its trials saved their models
        with tempfile.TemporaryDirectory(prefix="rapids-hpo-model-") as tmp:
            folder = client.download_output(source, MODEL_OUTPUT, Path(tmp))
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            if not files:
                what = f"the refit of the best trial ({source})" if refit else f"the best trial {child}"
                raise BackendError(f"{what} saved no model in its '{MODEL_OUTPUT}' output")
            for path in files:
                name = MODEL_PREFIX + path.relative_to(folder).as_posix()
                self.store.put_artifact(record.id, name, path.read_bytes())
        handle: dict[str, Any] = {
            "best_child": child,
            "model_files": len(files),
            "azureml_best_child": sweep.properties.get("best_child_run_id"),
        }
        if spec.output.register_model is not None:
            problem = self._model_problem(spec, client)
            if problem is not None:
                raise BackendError(problem, retryable=False)
            model = model_entity(spec, record.id, child, tags=self.scope.tags(), source=source)
            handle["registered_model"] = client.register_model(model).model_dump()
        return handle_update(record, handle)

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        """Cancel the sweep (AzureML cancels its trials); trials still RUNNING in the store end CANCELLED."""
        self._stop(record, "cancelled with the experiment", TrialState.CANCELLED)
        return {}

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        """Leave nothing running: cancel the sweep if it still runs. The AmlCompute cluster is kept; it
        scales down to ``min_instances`` by itself after ``idle_time_before_scale_down``."""
        self._stop(record, "the experiment ended while this trial ran")
        return {}

    # -- internals
    def _model_problem(self, spec: ExperimentSpec, client: WorkspaceClient) -> str | None:
        """Hosted: why ``output.register_model.name`` may not get a new version here (checked before the sweep
        runs and again before registering), or None."""
        register = spec.output.register_model
        if register is None or not self.settings.hosted:
            return None
        return model_problem(register.name, client.model_tags(register.name), self.scope)

    def _stop(self, record: ExperimentRecord, reason: str, state: TrialState = TrialState.FAILED) -> None:
        handle = AzureMLHandle.model_validate(record.backend_state)
        jobs = [name for name in (handle.check_job, handle.job_name, handle.refit_job) if name]
        if not jobs:
            return
        _, client, job_name = self._setup(record)
        if handle.job_name is None:  # a poll may have submitted the sweep and lost its write: cancel it too
            jobs.append(job_name)
        for name in jobs:
            job = client.find(name)
            if job is not None and job.status not in TERMINAL_JOB_STATUSES and job.status != "CancelRequested":
                client.cancel(name)
        end_running_trials(self.store, record.id, reason, state)

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
