"""Azure's failures, scripted, and what each ends in (the table in docs/architecture.md, "Scripted Azure
failures"): retried, counted against ``compute.max_evictions``, replaced, or FAILED at once with a reason a
user can act on. The real SDKs against the local ARM server; the VMs themselves do not run here (their
boot notes are written into the compute area as ``boot.py`` writes them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.backends.arm import RetrySettings
from shared.backends.vmcluster import VMClusterBackend, VMClusterHandle
from shared.backends.vmcluster.exchange import HEARTBEAT_ARTIFACT
from shared.context import Context
from shared.cost.ledger import BUDGET_REACHED, CostLedger
from shared.ports import RunState, RunStatus
from shared.records import ExperimentRecord, ExperimentStatus
from shared.store.compute import FolderArea
from tests.arm_server import FakeArm
from tests.control_plane import local_context
from tests.rbac import function_app_rbac
from tests.test_vmcluster import EXP, RG, SUB, _spec_document
from tests.test_vmcluster import _backend as vmcluster_backend

QUOTA = (
    "Operation could not be completed as it results in exceeding approved standardNCASv3_T4Family Cores quota. "
    "Additional details - Deployment Model: Resource Manager, Location: westeurope, Current Limit: 0"
)
NO_SPOT = "The requested tier for resource 'x' is currently not available in location 'westeurope'."
NO_CAPACITY = "Allocation failed. We do not have sufficient capacity for the requested VM size in this region."
NOT_YET = "The client 'app' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write'."


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    """The ARM stand-in, holding the Function App to the Bicep's role assignments in this group."""
    with FakeArm(rbac=function_app_rbac(SUB, RG)) as server:
        yield server


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return local_context(tmp_path, poll_seconds=1)


def _backend(ctx: Context, arm: FakeArm, **kwargs: Any) -> VMClusterBackend:
    retry = RetrySettings(attempts=3, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)
    return vmcluster_backend(ctx, arm, retry, **kwargs)


def _submitted(ctx: Context, backend: VMClusterBackend, **compute: Any) -> ExperimentRecord:
    document = _spec_document(tiny=True, **compute)
    record = ctx.store.create_experiment(ExperimentRecord(id=EXP, name="x", spec=document, backend="vmcluster"))
    record = record.model_copy(update={"backend_state": backend.provision(record)})
    return record.model_copy(update={"backend_state": {**record.backend_state, **backend.submit(record)}})


def _poll(backend: VMClusterBackend, record: ExperimentRecord) -> tuple[ExperimentRecord, RunStatus]:
    status = backend.poll(record)
    return record.model_copy(update={"backend_state": {**record.backend_state, **status.updates}}), status


def _worker_path(record: ExperimentRecord) -> str:
    return f"virtualMachines/dask-{VMClusterHandle.of(record.backend_state).cluster_id}-worker-"


def _workers(arm: FakeArm) -> list[dict[str, Any]]:
    return [vm for vm in arm.of_type("virtualMachines") if "-worker-" in vm["name"]]


