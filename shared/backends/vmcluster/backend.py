"""``VMClusterBackend``: the ``ComputeBackend`` protocol for Dask on Azure VMs, one bounded step per call
(the package docstring tells the whole story)."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.backends.outcome import outcome_status, read_outcome
from shared.backends.vmcluster.bootscript import VMPlan, plan_vms
from shared.backends.vmcluster.dryrun import VMClusterPlanner
from shared.backends.vmcluster.handle import VMClusterHandle
from shared.backends.vmcluster.head import (
    ACTIVE_TASK_STATES,
    new_credentials,
    probe_task,
    run_driver_on_cluster,
    security_from,
    ship_code,
)
from shared.backends.vmcluster.settings import (
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_UNREACHABLE_LIMIT_S,
    MAX_DRIVER_RESTARTS,
    SCHEDULER_PORT,
    SECURITY_ARTIFACT,
    VMIdentity,
    cluster_env,
    cluster_kwargs,
    cluster_tags,
    driver_key,
    scheduler_vm_name,
    subscription_of,
    worker_vm_prefix,
)
from shared.backends.vmcluster.vms import create_vm, failed
from shared.compute_spec import VMClusterCompute
from shared.errors import BackendError, NotFound
from shared.ports import Capabilities, HandleUpdate, RunState, RunStatus
from shared.records import ExperimentRecord

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from distributed import Client

    from shared.backends.arm import RetrySettings
    from shared.backends.network import NetworkHandle
    from shared.backends.vm_teardown import OrphanedCluster
    from shared.config import Settings
    from shared.ports import Store

log = logging.getLogger(__name__)

ClientFactory = Callable[[str], Any]


class VMClusterBackend:
    """Dask on Azure GPU VMs; implements ``shared.ports.ComputeBackend`` (see the module docstring).

    ``compute_client_factory``/``network_client_factory`` build the ARM clients from a subscription id
    (tests point them at a fake ARM server); ``driver_function`` is the task submitted to the cluster.
    ``allow_local_store`` lets a cluster on this machine share a ``LocalStore`` (development, tests).
    """

    name = "vmcluster"
    handle_type = VMClusterHandle
    capabilities = Capabilities(model_from="driver", cloud_resources=True, finds_orphans=True, restarts_driver=True)
    planner = VMClusterPlanner()

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        compute_client_factory: ClientFactory | None = None,
        network_client_factory: ClientFactory | None = None,
        identity: VMIdentity | None = None,
        retry: RetrySettings | None = None,
        scheduler_port: int = SCHEDULER_PORT,
        connect_timeout_s: float = 10.0,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        unreachable_limit_s: float = DEFAULT_UNREACHABLE_LIMIT_S,
        allow_local_store: bool = False,
        driver_function: Callable[[str], Any] = run_driver_on_cluster,
    ) -> None:
        self.store = store
        self.settings = settings
        self._compute_factory = compute_client_factory
        self._network_factory = network_client_factory
        self.identity = identity
        self._retry = retry
        self.scheduler_port = scheduler_port
        self.connect_timeout_s = connect_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.unreachable_limit_s = unreachable_limit_s
        self.allow_local_store = allow_local_store
        self.driver_function = driver_function

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def retry(self) -> RetrySettings:
        from shared.backends.arm import DEFAULT_RETRY

        return self._retry or DEFAULT_RETRY

    def _compute(self, record: ExperimentRecord) -> VMClusterCompute:
        compute = record.spec.get("compute") or {}
        if compute.get("backend") != "vmcluster":
            raise BackendError(f"experiment {record.id} is not a vmcluster experiment")
        try:
            return VMClusterCompute.model_validate(compute)
        except ValueError as exc:  # a record stored before a rule tightened: fail the run, don't retry
            raise BackendError(f"experiment {record.id}: invalid compute section: {exc}") from None

    def _subscription(self, compute: VMClusterCompute) -> str:
        sub = subscription_of(compute)
        if not sub:
            raise BackendError("no subscription: set compute.subscription_id or AZURE_SUBSCRIPTION_ID")
        return sub

    def _clients(self, subscription_id: str) -> tuple[ComputeManagementClient, NetworkManagementClient]:
        from shared.backends.network import make_network_client
        from shared.backends.vm_teardown import make_compute_client

        compute = (self._compute_factory or make_compute_client)(subscription_id)
        network = (self._network_factory or make_network_client)(subscription_id)
        return compute, network

    def _network(self, record: ExperimentRecord, handle: VMClusterHandle) -> NetworkHandle:
        if handle.network is None:
            raise BackendError(f"experiment {record.id} has no provisioned network (provision did not run)")
        return handle.network

    def _cluster_env(self, experiment_id: str) -> dict[str, str]:
        settings = self.settings
        if settings.storage_account_name:
            if self.identity is None:
                raise BackendError(
                    "the vmcluster backend needs a user-assigned managed identity for the cluster VMs "
                    "(VMClusterBackend(identity=VMIdentity(resource_id, client_id))) with blob and table "
                    "data roles on the storage account: the driver runs on the VMs and writes trials there"
                )
            return cluster_env(
                experiment_id=experiment_id,
                storage_account_name=settings.storage_account_name,
                identity=self.identity,
            )
        if self.allow_local_store:
            return {
                **cluster_env(experiment_id=experiment_id, storage_account_name=None, identity=None),
                "RAPIDS_HPO_HOME": str(settings.home),
            }
        raise BackendError(
            "the vmcluster backend needs identity-based Azure Storage (AzureWebJobsStorage__accountName): "
            "the HPO driver runs on the cluster VMs and writes trials there, and a connection string "
            "(it holds the account key) is never sent to VMs"
        )

    def _kwargs(self, record: ExperimentRecord, handle: VMClusterHandle) -> dict[str, Any]:
        return cluster_kwargs(
            self._compute(record),
            self._network(record, handle),
            experiment_id=record.id,
            env_vars=self._cluster_env(record.id),
            identity=self.identity,
            scheduler_port=self.scheduler_port,
        )

    def _credentials(self, experiment_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_secret(experiment_id, SECURITY_ARTIFACT))
        except NotFound:
            return None

    def _outcome(self, experiment_id: str) -> dict[str, Any] | None:
        return read_outcome(self.store, experiment_id)

    def connect(self, record: ExperimentRecord) -> Client:
        """A client of the experiment's scheduler with its stored TLS credentials (raises OSError)."""
        from distributed import Client

        handle = VMClusterHandle.of(record.backend_state)
        document = self._credentials(record.id)
        if document is None or document.get("cluster_id") != handle.cluster_id or not handle.scheduler_address:
            raise BackendError(f"{SECURITY_ARTIFACT} of {record.id} does not belong to cluster {handle.cluster_id}")
        address = handle.scheduler_address
        # A plain TCP probe first: while the VM boots (minutes) each poll then fails in milliseconds
        # (refused) or seconds (dropped), instead of the client's full connect timeout.
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(3.0, self.connect_timeout_s)):
            pass
        return Client(address, security=security_from(document), timeout=self.connect_timeout_s, set_as_default=False)

    def _vm(self, compute_client: Any, resource_group: str, name: str) -> Any | None:
        from shared.backends.arm import arm_call, is_not_found

        def get() -> Any | None:
            try:
                return compute_client.virtual_machines.get(resource_group, name)
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise

        return arm_call(f"reading virtual machine {name}", get, self.retry)

    def _private_ip(self, network_client: Any, resource_group: str, vm: Any) -> str:
        from azure.mgmt.core.tools import parse_resource_id

        from shared.backends.arm import arm_call

        nic_name = parse_resource_id(vm.network_profile.network_interfaces[0].id)["name"]
        nic = arm_call(
            f"reading network interface {nic_name}",
            lambda: network_client.network_interfaces.get(resource_group, nic_name),
            self.retry,
        )
        return nic.ip_configurations[0].private_ip_address

    # -------------------------------------------------------------------------------- the protocol
    def provision(self, record: ExperimentRecord) -> dict[str, Any]:
        """Create (or reconcile) the experiment's VNet/subnet/NSG; the handle records it."""
        from shared.backends.network import ensure_network

        compute = self._compute(record)
        _, network_client = self._clients(self._subscription(compute))
        network = ensure_network(
            network_client,
            resource_group=compute.resource_group,
            location=compute.location,
            experiment_id=record.id,
            spec=compute.network,
            tags=cluster_tags(record.id),
            retry=self.retry,
        )
        return VMClusterHandle.of(record.backend_state).model_copy(update={"network": network}).dump()

    def submit(self, record: ExperimentRecord) -> dict[str, Any]:
        """Write the cluster's credentials, create (or find) the scheduler VM, record its address.

        Bounded: one NIC and one VM (~1-3 minutes); the workers and the driver follow in ``poll``.
        ARM failures are retried (409/429/5xx) and then end the run; a redelivered or re-driven event
        reuses the stored credentials and the scheduler VM if it exists.
        """
        handle = VMClusterHandle.of(record.backend_state)
        if handle.submitted:
            return handle.dump()  # submitted before: poll drives the rest
        compute = self._compute(record)
        kwargs = self._kwargs(record, handle)
        compute_client, network_client = self._clients(self._subscription(compute))

        document = self._credentials(record.id)
        if document is None:
            document = new_credentials(uuid.uuid4().hex[:8], compute.security)
            self.store.put_secret(record.id, SECURITY_ARTIFACT, json.dumps(document).encode())
        cluster_id = document["cluster_id"]
        security = security_from(document)

        name = scheduler_vm_name(cluster_id)
        vm = self._vm(compute_client, compute.resource_group, name)
        if vm is not None and not failed(vm):
            ip = self._private_ip(network_client, compute.resource_group, vm)
            log.info("reusing scheduler VM %s (%s)", name, ip)
        else:  # absent, or its creation failed: PUT it (again; the names make that idempotent)
            [vm_plan] = plan_vms(kwargs, cluster_id=cluster_id, security=security, scheduler_address=None)
            ip = self._create(record, handle, compute_client, network_client, vm_plan, kwargs, cluster_id)
        protocol = "tls" if security is not None else "tcp"
        return handle.model_copy(
            update={
                "cluster_id": cluster_id,
                "scheduler_vm": name,
                "scheduler_address": f"{protocol}://{ip}:{self.scheduler_port}",
                "submitted_at": datetime.now(UTC),
                "n_workers": compute.n_workers,
                "workers_created": False,
                "driver_restarts": 0,
            }
        ).dump()

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """The outcome artifact if written; else move the cluster along (workers, driver) or report
        the driver task's state. The updated handle travels in ``RunStatus.updates``."""
        outcome = self._outcome(record.id)
        if outcome is not None:
            return outcome_status(outcome)
        handle = VMClusterHandle.of(record.backend_state)
        if not handle.submitted:
            return RunStatus(RunState.FAILED, error="no Dask scheduler was recorded for this experiment")
        try:
            client = self.connect(record)
        except (OSError, TimeoutError) as exc:
            return self._unreachable(handle, exc)
        with client:
            return self._poll_cluster(record, handle.model_copy(update={"unreachable_since": None}), client)

    def _poll_cluster(self, record: ExperimentRecord, handle: VMClusterHandle, client: Client) -> RunStatus:
        if not handle.workers_created:
            try:
                self._ensure_worker_vms(record, handle)
            except BackendError as exc:
                if not exc.retryable:
                    return _status(RunState.FAILED, handle, error=str(exc))
                return self._starting(handle.model_copy(update={"last_error": str(exc)}), "creating the worker VMs")
            handle = handle.model_copy(update={"workers_created": True})

        if not handle.driver_key:
            workers = len(client.nthreads())
            if workers == 0:
                return self._starting(handle, "waiting for Dask workers to join")
            key = driver_key(record.id, 0)
            self._start_driver(client, record.id, key)
            handle = handle.model_copy(update={"driver_key": key, "driver_started_at": datetime.now(UTC)})
            return _status(RunState.RUNNING, handle, driver="submitted", workers=workers)

        probe = probe_task(client, handle.driver_key)
        if probe["state"] in ACTIVE_TASK_STATES:
            return _status(RunState.RUNNING, handle, driver=probe)
        outcome = self._outcome(record.id)  # the driver may have finished since the first look
        if outcome is not None:
            return outcome_status(outcome, handle.dump())
        if probe["exception"]:
            why = f"the driver task failed: {probe['exception']}"
        elif probe["state"] == "memory":
            why = "the driver task returned without writing an outcome"
        else:
            why = "the driver task is gone from the scheduler (its worker died or the scheduler restarted)"
        restarts = handle.driver_restarts
        if restarts >= MAX_DRIVER_RESTARTS:
            error = f"the HPO driver stopped without an outcome {restarts + 1} times; last: {why}"
            return _status(RunState.FAILED, handle, error=error, driver=probe)
        key = driver_key(record.id, restarts + 1)
        self._start_driver(client, record.id, key)
        handle = handle.model_copy(update={"driver_key": key, "driver_restarts": restarts + 1, "last_error": why})
        return _status(RunState.RUNNING, handle, restarted=True, reason=why)

    def _starting(self, handle: VMClusterHandle, waiting_for: str) -> RunStatus:
        """PENDING while the cluster starts; FAILED once ``ready_timeout_s`` has passed since submit."""
        waited = handle.seconds_since_submit()
        if waited > self.ready_timeout_s:
            error = f"the cluster was not ready {waited:.0f} s after submit ({waiting_for})"
            if handle.last_error:
                error = f"{error}; last error: {handle.last_error}"
            return _status(RunState.FAILED, handle, error=error)
        return _status(RunState.PENDING, handle, waiting_for=waiting_for)

    def _unreachable(self, handle: VMClusterHandle, exc: BaseException) -> RunStatus:
        address = handle.scheduler_address
        reason = f"{type(exc).__name__}: {exc}"
        if not handle.driver_key:
            return self._starting(handle, f"the scheduler at {address} is not reachable yet ({reason})")
        if handle.unreachable_since is None:
            handle = handle.model_copy(update={"unreachable_since": datetime.now(UTC)})
        elapsed = handle.seconds_unreachable()
        if elapsed >= self.unreachable_limit_s:
            error = f"the Dask scheduler at {address} has been unreachable for {elapsed:.0f} s: {reason}"
            return _status(RunState.FAILED, handle, error=error)
        return _status(RunState.RUNNING, handle, scheduler="unreachable", error=reason)

    def _ensure_worker_vms(self, record: ExperimentRecord, handle: VMClusterHandle) -> int:
        """Create the worker VMs the cluster lacks (counted by tag and name); returns how many."""
        from shared.backends.arm import arm_call
        from shared.backends.vm_teardown import CLUSTER_ID_TAG

        compute = self._compute(record)
        cluster_id = handle.cluster_id or ""
        compute_client, network_client = self._clients(self._subscription(compute))
        vms = arm_call(
            f"listing virtual machines in resource group {compute.resource_group}",
            lambda: list(compute_client.virtual_machines.list(compute.resource_group)),
            self.retry,
        )
        existing = [
            vm.name
            for vm in vms
            if (vm.tags or {}).get(CLUSTER_ID_TAG) == cluster_id
            and (vm.name or "").startswith(worker_vm_prefix(cluster_id))
            and not failed(vm)  # a failed VM is replaced; teardown deletes it with the rest
        ]
        missing = compute.n_workers - len(existing)
        if missing <= 0:
            return 0
        kwargs = self._kwargs(record, handle)
        plans = plan_vms(
            kwargs,
            cluster_id=cluster_id,
            security=security_from(self._credentials(record.id) or {}),
            scheduler_address=handle.scheduler_address,
            count=missing,
        )
        with ThreadPoolExecutor(max_workers=min(8, missing), thread_name_prefix="vmcluster-create") as pool:
            futures = [
                pool.submit(self._create, record, handle, compute_client, network_client, vm, kwargs, cluster_id)
                for vm in plans
            ]
        for future in futures:
            future.result()  # the first BackendError, after every creation has ended
        return missing

    def _create(
        self,
        record: ExperimentRecord,
        handle: VMClusterHandle,
        compute_client: Any,
        network_client: Any,
        vm: VMPlan,
        kwargs: dict[str, Any],
        cluster_id: str,
    ) -> str:
        from shared.backends.vm_teardown import CLUSTER_ID_TAG, CREATOR, CREATOR_TAG

        network = self._network(record, handle)
        return create_vm(
            compute_client,
            network_client,
            vm,
            resource_group=kwargs["resource_group"],
            location=kwargs["location"],
            subnet_id=network.subnet_id,
            nsg_id=network.nsg_id,
            tags={**cluster_tags(record.id), CREATOR_TAG: CREATOR, CLUSTER_ID_TAG: cluster_id},
            extra_vm_options=kwargs.get("extra_vm_options"),
            retry=self.retry,
        )

    def _start_driver(self, client: Client, experiment_id: str, key: str) -> None:
        """Ship our code, submit the driver as a fire-and-forget task, wait until the scheduler has it."""
        from distributed import fire_and_forget

        ship_code(client)
        future = client.submit(self.driver_function, experiment_id, key=key, pure=False)
        fire_and_forget(future)
        deadline = time.monotonic() + 10.0
        while probe_task(client, key)["state"] is None:
            if time.monotonic() > deadline:
                raise BackendError(f"the scheduler did not register the driver task {key}", retryable=True)
            time.sleep(0.05)
        log.info("submitted driver task %s to %s", key, client.scheduler.address)

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        return {}  # the driver stored the best model itself

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        """The handler set CANCELLING (the driver's CancelWatch stops the trials); also cancel the
        driver task if the scheduler is reachable. Dask cannot interrupt the running thread itself."""
        from distributed import Future

        handle = VMClusterHandle.of(record.backend_state)
        if not handle.driver_key or not handle.submitted:
            return {}
        try:
            client = self.connect(record)
        except (OSError, TimeoutError) as exc:
            log.warning("cancel %s: scheduler unreachable (%s); teardown removes the VMs", record.id, exc)
            return {}
        with client:
            client.cancel([Future(handle.driver_key, client)], force=True)
        return {}

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        """Delete the cluster's VMs, NICs, public IPs and disks (found by tag), then the network."""
        from shared.backends.network import teardown_network
        from shared.backends.vm_teardown import delete_cluster_resources, find_cluster_resources

        if (record.spec.get("compute") or {}).get("backend") != "vmcluster":
            return {}
        handle = VMClusterHandle.of(record.backend_state)
        compute = self._compute(record)
        compute_client, network_client = self._clients(self._subscription(compute))
        document = self._credentials(record.id) or {}
        cluster_ids = {c for c in (handle.cluster_id, document.get("cluster_id")) if c}
        found = find_cluster_resources(
            compute_client,
            network_client,
            resource_group=compute.resource_group,
            cluster_ids=cluster_ids,
            experiment_id=record.id,
            retry=self.retry,
        )
        deleted = delete_cluster_resources(
            compute_client, network_client, resource_group=compute.resource_group, resources=found, retry=self.retry
        )
        log.info("teardown %s: deleted %d cluster resources", record.id, len(deleted))
        if handle.network is not None:
            teardown_network(
                network_client, resource_group=handle.network.resource_group, handle=handle.network, retry=self.retry
            )
        return {}

    # ------------------------------------------------------------------------------------- the sweep
    def find_orphans(
        self,
        live_experiment_ids: set[str],
        *,
        resource_group: str | None = None,
        subscription_id: str | None = None,
    ) -> list[OrphanedCluster]:
        """Our clusters in a resource group whose experiment is not live (see :mod:`.orphans`)."""
        from shared.backends.vmcluster.orphans import find_orphans

        return find_orphans(self._clients, live_experiment_ids, resource_group, subscription_id, self.retry)

    def delete_orphans(self, orphans: list[OrphanedCluster], *, subscription_id: str | None = None) -> list[str]:
        from shared.backends.vmcluster.orphans import delete_orphans

        return delete_orphans(self._clients, orphans, subscription_id, self.retry)

    def sweep_orphans(
        self, live_experiment_ids: set[str], *, resource_group: str | None = None, subscription_id: str | None = None
    ) -> list[str]:
        """Delete our clusters and networks in ``resource_group`` whose experiment is not live. Defaults:
        ``AZURE_RESOURCE_GROUP``, ``AZURE_SUBSCRIPTION_ID``; with either unset it touches nothing."""
        from shared.backends.vmcluster.orphans import sweep_orphans
        from shared.config import env

        resource_group = resource_group or env("AZURE_RESOURCE_GROUP")
        subscription_id = subscription_id or env("AZURE_SUBSCRIPTION_ID")
        if not resource_group or not subscription_id:
            return []
        return sweep_orphans(self._clients, live_experiment_ids, resource_group, subscription_id, self.retry)


def _status(state: RunState, handle: VMClusterHandle, error: str | None = None, **details: Any) -> RunStatus:
    return RunStatus(state, error=error, details=details, updates=handle.dump())
