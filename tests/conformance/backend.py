"""The backend conformance harnesses: one per ``ComputeBackend`` (the suite is ``test_backend.py`` here).

Each adapter has a harness (``HARNESSES``) that builds it over real parts where they exist here and says
how its compute ends a run; the helpers below drive a step and check its handle update the way the
state machine merges it:

* local: the real driver process (``python -m shared.hpo.run_driver``) on a Dask LocalCluster;
* vmcluster: the real Azure SDK clients against ``tests/arm_server.py`` (network, NICs, VMs, teardown),
  holding the Function App to the role assignments the Bicep declares (``tests/rbac.py``);
  the run's end is what the head node's driver writes to the experiment's compute area with its
  credential (the head node and workers themselves: ``tests/test_vmcluster_standin.py``);
* azureml: the FAKE workspace of ``tests/fakes/azureml.py`` (a live AzureML workspace cannot be reached
  here), with the real sweep-job mapping and trial sync.

A new backend adds a harness here and passes every test of the suite (see CONTRIBUTING.md).
"""

from __future__ import annotations

import json
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from shared.backends.arm import RetrySettings
from shared.backends.local import MAX_DRIVER_RESTARTS, LocalHandle, is_alive
from shared.backends.vmcluster.network_layout import EXPERIMENT_TAG
from shared.config import DRIVER_OUTCOME_ARTIFACT, MODEL_PREFIX
from shared.context import Context
from shared.ports import ComputeBackend, RunState, RunStatus, merge_handle
from shared.records import ExperimentRecord, TrialRecord, TrialState, utcnow
from shared.spec import load_spec
from shared.store.compute import ComputeStore
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.control_plane import tiny_spec
from tests.fakes.azureml import COMPUTE as AML_COMPUTE
from tests.fakes.azureml import T0, FakeWorkspace, child, run
from tests.fakes.scripted import ScriptedBackend

FINISH_TIMEOUT_S = 240.0


class Harness(ABC):
    """Builds one adapter and plays its compute's part."""

    id: ClassVar[str]

    def __init__(self, ctx: Context, tmp_path: Path) -> None:
        self.ctx = ctx
        self.tmp_path = tmp_path

    @abstractmethod
    def backend(self) -> ComputeBackend: ...

    @abstractmethod
    def spec(self) -> dict[str, Any]: ...

    @abstractmethod
    def finish(self, record: ExperimentRecord, state: RunState) -> None:
        """Make the submitted run end in ``state``, the way its compute would."""

    @abstractmethod
    def live(self, record: ExperimentRecord) -> int:
        """How much of what the backend started for ``record`` still runs or exists (0 after teardown)."""

    @abstractmethod
    def lose_driver(self, record: ExperimentRecord) -> dict[int, TrialRecord]:
        """Once the submitted run has finished a trial, lose what drives it mid-run, without an outcome,
        the way its compute would; return the trials finished before the loss, by number."""

    def first_trial(self, record: ExperimentRecord) -> None:  # noqa: B027 (a backend keeping no model on cancel)
        """Let the submitted run finish a trial (``Capabilities.model_on_cancel``'s test cancels it after)."""

    def end_cancelled(self, record: ExperimentRecord) -> None:  # noqa: B027
        """The run was asked to stop (the experiment is CANCELLING): end it the way its compute then does, the
        best finished trial's model kept where the backend keeps it."""

    def close(self) -> None:  # noqa: B027 (most harnesses start nothing of their own)
        """Release what the harness started."""