def test_no_spot_capacity_is_counted_and_retried(ctx: Context, arm: FakeArm) -> None:
    """Spot: ``SkuNotAvailable`` means no Spot capacity now. The poll keeps the run, notes why, and the next
    poll counts the missing workers as lost (``max_evictions``) and tries again."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, spot=True, max_evictions=3)
    arm.fail("PUT", _worker_path(record), 409, "SkuNotAvailable", NO_SPOT, times=2)

    record, first = _poll(backend, record)
    assert first.state is RunState.PENDING and not _workers(arm)
    handle = VMClusterHandle.of(record.backend_state)
    assert "SkuNotAvailable" in (handle.last_error or "") and handle.evictions == 0
    assert len(arm.calls("PUT", _worker_path(record))) == 2  # one try each: a 409 of this code is not waited on

    record, second = _poll(backend, record)
    assert second.state is RunState.PENDING and len(_workers(arm)) == 2
    assert VMClusterHandle.of(record.backend_state).evictions == 2  # counted: the budget bounds the retries


def test_no_spot_capacity_beyond_the_budget_fails_the_run_with_the_reason(ctx: Context, arm: FakeArm) -> None:
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, spot=True, max_evictions=1)
    arm.fail("PUT", _worker_path(record), 409, "SkuNotAvailable", NO_SPOT, times=99)
    record, _ = _poll(backend, record)
    record, status = _poll(backend, record)
    assert status.state is RunState.FAILED and "max_evictions=1" in (status.error or "")


def test_an_allocation_failure_leaves_a_failed_vm_which_is_deleted_and_replaced(ctx: Context, arm: FakeArm) -> None:
    """The PUT is accepted and its operation ends ``Failed`` (``AllocationFailed``), whether or not anyone
    waits on it: the VM stays, Failed, holding its NIC and disk. The next poll deletes it, says so and
    creates a replacement."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, max_evictions=2)
    arm.fail_next_operation("AllocationFailed", NO_CAPACITY, path_contains=_worker_path(record))

    record, first = _poll(backend, record)
    assert first.state is RunState.PENDING
    [failed] = [vm for vm in _workers(arm) if vm["properties"]["provisioningState"] == "Failed"]

    record, second = _poll(backend, record)  # the creation was not awaited: the next poll finds it Failed
    assert second.state is RunState.PENDING
    assert f"worker VM {failed['name']} ended Failed" in (VMClusterHandle.of(record.backend_state).last_error or "")
    assert any(r.path.endswith(failed["name"]) for r in arm.calls("DELETE"))
    workers = _workers(arm)
    assert failed["name"] not in {vm["name"] for vm in workers} and len(workers) == 2
    assert all(vm["properties"]["provisioningState"] == "Succeeded" for vm in workers)
    assert VMClusterHandle.of(record.backend_state).evictions == 1


@pytest.mark.parametrize(
    ("code", "message", "hint"),
    [
        ("SkuNotAvailable", NO_SPOT, "az vm list-skus"),  # on-demand: the size is not offered here
        ("OperationNotAllowed", QUOTA, "request a quota increase"),
        ("QuotaExceeded", "Quota exceeded for standardNCASv3_T4Family.", "request a quota increase"),
    ],
)
def test_what_waiting_cannot_fix_fails_the_run_at_the_first_poll(
    ctx: Context, arm: FakeArm, code: str, message: str, hint: str
) -> None:
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend)
    arm.fail("PUT", _worker_path(record), 409, code, message, times=99)

    record, status = _poll(backend, record)

    assert status.state is RunState.FAILED and code in (status.error or "") and hint in (status.error or "")
    assert len(arm.calls("PUT", _worker_path(record))) == 2  # one each, no waiting on a quota


def test_a_403_while_roles_propagate_is_retried_at_the_next_poll(ctx: Context, arm: FakeArm) -> None:
    """Role assignments take minutes to reach ARM after a deployment: a worker's 403 is noted and tried
    again; the head's (at submit) fails the run with the same hint (tests/test_network.py)."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend)
    arm.fail("PUT", _worker_path(record), 403, "AuthorizationFailed", NOT_YET, times=2)

    record, first = _poll(backend, record)
    assert first.state is RunState.PENDING
    assert "10 minutes for new role assignments" in (VMClusterHandle.of(record.backend_state).last_error or "")
    record, second = _poll(backend, record)
    assert second.state is RunState.PENDING and len(_workers(arm)) == 2


def _note(ctx: Context, record: ExperimentRecord, *, final: bool, vm: str | None = None) -> None:
    handle = VMClusterHandle.of(record.backend_state)
    note = {
        "vm": vm or handle.scheduler_vm,
        "role": "head",
        "stage": "fetching the code archive",
        "error": "unreachable after 30 attempts (no way out of the subnet?)",
        "starts": 6 if final else 2,
        "final": final,
        "at": time.time(),
    }
    area = FolderArea(ctx.store.root / "compute" / EXP)  # type: ignore[attr-defined]
    area.put(f"artifacts/boot/{note['vm']}.json", json.dumps(note).encode())


def test_a_head_that_cannot_boot_fails_the_run_at_once_with_its_note(ctx: Context, arm: FakeArm) -> None:
    """``boot.py`` notes each failed start; the last one the restart policy allows is final: the run ends
    at the next poll, not after the 40-minute ready timeout, and says why and where the boot log is."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend)
    _note(ctx, record, final=False)
    record, waiting = _poll(backend, record)
    assert waiting.state is RunState.PENDING  # Docker starts it again

    _note(ctx, record, final=True)
    record, status = _poll(backend, record)
    assert status.state is RunState.FAILED
    assert "the head node could not start" in (status.error or "") and "fetching the code archive" in (
        status.error or ""
    )
    assert "az vm boot-diagnostics get-boot-log" in (status.error or "")
    [head] = [r for r in arm.calls("PUT", "virtualMachines/") if r.path.endswith("-scheduler")]
    assert head.body["properties"]["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": True}}


