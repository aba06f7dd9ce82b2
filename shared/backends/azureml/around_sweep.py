"""The jobs around the sweep: the data check before it, the best trial's refit after it (issues 24 and 26).

:class:`AroundSweep` is the part of :class:`shared.backends.azureml.backend.AzureMLBackend` that drives them
from its poll: every job is named after the experiment, so a redelivered step finds the job it submitted
instead of submitting another (see :mod:`~shared.backends.azureml.check_job`,
:mod:`~shared.backends.azureml.refit_job`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from shared.backends.azureml.check_job import CHECK_OUTPUT, check_job_name_for, read_verdict
from shared.backends.azureml.handle import AzureMLHandle, handle_update
from shared.backends.azureml.refit_job import build_refit_job, refit_job_name_for
from shared.backends.azureml.sweep_job import ComputeIdentity, build_sweep_job, stage_code
from shared.backends.azureml.trials import TERMINAL_JOB_STATUSES
from shared.backends.azureml.workspace import JobInfo, WorkspaceClient
from shared.config import DATA_CHECK_ARTIFACT
from shared.ports import RunDetails, RunState, RunStatus, Store
from shared.records import BestTrial, ExperimentRecord, ExperimentStatus
from shared.spec import ExperimentSpec
from shared.spec.sections import azureml_uri_form
from shared.telemetry import traceparent_for
from shared.telemetry.compute import for_compute, job_environment


class AroundSweep:
    """The data check and the refit, for the backend that owns the store, the identity and the clients."""

    store: Store
    identity: ComputeIdentity | None

    def _spec(self, record: ExperimentRecord) -> ExperimentSpec:
        raise NotImplementedError

    def _setup(self, record: ExperimentRecord) -> tuple[ExperimentSpec, WorkspaceClient, str]:
        raise NotImplementedError

    def _telemetry(self, record: ExperimentRecord) -> dict[str, str]:
        """The trials' trace and exporter settings (``shared.telemetry.compute``): they export with the
        cluster's identity, ours or its system-assigned one."""
        client_id = self.identity.client_id if self.identity else None
        return job_environment(for_compute(record.traceparent, client_id, system_identity=True))

    def _job_options(self, record: ExperimentRecord, client: WorkspaceClient) -> dict[str, Any]:
        """What the check job and the sweep share beyond the spec: the data asset's type, the identity, the trace."""
        spec = self._spec(record)
        asset_type = None
        azureml = azureml_uri_form(spec.dataset.uri)
        if azureml is not None and "asset" in azureml[0]:
            asset_type = client.data_asset_type(azureml[1]["name"], azureml[1].get("version"))
        return {
            "data_asset_type": asset_type,
            "identity": self.identity,
            "traceparent": traceparent_for(record.traceparent),
        }

    def _submit_sweep(self, record: ExperimentRecord, client: WorkspaceClient) -> JobInfo | None:
        """Create the sweep job unless it exists (a redelivered poll finds the one it submitted)."""
        spec, _, job_name = self._setup(record)
        if client.find(job_name) is None:
            with tempfile.TemporaryDirectory(prefix="rapids-hpo-code-") as tmp:
                job = build_sweep_job(
                    spec,
                    record.id,
                    code_dir=stage_code(Path(tmp)),
                    telemetry=self._telemetry(record),
                    **self._job_options(record, client),
                )
                job.name = job_name
                client.submit(job)
        return client.find(job_name)

    def _after_check(self, record: ExperimentRecord, client: WorkspaceClient) -> RunStatus:
        """The poll before the sweep exists: wait for the data check job; on a passing verdict store what it
        learned and submit the sweep, on a failing one (or a check that could not run) fail the run once,
        with the reason, before any trial. A run cancelled meanwhile ends CANCELLED once its check job ended,
        and no sweep is submitted."""
        name = AzureMLHandle.model_validate(record.backend_state).check_job or check_job_name_for(record.id)
        check = client.find(name)
        details = RunDetails(
            compute_status=check.status if check else None, job_name=name, waiting_for="the data check"
        )
        if check is None:
            return RunStatus(RunState.FAILED, error=f"AzureML data check job {name} is gone from the workspace")
        if record.status is ExperimentStatus.CANCELLING and check.status in TERMINAL_JOB_STATUSES:
            return RunStatus(RunState.CANCELLED, details=details)  # cancelled before the sweep: none is started
        if check.status in {"Failed", "Canceled"}:
            where = f"; see {check.studio_url}" if check.studio_url else ""
            error = f"the data check job {name} ended {check.status} before a verdict{where}"
            return RunStatus(RunState.FAILED, error=error, details=details)
        if check.status != "Completed":
            return RunStatus(RunState.PENDING, details=details)
        with tempfile.TemporaryDirectory(prefix="rapids-hpo-check-") as tmp:
            verdict = read_verdict(client.download_output(name, CHECK_OUTPUT, Path(tmp)))
        if verdict.report is None:
            return RunStatus(RunState.FAILED, error=verdict.error, details=details)
        self.store.put_artifact(record.id, DATA_CHECK_ARTIFACT, verdict.report.model_dump_json(indent=2).encode())
        sweep = self._submit_sweep(record, client)
        _, _, job_name = self._setup(record)
        updates = handle_update(record, {"job_name": job_name, "studio_url": sweep.studio_url if sweep else None})
        status = sweep.status if sweep else None
        return RunStatus(
            RunState.PENDING, details=RunDetails(compute_status=status, job_name=job_name), updates=updates
        )

    def _refit(
        self,
        record: ExperimentRecord,
        spec: ExperimentSpec,
        client: WorkspaceClient,
        best: BestTrial | None,
        ended: RunStatus,
    ) -> RunStatus:
        """The sweep ended as ``ended`` says: refit its best trial once (:mod:`shared.backends.azureml.refit_job`)
        and report ``ended`` when the refit job has; a refit that fails fails a completed run (a cancelled one
        ends without its model). No trial completed: nothing to refit."""
        if best is None:
            return ended
        name = refit_job_name_for(record.id)
        job = client.find(name)
        if job is None:
            with tempfile.TemporaryDirectory(prefix="rapids-hpo-code-") as tmp:
                options = self._job_options(record, client)
                client.submit(build_refit_job(spec, record.id, best, code_dir=stage_code(Path(tmp)), **options))
            job = client.find(name)
        updates = handle_update(record, {"refit_job": name, "refit_trial": best.number})
        status = job.status if job is not None else None
        if status not in TERMINAL_JOB_STATUSES:
            waiting = f"the refit of trial {best.number} ({name})"
            details = ended.details.model_copy(
                update={"waiting_for": waiting, "job_name": name, "compute_status": status}
            )
            return RunStatus(RunState.RUNNING, details=details, updates=updates)
        if status == "Completed":
            return RunStatus(ended.state, details=ended.details, updates=updates)
        where = f"; see {job.studio_url}" if job is not None and job.studio_url else ""
        error = f"the refit of the best trial ({best.number}, job {name}) ended {status}{where}"
        state = RunState.FAILED if ended.state is RunState.SUCCEEDED else ended.state
        return RunStatus(state, error=error, details=ended.details, updates=updates)