class LocalHarness(Harness):
    id = "local"

    def backend(self) -> ComputeBackend:
        return self.ctx.backend("local")

    def spec(self) -> dict[str, Any]:
        return tiny_spec(limits={"max_total_trials": 2, "max_concurrent_trials": 2})

    def _area(self, record: ExperimentRecord) -> ComputeStore:
        """What the driver wrote so far, as it wrote it (the store has it only once a poll ingested it)."""
        return ComputeStore.from_credential(self.ctx.areas.issue_compute_credential(record.id, timedelta(hours=1)))

    def finish(self, record: ExperimentRecord, state: RunState) -> None:
        handle = LocalHandle.model_validate(record.backend_state)
        if state is RunState.CANCELLED:
            # Once the driver runs trials its SIGTERM handler is set: it then stops them and writes a
            # CANCELLED outcome (a signal during its imports would just kill it, and poll restart it).
            wait_until(lambda: bool(self._area(record).list_trials(record.id)))
            self.backend().cancel(record)
        elif state is RunState.FAILED:  # a driver that died every time it was restarted
            assert handle.pid
            os.killpg(handle.pid, signal.SIGKILL)
            self.ctx.store.update_experiment(
                self.ctx.store.get_experiment(record.id).model_copy(
                    update={"backend_state": {**record.backend_state, "restarts": MAX_DRIVER_RESTARTS}}
                )
            )
        wait_until(lambda: not is_alive(handle) or self._has_outcome(record))  # SUCCEEDED: the real run

    def first_trial(self, record: ExperimentRecord) -> None:
        completed = lambda: any(t.state is TrialState.COMPLETED for t in self._area(record).list_trials(record.id))  # noqa: E731
        wait_until(completed)

    def end_cancelled(self, record: ExperimentRecord) -> None:
        """The real driver: SIGTERM (the backend's cancel) made it stop its trials and refit the best one."""
        wait_until(lambda: self._has_outcome(record) or not is_alive(record.backend_state))

    def _has_outcome(self, record: ExperimentRecord) -> bool:
        return DRIVER_OUTCOME_ARTIFACT in self._area(record).list_artifacts(record.id, "driver/")

    def lose_driver(self, record: ExperimentRecord) -> dict[int, TrialRecord]:
        """SIGKILL the driver process's group (the driver and its Dask cluster) after its first trial."""
        handle = LocalHandle.model_validate(record.backend_state)
        written = lambda: {t.number: t for t in self._area(record).list_trials(record.id) if t.state.finished}  # noqa: E731
        wait_until(lambda: bool(written()))
        assert handle.pid
        os.killpg(handle.pid, signal.SIGKILL)
        wait_until(lambda: not is_alive(handle))
        assert not self._has_outcome(record), "the run ended before its driver was lost: give it more trials"
        return written()

    def live(self, record: ExperimentRecord) -> int:
        return int(is_alive(record.backend_state))