def test_a_vm_that_never_boots_fails_at_the_ready_timeout_with_what_the_vms_noted(ctx: Context, arm: FakeArm) -> None:
    backend = _backend(ctx, arm, ready_timeout_s=0)
    record = _submitted(ctx, backend)
    _note(ctx, record, final=False, vm="dask-x-worker-1")
    record, status = _poll(backend, record)
    assert status.state is RunState.FAILED and "did not start within" in (status.error or "")
    assert "boot notes: dask-x-worker-1: fetching the code archive" in (status.error or "")


def test_a_worker_that_cannot_start_is_deleted_and_replaced_without_counting_an_eviction(
    ctx: Context, arm: FakeArm
) -> None:
    """A worker's final note (its restart policy spent, or its container never started) means the VM would
    idle, billed: the next poll deletes it and creates another; a note that is not final waits for Docker."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, n_workers=2)
    record, _ = _poll(backend, record)
    first = sorted(vm["name"] for vm in _workers(arm))
    _note(ctx, record, final=False, vm=first[0])
    record, _ = _poll(backend, record)
    assert sorted(vm["name"] for vm in _workers(arm)) == first  # Docker starts it again: nothing to do

    _note(ctx, record, final=True, vm=first[0])
    record, status = _poll(backend, record)
    assert status.state is RunState.PENDING, status.error
    names = sorted(vm["name"] for vm in _workers(arm))
    assert first[0] not in names and first[1] in names and len(names) == 2  # deleted, and one more created
    assert arm.calls("DELETE", f"virtualMachines/{first[0]}")
    handle = VMClusterHandle.of(record.backend_state)
    assert handle.boot_replaced == [first[0]] and handle.evictions == 0

    record, again = _poll(backend, record)  # its note stays in the area: it is not replaced twice
    assert again.state is RunState.PENDING and len(_workers(arm)) == 2
    assert VMClusterHandle.of(record.backend_state).evictions == 0


def test_workers_that_keep_failing_to_start_fail_the_run_with_the_reason(ctx: Context, arm: FakeArm) -> None:
    """One replacement per worker slot; the next worker that cannot start fails the run with its note and
    where its boot log is (a cause that every new VM shares: a bad image, worker options its class refuses)."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, n_workers=1)
    status = None
    for _ in range(3):
        record, status = _poll(backend, record)
        if status.state is RunState.FAILED:
            break
        [worker] = _workers(arm)
        _note(ctx, record, final=True, vm=worker["name"])
    assert status is not None and status.state is RunState.FAILED
    error = status.error or ""
    assert error.startswith("2 worker VMs could not start, more than the 1 replacements a run allows"), error
    assert "fetching the code archive" in error and "az vm boot-diagnostics get-boot-log" in error


