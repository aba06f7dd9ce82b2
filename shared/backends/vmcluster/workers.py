"""The worker VMs, one bounded poll step at a time: replace those that cannot start, create those lacking;
while the run is stopping (CANCELLING, or the budget stopped it), neither.

Functions of the backend (:class:`~.backend.VMClusterBackend`), kept apart from the protocol's steps.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.boot_notes import boot_log_hint, describe_note, replacement_budget, unbootable_workers
from shared.backends.vmcluster.settings import WORKERS_PER_STEP, python_options, worker_vm_prefix
from shared.backends.vmcluster.vm_plan import plan_vm
from shared.backends.vmcluster.vms import delete_failed_workers, delete_workers, healthy_workers
from shared.errors import BackendError
from shared.records import ExperimentStatus

if TYPE_CHECKING:
    from shared.backends.vmcluster.backend import VMClusterBackend
    from shared.backends.vmcluster.handle import VMClusterHandle
    from shared.backends.vmcluster.section import VMClusterCompute
    from shared.records import ExperimentRecord

log = logging.getLogger(__name__)


def stopping(record: ExperimentRecord) -> str | None:
    """Why the run is ending, so that no worker VM is created or replaced for it (a new GPU VM would bill
    for a run that starts no trial), or None while it runs: the experiment is CANCELLING (the head's
    driver refits the best model on a worker that exists), or the budget guard stopped it."""
    if record.status is ExperimentStatus.CANCELLING:
        return "the experiment is CANCELLING"
    if record.cost is not None and record.cost.stopped:
        return f"the run was stopped ({record.cost.stopped})"
    return None


def tend_workers(
    backend: VMClusterBackend,
    record: ExperimentRecord,
    compute: VMClusterCompute,
    handle: VMClusterHandle,
    vms: list[Any],
    notes: list[dict[str, Any]],
) -> tuple[VMClusterHandle, str | None]:
    """One poll's care of the worker VMs: :func:`replace_unbootable_workers`, then :func:`reconcile_workers`;
    while the run is :func:`stopping`, neither (the head and the workers that exist stay until teardown) and,
    when no worker that can run is left, ``last_error`` says that the refit cannot run: the cancel's wait
    (``RAPIDS_HPO_CANCEL_WAIT_SECONDS``) then ends the run. Returns (handle, the reason the run fails or None)."""
    why = stopping(record)
    if why is None:
        handle, replaced, cannot = replace_unbootable_workers(backend, compute, handle, vms, notes)
        if cannot:
            return handle, cannot
        return reconcile_workers(backend, record, compute, handle, vms, replaced), None
    cluster_id = handle.cluster_id or ""
    dead = {*handle.boot_replaced, *unbootable_workers(notes, cluster_id)}
    if any(name not in dead for name in healthy_workers(vms, cluster_id)):
        return handle, None
    error = (
        f"no worker VM is left and none is created while {why}: the best model cannot be refit, so the run "
        "ends at the cancel's deadline (RAPIDS_HPO_CANCEL_WAIT_SECONDS) without it"
    )
    if handle.last_error != error:
        log.warning("experiment %s: %s", record.id, error)
    return handle.model_copy(update={"last_error": error}), None


def replace_unbootable_workers(
    backend: VMClusterBackend,
    compute: VMClusterCompute,
    handle: VMClusterHandle,
    vms: list[Any],
    notes: list[dict[str, Any]],
) -> tuple[VMClusterHandle, int, str | None]:
    """Delete the worker VMs whose final boot note says they will not start (they would idle, billed),
    so that :func:`reconcile_workers` replaces them (not counted as evictions); past
    :func:`~.boot_notes.replacement_budget`, the reason the run fails. Returns (handle, how many were
    deleted now, the failure or None)."""
    live = {vm.name for vm in vms}
    client = backend._clients_for(compute)[0]
    delete_workers(client, compute.resource_group, [n for n in handle.boot_replaced if n in live])  # again
    fresh = [
        n for n in unbootable_workers(notes, handle.cluster_id or "") if n in live and n not in handle.boot_replaced
    ]
    if not fresh:
        return handle, 0, None
    handle = handle.model_copy(update={"boot_replaced": [*handle.boot_replaced, *fresh]})
    budget = replacement_budget(compute)
    if len(handle.boot_replaced) > budget:
        note = next(n for n in notes if n.get("vm") == fresh[0])
        error = (
            f"{len(handle.boot_replaced)} worker VMs could not start, more than the {budget} replacements a run "
            f"allows (one per worker): {describe_note(note)}{boot_log_hint(compute, note)}"
        )
        return handle, 0, error
    delete_workers(client, compute.resource_group, fresh)
    log.warning("replacing worker VMs that could not start: %s", ", ".join(fresh))
    return handle, len(fresh), None


def reconcile_workers(
    backend: VMClusterBackend,
    record: ExperimentRecord,
    compute: VMClusterCompute,
    handle: VMClusterHandle,
    vms: list[Any],
    replaced: int = 0,
) -> VMClusterHandle:
    """Create the worker VMs the cluster lacks (``vms``: the cluster's, listed), at most
    :data:`~.settings.WORKERS_PER_STEP` per poll and without waiting for their creation to end (a VM's
    takes minutes; the next poll lists it, or deletes it if it ended ``Failed``); after the first round,
    each one lacking was lost (a Spot eviction deletes the VM) and counts as an eviction, except the
    ``replaced`` ones this poll deleted because they could not start."""
    clients = backend._clients_for(compute)
    cluster_id = handle.cluster_id or ""
    healthy = [name for name in healthy_workers(vms, cluster_id) if name not in handle.boot_replaced]
    missing = compute.n_workers - len(healthy)
    if missing <= 0:
        return handle.model_copy(update={"workers_created": True})
    evictions = handle.evictions + (max(0, missing - replaced) if handle.workers_created else 0)
    handle = handle.model_copy(update={"evictions": evictions})
    if evictions > compute.max_evictions:
        return handle
    ip = (handle.scheduler_address or "").split("://", 1)[-1]
    node = {
        "role": "worker",
        "scheduler_address": handle.scheduler_address,
        "scheduler_host": ip.rpartition(":")[0],
        "worker_class": compute.worker_class,
        "worker_options": python_options(dict(compute.worker_options)),
    }
    failed_now = delete_failed_workers(clients[0], compute.resource_group, vms, cluster_id)
    if failed_now:  # their creation was not awaited: this is where its failure shows
        error = f"worker VM {', '.join(failed_now)} ended Failed (Azure could not allocate it: no capacity"
        handle = handle.model_copy(update={"last_error": f"{error} for the size now); deleted and replaced"})
    batch = min(missing, WORKERS_PER_STEP)  # the rest at the next polls: each step's ARM calls are bounded
    names = [f"{worker_vm_prefix(cluster_id)}{uuid.uuid4().hex[:8]}" for _ in range(batch)]
    plans = [plan_vm(backend, record, compute, handle, name, node, head=False) for name in names]
    with ThreadPoolExecutor(max_workers=min(8, batch), thread_name_prefix="vmcluster-create") as pool:
        futures = [pool.submit(backend._create, record, handle, clients, plan, wait=False) for plan in plans]
    errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
    for exc in errors:  # after every creation has ended
        if not isinstance(exc, BackendError) or not worker_loss(exc, spot=compute.spot):
            raise exc
    update: dict[str, Any] = {"workers_created": handle.workers_created or missing <= batch}
    if errors:  # each missing worker counts as lost at the next poll, which tries again
        update["last_error"] = str(errors[0])
    return handle.model_copy(update=update)


def worker_loss(exc: BackendError, *, spot: bool) -> bool:
    """Whether a worker VM that could not be created counts as a lost worker, to be tried again at the next
    poll within ``compute.max_evictions``, rather than failing the run now: throttling or 5xx that outlasted
    the call, no capacity (for Spot, ``SkuNotAvailable`` means that too), and a 403 while new role
    assignments propagate. A quota, a size the region does not offer or a bad request fail the run."""
    if exc.retryable or (spot and exc.code == "SkuNotAvailable"):
        return True
    from shared.backends.arm import AUTHORIZATION_CODES

    return exc.code in AUTHORIZATION_CODES