class VMClusterHarness(Harness):
    id = "vmcluster"
    SUB = "00000000-0000-0000-0000-000000000001"
    RG = "rg-conformance"

    def __init__(self, ctx: Context, tmp_path: Path) -> None:
        from tests.rbac import function_app_rbac

        super().__init__(ctx, tmp_path)
        self.arm = FakeArm(rbac=function_app_rbac(self.SUB, self.RG)).start()  # the Bicep's roles, enforced

    def backend(self) -> ComputeBackend:
        from shared.backends.vmcluster import VMClusterBackend
        from shared.backends.vmcluster.network import make_network_client
        from shared.backends.vmcluster.vm_teardown import make_compute_client

        if "vmcluster" not in self.ctx.backends:
            credential, url = StaticTokenCredential(self.arm.token), self.arm.base_url
            self.ctx.backends["vmcluster"] = VMClusterBackend(
                self.ctx.store,
                self.ctx.settings,
                compute_client_factory=lambda sub: make_compute_client(sub, credential, url, polling_interval=0),
                network_client_factory=lambda sub: make_network_client(sub, credential, url, polling_interval=0),
                retry=RetrySettings(attempts=2, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None),
            )
        return self.ctx.backends["vmcluster"]

    def spec(self) -> dict[str, Any]:
        compute: dict[str, Any] = {"backend": "vmcluster", "location": "westeurope", "resource_group": self.RG}
        compute |= {
            "subscription_id": self.SUB,
            "n_workers": 1,
            "vm_size": "Standard_ND6s",
        }  # in the ARM schema and the catalogue
        return tiny_spec(compute=compute)

    def finish(self, record: ExperimentRecord, state: RunState) -> None:
        """What the head node's driver leaves in the experiment's compute area, through its credential:
        the model (on success) and the outcome."""
        from shared.store.compute import ComputeStore

        credential = self.ctx.areas.issue_compute_credential(record.id, timedelta(hours=1))
        compute = ComputeStore.from_credential(credential)
        status = {RunState.SUCCEEDED: "COMPLETED", RunState.FAILED: "FAILED", RunState.CANCELLED: "CANCELLED"}[state]
        if state is RunState.SUCCEEDED:
            compute.put_artifact(record.id, f"{MODEL_PREFIX}model.json", b"{}")
        outcome = {"status": status, "reason": "harness", "error": None if status != "FAILED" else "trials failed"}
        compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps(outcome).encode())

    def first_trial(self, record: ExperimentRecord) -> None:
        self._compute(record).put_trial(completed_trial(record.id))

    def end_cancelled(self, record: ExperimentRecord) -> None:
        """What the head's driver writes after a cancel (``refit_best``): the model, then the outcome."""
        compute = self._compute(record)
        compute.put_artifact(record.id, f"{MODEL_PREFIX}model.json", b"{}")
        outcome = {"status": "CANCELLED", "reason": "cancelled", "best": None}
        compute.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, json.dumps(outcome).encode())

    def _compute(self, record: ExperimentRecord) -> ComputeStore:
        return ComputeStore.from_credential(self.ctx.areas.issue_compute_credential(record.id, timedelta(hours=1)))

    def live(self, record: ExperimentRecord) -> int:
        return sum(1 for r in self.arm.resources.values() if (r.get("tags") or {}).get(EXPERIMENT_TAG) == record.id)

    def lose_driver(self, record: ExperimentRecord) -> dict[int, TrialRecord]:
        """The head's driver writes a finished trial and a heartbeat to the compute area; then the head
        VM is gone (deleted outside the control plane: no request of ours), its driver with it."""
        from shared.backends.vmcluster import VMClusterHandle
        from shared.backends.vmcluster.exchange import HEARTBEAT_ARTIFACT
        from shared.store.compute import ComputeStore

        credential = self.ctx.areas.issue_compute_credential(record.id, timedelta(hours=1))
        compute = ComputeStore.from_credential(credential)
        compute.put_trial(completed_trial(record.id))
        compute.put_artifact(record.id, HEARTBEAT_ARTIFACT, json.dumps({"at": utcnow().isoformat()}).encode())
        _, status = poll(self, self.ctx.store.get_experiment(record.id))
        assert status.state is RunState.RUNNING, status
        self.arm.evict(VMClusterHandle.of(record.backend_state).scheduler_vm or "")
        return finished_trials(self.ctx, record)

    def close(self) -> None:
        self.arm.close()