def test_a_forged_note_names_no_vm_of_the_cluster_and_replaces_nothing(ctx: Context, arm: FakeArm) -> None:
    """Notes are the compute's writing: one naming the head, another cluster's VM or no valid name at all
    deletes nothing (only the cluster's own workers are replaced)."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, n_workers=1)
    record, _ = _poll(backend, record)
    before = _workers(arm)
    area = FolderArea(ctx.store.root / "compute" / EXP)  # type: ignore[attr-defined]
    prefix = f"dask-{VMClusterHandle.of(record.backend_state).cluster_id}-worker-"
    for i, forged in enumerate(["dask-0badc0de-worker-1", f"{prefix}../x", f"{prefix}{'x' * 80}", ["list"]]):
        note = {"vm": forged, "role": "worker", "stage": "s", "error": "e", "starts": 6, "final": True, "at": 1}
        area.put(f"artifacts/boot/forged-{i}.json", json.dumps(note).encode())
    record, status = _poll(backend, record)
    assert status.state is RunState.PENDING and _workers(arm) == before and not arm.calls("DELETE")


def test_a_large_cluster_is_created_a_bounded_batch_per_poll_without_waiting_on_azure(
    ctx: Context, arm: FakeArm
) -> None:
    """Each poll is one short step (a function has 10 minutes, a VM's creation takes minutes): at most
    ``WORKERS_PER_STEP`` worker VMs per poll, their PUTs accepted and not awaited; the rest at the next poll,
    and none of them counted as lost."""
    from shared.backends.vmcluster.settings import WORKERS_PER_STEP

    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, n_workers=WORKERS_PER_STEP + 2)
    arm.clear_requests()
    record, first = _poll(backend, record)
    assert first.state is RunState.PENDING and len(_workers(arm)) == WORKERS_PER_STEP
    assert not arm.calls("GET", "/providers/Microsoft.Compute/locations/")  # no VM creation awaited
    assert not VMClusterHandle.of(record.backend_state).workers_created

    record, _ = _poll(backend, record)
    handle = VMClusterHandle.of(record.backend_state)
    assert len(_workers(arm)) == WORKERS_PER_STEP + 2 and handle.workers_created and handle.evictions == 0
    record, _ = _poll(backend, record)
    assert len(_workers(arm)) == WORKERS_PER_STEP + 2 and VMClusterHandle.of(record.backend_state).evictions == 0


def _lose_the_worker(ctx: Context, arm: FakeArm, record: ExperimentRecord, worker: str, loss: str) -> None:
    if loss == "evicted":
        arm.evict(worker)
    elif loss == "cannot start":
        _note(ctx, record, final=True, vm=worker)


@pytest.mark.parametrize("loss", ["evicted", "cannot start", "ended Failed"])
@pytest.mark.parametrize("stop", ["cancelling", "budget"])
def test_a_stopping_run_creates_and_replaces_no_worker_vm(ctx: Context, arm: FakeArm, loss: str, stop: str) -> None:
    """While the experiment is CANCELLING (the head's driver refits the best model on a worker there is) or
    the budget stopped it, a lost worker, one that cannot start or one whose creation ended Failed is neither
    replaced nor deleted: a new GPU VM would bill for a run that starts no trial. With no worker left the
    handle says the refit cannot run (the cancel's wait ends the run). The same record running replaces it."""
    backend = _backend(ctx, arm)
    record = _submitted(ctx, backend, n_workers=1, max_evictions=3)
    if loss == "ended Failed":
        arm.fail_next_operation("AllocationFailed", NO_CAPACITY, path_contains=_worker_path(record))
    record, _ = _poll(backend, record)
    [worker] = [vm["name"] for vm in _workers(arm)]
    area = FolderArea(ctx.store.root / "compute" / EXP)  # type: ignore[attr-defined]
    area.put(f"artifacts/{HEARTBEAT_ARTIFACT}", json.dumps({"at": datetime.now(UTC).isoformat()}).encode())
    running = record.model_copy(update={"status": ExperimentStatus.RUNNING})
    stopped = {
        "cancelling": record.model_copy(update={"status": ExperimentStatus.CANCELLING}),
        "budget": running.model_copy(update={"cost": CostLedger(stopped=BUDGET_REACHED)}),
    }[stop]
    if loss != "ended Failed":  # a worker is left: nothing to say
        _, status = _poll(backend, stopped)
        assert status.state is RunState.RUNNING and "last_error" not in status.updates, status

    _lose_the_worker(ctx, arm, record, worker, loss)
    arm.clear_requests()
    after, status = _poll(backend, stopped)
    assert status.state is RunState.RUNNING, status.error
    assert not arm.calls("PUT") and not arm.calls("DELETE")  # no VM created, none deleted
    handle = VMClusterHandle.of(after.backend_state)
    assert "no worker VM is left" in (handle.last_error or "") and handle.evictions == 0
    assert handle.boot_replaced == []

    running, status = _poll(backend, running)
    assert status.state is RunState.RUNNING, status.error
    assert arm.calls("PUT", _worker_path(record))  # the same loss, while the run goes on: replaced
    assert [vm["name"] for vm in _workers(arm)] != [worker]