class AzureMLHarness(Harness):
    """The workspace is a FAKE (``FakeWorkspace``): a live AzureML workspace is unreachable here."""

    id = "azureml"

    def __init__(self, ctx: Context, tmp_path: Path) -> None:
        super().__init__(ctx, tmp_path)
        self.fake = FakeWorkspace()

    def backend(self) -> ComputeBackend:
        from shared.backends.azureml import AzureMLBackend

        if "azureml" not in self.ctx.backends:
            self.ctx.backends["azureml"] = AzureMLBackend(self.ctx.store, self.ctx.settings, lambda _: self.fake)
        return self.ctx.backends["azureml"]

    def spec(self) -> dict[str, Any]:
        return tiny_spec(compute=AML_COMPUTE)

    def finish(self, record: ExperimentRecord, state: RunState) -> None:
        record = self._checked(record)
        job = str(record.backend_state["job_name"])
        status = {RunState.SUCCEEDED: "Completed", RunState.FAILED: "Failed", RunState.CANCELLED: "Canceled"}[state]
        if state is RunState.SUCCEEDED:
            trial = replace(child(0, "Completed"), name=f"{job}_0")
            self.fake.children[job] = [trial]
            self.fake.runs[trial.name] = run({1: 0.7, 2: 0.8})
            self.fake.outputs[(trial.name, "model")] = {"model.json": b"{}"}
        self.fake.set_status(job, status, created_at=T0, modified_at=T0 + timedelta(minutes=1))

    def first_trial(self, record: ExperimentRecord) -> None:
        """A trial of the sweep completed and saved its model output; the sweep runs on."""
        job = str(self._checked(record).backend_state["job_name"])
        trial = replace(child(0, "Completed"), name=f"{job}_0")
        self.fake.children[job] = [trial, replace(child(1, "Running"), name=f"{job}_1")]
        self.fake.runs[trial.name] = run({1: 0.7, 2: 0.8})
        self.fake.outputs[(trial.name, "model")] = {"model.json": b"{}"}
        self.fake.set_status(job, "Running", created_at=T0)

    def end_cancelled(self, record: ExperimentRecord) -> None:
        """AzureML ends the cancelled sweep: CancelRequested (still running), then Canceled."""
        job = str(record.backend_state["job_name"])
        assert self.fake.jobs[job].status == "CancelRequested", "cancel did not cancel the sweep"
        self.fake.children[job][1] = replace(self.fake.children[job][1], status="Canceled")
        self.fake.set_status(job, "Canceled", created_at=T0, modified_at=T0 + timedelta(minutes=1))

    def _checked(self, record: ExperimentRecord) -> ExperimentRecord:
        """The record once its data check passed and the sweep exists (the fake's check passes at once: the
        poll that reads its verdict submits the sweep)."""
        if not record.backend_state.get("job_name"):
            record, status = poll(self, self.ctx.store.get_experiment(record.id))
            assert record.backend_state.get("job_name"), status
        return record

    def live(self, record: ExperimentRecord) -> int:
        ended = {"Completed", "Failed", "Canceled", "CancelRequested"}
        names = (record.backend_state.get("check_job"), record.backend_state.get("job_name"))
        jobs = [self.fake.jobs.get(str(name)) for name in names if name]
        return sum(job is not None and job.status not in ended for job in jobs)

    def lose_driver(self, record: ExperimentRecord) -> dict[int, TrialRecord]:
        """No driver of ours runs (AzureML runs the sweep): the sweep finishes a trial, then is gone from
        the workspace, the one way a sweep ends without an outcome that the harness can play."""
        job = str(self._checked(record).backend_state["job_name"])
        trial = replace(child(0, "Completed"), name=f"{job}_0")
        self.fake.children[job] = [trial]
        self.fake.runs[trial.name] = run({1: 0.7, 2: 0.8})
        self.fake.set_status(job, "Running", created_at=T0)
        _, status = poll(self, self.ctx.store.get_experiment(record.id))
        assert status.state is RunState.RUNNING, status
        del self.fake.jobs[job]
        return finished_trials(self.ctx, record)


class ScriptedHarness(Harness):
    """The FAKE backend of the state-machine tests (``tests/fakes/scripted.py``), held to the same step
    rules as the real ones so that it cannot teach the machine a contract they do not keep."""

    id = "scripted"

    def __init__(self, ctx: Context, tmp_path: Path) -> None:
        super().__init__(ctx, tmp_path)
        self.fake = ScriptedBackend(polls=[RunState.RUNNING])

    def backend(self) -> ComputeBackend:
        return self.fake

    def spec(self) -> dict[str, Any]:
        return tiny_spec()

    def finish(self, record: ExperimentRecord, state: RunState) -> None:
        """Its compute is the script: the next polls report ``state``; a success leaves the model, as the
        driver does (``model_from="driver"``)."""
        if state is RunState.SUCCEEDED:
            self.ctx.store.put_artifact(record.id, f"{MODEL_PREFIX}model.json", b"{}")
        self.fake.polls, self.fake.error = [state], "trials failed" if state is RunState.FAILED else None

    def live(self, record: ExperimentRecord) -> int:
        return 0  # it starts nothing

    def lose_driver(self, record: ExperimentRecord) -> dict[int, TrialRecord]:
        """A trial finished, then the script reports the loss the way a backend without
        ``restarts_driver`` must: FAILED with a reason."""
        self.ctx.store.put_trial(completed_trial(record.id))
        self.fake.polls, self.fake.error = [RunState.FAILED], "the driver was lost"
        return finished_trials(self.ctx, record)


HARNESSES: dict[str, type[Harness]] = {h.id: h for h in (LocalHarness, VMClusterHarness, AzureMLHarness)}
"""The registered backends' harnesses."""
FAKE_HARNESSES: dict[str, type[Harness]] = {ScriptedHarness.id: ScriptedHarness}
"""Fakes other tests use in a backend's place: they pass every case but the registry's."""


# ---------------------------------------------------------------------------------------- helpers
def wait_until(condition: Any, timeout: float = FINISH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the compute did not get there in time"
        time.sleep(0.2)


def finished_trials(ctx: Context, record: ExperimentRecord) -> dict[int, TrialRecord]:
    return {t.number: t for t in ctx.store.list_trials(record.id) if t.state.finished}


def completed_trial(experiment_id: str) -> TrialRecord:
    params = {"n_estimators": 5, "max_depth": 4, "max_features": 0.5}
    now = utcnow()
    return TrialRecord(
        experiment_id=experiment_id, number=0, params=params, state=TrialState.COMPLETED, value=0.8, ended_at=now
    )


def new_record(h: Harness, experiment_id: str = "exp-conf-1", **changes: Any) -> ExperimentRecord:
    spec = load_spec({**h.spec(), **changes})
    record = ExperimentRecord(id=experiment_id, name=spec.name, spec=spec.to_document(), backend=spec.compute.backend)
    return h.ctx.store.create_experiment(record)


def apply_update(h: Harness, record: ExperimentRecord, update: Any, *, repeat: bool = False) -> ExperimentRecord:
    """Merge a step's handle update as the state machine does, store it and read it back: the handle
    survives the round trip through the store, typed.

    The update holds handle fields only, and only those whose value the call changed; a ``repeat``
    (the same call again on the merged handle, nothing having moved on the compute) returns ``{}``."""
    backend = h.backend()
    assert isinstance(update, dict), f"a step returned {type(update).__name__}, not a handle update"
    unknown = sorted(set(update) - set(backend.handle_type.model_fields))
    assert not unknown, f"the update names fields the handle lacks: {unknown}"
    before = merge_handle(backend, record.backend_state, {})
    merged = merge_handle(backend, record.backend_state, update)
    unchanged = sorted(key for key in update if merged[key] == before[key])
    assert not unchanged, f"the update repeats fields the call did not change: {unchanged}"
    if repeat:
        assert update == {}, f"a repeated call changed {sorted(update)}"
    current = h.ctx.store.get_experiment(record.id)
    stored = h.ctx.store.update_experiment(current.model_copy(update={"backend_state": merged}))
    reread = h.ctx.store.get_experiment(record.id)
    assert backend.handle_type.model_validate(reread.backend_state) == backend.handle_type.model_validate(merged)
    return stored


def poll(h: Harness, record: ExperimentRecord, *, repeat: bool = False) -> tuple[ExperimentRecord, RunStatus]:
    status = h.backend().poll(record)
    assert isinstance(status.state, RunState)
    return apply_update(h, record, status.updates, repeat=repeat), status


def submitted(h: Harness, **changes: Any) -> ExperimentRecord:
    record = new_record(h, **changes)
    record = apply_update(h, record, h.backend().provision(record))
    return apply_update(h, record, h.backend().submit(record))


def run_to(h: Harness, state: RunState) -> ExperimentRecord:
    record = submitted(h)
    h.finish(h.ctx.store.get_experiment(record.id), state)
    record = h.ctx.store.get_experiment(record.id)
    record, status = poll(h, record)
    assert status.state is state, status
    record, again = poll(h, record, repeat=True)  # a poll of an ended run changes nothing
    assert again.state is state, again
    return record
