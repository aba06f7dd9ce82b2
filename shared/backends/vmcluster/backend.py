"""``VMClusterBackend``: the ``ComputeBackend`` protocol for Dask on Azure VMs, one bounded step per call.

The control plane creates the VMs and reads storage; it never talks to the cluster (see the package
docstring). Each call is idempotent: it reconciles against what exists, found by tag and name.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.backends.area import ingest_area
from shared.backends.outcome import outcome_status, read_outcome
from shared.backends.vmcluster import CAPABILITIES
from shared.backends.vmcluster.boot_notes import (
    BOOT_NOTES,
    boot_log_hint,
    describe_note,
)
from shared.backends.vmcluster.bootscript import (
    VMPlan,
    new_tls_identity,
)
from shared.backends.vmcluster.dryrun import VMClusterPlanner
from shared.backends.vmcluster.exchange import CODE_BLOB, HEARTBEAT_ARTIFACT, TLS_BLOB, Heartbeat, build_code_archive
from shared.backends.vmcluster.handle import IdentityHandle, VMClusterHandle
from shared.backends.vmcluster.section import VMClusterCompute
from shared.backends.vmcluster.settings import (
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_SILENCE_LIMIT_S,
    SCHEDULER_PORT,
    SECURITY_ARTIFACT,
    VMIdentity,
    cluster_tags,
    sas_lifetime_s,
    scheduler_vm_name,
    subscription_of,
)
from shared.backends.vmcluster.vm_plan import plan_vm
from shared.backends.vmcluster.vms import (
    cluster_vms,
    create_vm,
    failed,
    get_vm,
    private_ip,
    vm_exists,
)
from shared.backends.vmcluster.workers import tend_workers
from shared.errors import BackendError, NotFound
from shared.ports import ComputeCredential, HandleUpdate, RunDetails, RunState, RunStatus, areas_of, handle_changes
from shared.records import ExperimentRecord
from shared.store.compute import ComputeStore
from shared.telemetry.compute import TELEMETRY_BLOB, ComputeTelemetry, for_compute

if TYPE_CHECKING:
    from shared.backends.arm import RetrySettings
    from shared.backends.vmcluster.vm_teardown import OrphanedCluster
    from shared.config import Settings
    from shared.ports import Store

log = logging.getLogger(__name__)

ClientFactory = Callable[[str], Any]


class VMClusterBackend:
    """Dask on Azure VMs; implements ``shared.ports.ComputeBackend``.

    ``compute_client_factory``/``network_client_factory`` (and ``msi_``/``authorization_client_factory``)
    build the ARM clients from a subscription id (tests point them at a local ARM server). The cluster meets
    the control plane in the experiment's compute area: the VMs reach it as an identity of their own whose
    one role is on that area (:mod:`.identity`); their boot script holds no secret.
    """

    name = "vmcluster"
    handle_type = VMClusterHandle
    capabilities = CAPABILITIES
    planner = VMClusterPlanner()

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        compute_client_factory: ClientFactory | None = None,
        network_client_factory: ClientFactory | None = None,
        msi_client_factory: ClientFactory | None = None,
        authorization_client_factory: ClientFactory | None = None,
        vm_blob_endpoint: str | None = None,
        identity: VMIdentity | None = None,
        retry: RetrySettings | None = None,
        scheduler_port: int = SCHEDULER_PORT,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        silence_limit_s: float = DEFAULT_SILENCE_LIMIT_S,
    ) -> None:
        self.store = store
        self.areas = areas_of(store)
        self.settings = settings
        self._compute_factory = compute_client_factory
        self._network_factory = network_client_factory
        self._msi_factory = msi_client_factory
        self._authorization_factory = authorization_client_factory
        self.vm_blob_endpoint = vm_blob_endpoint
        """The storage account's blob endpoint as the VMs reach it (tests: a local stand-in); None: the area's."""
        self.identity = identity
        self._retry = retry
        self.scheduler_port = scheduler_port
        self.ready_timeout_s = ready_timeout_s
        self.silence_limit_s = silence_limit_s

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def retry(self) -> RetrySettings:
        from shared.backends.arm import DEFAULT_RETRY

        return self._retry or DEFAULT_RETRY

    def _credential(self, record: ExperimentRecord) -> ComputeCredential:
        """A fresh credential of the experiment's compute area (it lasts the experiment's timeout + 6 h)."""
        ttl = timedelta(seconds=sas_lifetime_s(record.run_spec))
        return self.areas.issue_compute_credential(record.id, ttl)

    def _compute(self, record: ExperimentRecord) -> VMClusterCompute:
        compute = record.spec.compute if record.spec is not None else None
        if not isinstance(compute, VMClusterCompute):
            raise BackendError(f"experiment {record.id} is not a vmcluster experiment")
        return compute

    def _clients(self, subscription_id: str) -> tuple[Any, Any]:
        from shared.backends.vmcluster.network import make_network_client
        from shared.backends.vmcluster.vm_teardown import make_compute_client

        compute = (self._compute_factory or make_compute_client)(subscription_id)
        network = (self._network_factory or make_network_client)(subscription_id)
        return compute, network

    def _clients_for(self, compute: VMClusterCompute) -> tuple[Any, Any]:
        sub = subscription_of(compute, self.settings.azure)
        if not sub:
            raise BackendError("no subscription: set compute.subscription_id or AZURE_SUBSCRIPTION_ID")
        return self._clients(sub)

    def _identity_clients(self, compute: VMClusterCompute) -> tuple[Any, Any]:
        from shared.backends.vmcluster.identity import make_authorization_client, make_msi_client

        sub = subscription_of(compute, self.settings.azure) or ""
        return (self._msi_factory or make_msi_client)(sub), (self._authorization_factory or make_authorization_client)(
            sub
        )

    def _node_credential(self, record: ExperimentRecord, handle: VMClusterHandle) -> dict[str, Any]:
        """What the VMs' ``node.json`` holds to reach the area: never a secret. A blob area: its URL and the
        client id of the experiment's VM identity; a folder (local development): its path."""
        credential = self._credential(record)
        if credential.kind == "folder":
            return dict(json.loads(credential.to_json()))
        if handle.identity is None:
            raise BackendError(f"experiment {record.id} has no VM identity (provision did not run)", retryable=False)
        url = credential.url
        if self.vm_blob_endpoint:
            url = f"{self.vm_blob_endpoint.rstrip('/')}/{url.rstrip('/').rsplit('/', 1)[-1]}"
        identity = ComputeCredential(record.id, "blob-identity", url, handle.identity.client_id, credential.expires_at)
        return dict(json.loads(identity.to_json()))

    def _credentials(self, experiment_id: str) -> dict[str, Any] | None:
        try:
            credentials: dict[str, Any] = json.loads(self.store.get_secret(experiment_id, SECURITY_ARTIFACT))
            return credentials
        except NotFound:
            return None

    # ------------------------------------------------------------------------------ the VMs' boot
    def _telemetry(self, record: ExperimentRecord) -> ComputeTelemetry:
        """The driver's trace and exporter settings, with the VMs' identity (``shared.telemetry.compute``)."""
        return for_compute(record.traceparent, self.identity.client_id if self.identity else None)

    def _create(
        self,
        record: ExperimentRecord,
        handle: VMClusterHandle,
        clients: tuple[Any, Any],
        vm: VMPlan,
        *,
        wait: bool = True,
    ) -> str:
        from shared.backends.vmcluster.vm_teardown import CLUSTER_ID_TAG, CREATOR, CREATOR_TAG

        compute = self._compute(record)
        network = handle.network
        if network is None:
            raise BackendError(f"experiment {record.id} has no provisioned network (provision did not run)")
        attached = [i.resource_id for i in (handle.identity, self.identity) if i is not None]
        identities: dict[str, dict[str, Any]] = {resource_id: {} for resource_id in attached}
        extra = None
        if identities:
            extra = {"identity": {"type": "UserAssigned", "userAssignedIdentities": identities}}
        return create_vm(
            *clients,
            vm,
            resource_group=compute.resource_group,
            location=compute.location,
            subnet_id=network.subnet_id,
            nsg_id=network.nsg_id,
            tags={
                **cluster_tags(record.id, self.settings.azure.instance_id),
                CREATOR_TAG: CREATOR,
                CLUSTER_ID_TAG: handle.cluster_id or "",
            },
            extra_vm_options=extra,
            retry=self.retry,
            wait=wait,
        )

    # -------------------------------------------------------------------------------- the protocol
    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        """The network (new or existing), and the experiment's compute area with its record and our code."""
        import tempfile
        from pathlib import Path

        from shared.backends.vmcluster.network import ensure_network

        compute = self._compute(record)
        _, network_client = self._clients_for(compute)
        network = ensure_network(
            network_client,
            resource_group=compute.resource_group,
            location=compute.location,
            experiment_id=record.id,
            spec=compute.network,
            tags=cluster_tags(record.id, self.settings.azure.instance_id),
            retry=self.retry,
        )
        credential = self._credential(record)
        area = ComputeStore.from_credential(credential).area  # the record is published there
        with tempfile.TemporaryDirectory(prefix="rapids-hpo-code-") as folder:
            area.put(CODE_BLOB, build_code_archive(Path(folder) / "code.zip").read_bytes())
        # The driver's trace and exporter settings: read by the head through the area, never custom data.
        area.put(TELEMETRY_BLOB, self._telemetry(record).model_dump_json().encode())
        before = VMClusterHandle.of(record.backend_state)
        image = before.image_choice(compute, self.settings.azure)  # fixed now: every VM pulls the same image
        update = {"network": network, "area": True, "image": image.reference, "image_registry": image.registry}
        handle = before.model_copy(update=update)
        if credential.kind != "folder":
            identity = self._ensure_identity(record, compute, credential.url, pull_from_registry=bool(image.registry))
            handle = handle.model_copy(update={"identity": identity})
        return handle_changes(before, handle)

    def _ensure_identity(
        self, record: ExperimentRecord, compute: VMClusterCompute, area_url: str, *, pull_from_registry: bool
    ) -> IdentityHandle:
        """The experiment's VM identity with its roles: on the area's container, and AcrPull on the deployment's
        registry when the image comes from there (see :mod:`.identity`)."""
        from shared.backends.vmcluster.identity import container_scope, ensure_identity

        registry_scope = self.settings.azure.registry_id if pull_from_registry else ""
        if pull_from_registry and not registry_scope:
            raise BackendError("RAPIDS_HPO_REGISTRY_ID is not set: the AcrPull scope of the VMs", retryable=False)

        account = self.settings.azure.storage_account_id
        if not account:
            raise BackendError(
                "RAPIDS_HPO_STORAGE_ACCOUNT_ID is not set: the VMs reach their experiment's container with an "
                "identity of their own, whose role is scoped there (infra/main.bicep sets it)",
                retryable=False,
            )
        return ensure_identity(
            *self._identity_clients(compute),
            resource_group=compute.resource_group,
            location=compute.location,
            experiment_id=record.id,
            tags=cluster_tags(record.id, self.settings.azure.instance_id),
            scope=container_scope(account, area_url.rstrip("/").rsplit("/", 1)[-1]),
            retry=self.retry,
            registry_scope=registry_scope,
        )

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        """The cluster's TLS identity (a secret), then the head VM (NIC + VM, ~1-3 minutes).

        A redelivered or re-driven event reuses the stored identity and the head VM if it exists.
        """
        before = handle = VMClusterHandle.of(record.backend_state)
        if handle.submitted:
            return {}
        compute = self._compute(record)
        clients = self._clients_for(compute)
        document = self._credentials(record.id)
        if document is None:
            document = {"cluster_id": uuid.uuid4().hex[:8], "tls": new_tls_identity() if compute.security else None}
            self.store.put_secret(record.id, SECURITY_ARTIFACT, json.dumps(document).encode())
        if document.get("tls"):  # for the VMs, in their area (their identity reads it), never in their customData
            area = ComputeStore.from_credential(self._credential(record)).area
            area.put(TLS_BLOB, json.dumps(document["tls"]).encode())
        handle = handle.model_copy(update={"cluster_id": document["cluster_id"]})
        name = scheduler_vm_name(document["cluster_id"])
        vm = get_vm(clients[0], compute.resource_group, name, self.retry)
        if vm is not None and not failed(vm):
            ip = private_ip(clients[1], compute.resource_group, vm, self.retry)
        else:  # absent, or its creation failed: PUT it (again; the names make that idempotent)
            node = {"role": "head", "scheduler_port": self.scheduler_port}
            vm = plan_vm(self, record, compute, handle, name, node, head=True)
            ip = self._create(record, handle, clients, vm)
        protocol = "tls" if document.get("tls") else "tcp"
        update = {
            "scheduler_vm": name,
            "scheduler_address": f"{protocol}://{ip}:{self.scheduler_port}",
            "submitted_at": datetime.now(UTC),
            "n_workers": compute.n_workers,
        }
        return handle_changes(before, handle.model_copy(update=update))

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """Ingest new trials; the outcome if written; else replace lost workers (none while the run is
        stopping: :func:`~.workers.stopping`) and judge the heartbeat."""
        before = handle = VMClusterHandle.of(record.backend_state)
        if not handle.submitted:
            return RunStatus(RunState.FAILED, error="no head node was recorded for this experiment")
        handle, problem = self._ingest(record, handle)
        if problem:
            return _status(before, RunState.FAILED, handle, error=problem)
        outcome = read_outcome(self.store, record.id)
        if outcome is not None:
            return outcome_status(outcome, handle_changes(before, handle))
        compute = self._compute(record)
        try:
            compute_client, head = self._clients_for(compute)[0], handle.scheduler_vm or ""
            vms = cluster_vms(compute_client, compute.resource_group, handle.cluster_id or "", self.retry)
            if not vm_exists(compute_client, compute.resource_group, head, vms, self.retry):
                # Docker restarts a dead driver on its VM; nothing restarts a deleted VM (and a new head
                # would have a new address): the run cannot go on.
                error = (
                    f"the head node VM {head} is gone (deleted outside the control plane?): its driver cannot restart"
                )
                return _status(before, RunState.FAILED, handle, error=error)
            notes = self._boot_notes(record.id)
            handle, cannot = tend_workers(self, record, compute, handle, vms, notes)
            if cannot:
                return _status(before, RunState.FAILED, handle, error=cannot)
        except BackendError as exc:
            if not exc.retryable:
                return _status(before, RunState.FAILED, handle, error=str(exc))
            handle = handle.model_copy(update={"last_error": str(exc)})
        if handle.evictions > compute.max_evictions:
            error = f"{handle.evictions} worker VMs evicted or lost, over compute.max_evictions={compute.max_evictions}"
            return _status(before, RunState.FAILED, handle, error=error)
        notes = self._boot_notes(record.id)  # again: ingested meanwhile, or not read when ARM failed above
        head_note = next((n for n in notes if n.get("vm") == handle.scheduler_vm and n.get("final")), None)
        if head_note is not None:  # the restart policy is spent: nothing will start the head again
            error = f"the head node could not start: {describe_note(head_note)}{boot_log_hint(compute, head_note)}"
            return _status(before, RunState.FAILED, handle, error=error)
        beat = self._heartbeat(record.id)
        if beat is None:
            waited = handle.seconds_since_submit()
            if waited > self.ready_timeout_s:
                error = f"the head node's driver did not start within {waited:.0f} s of submit"
                if handle.last_error:
                    error = f"{error}; last error: {handle.last_error}"
                if notes:
                    error = f"{error}; boot notes: " + "; ".join(describe_note(n) for n in notes[:3])
                return _status(before, RunState.FAILED, handle, error=error + boot_log_hint(compute, None))
            waiting = RunDetails(waiting_for="the head node's first heartbeat")
            return _status(before, RunState.PENDING, handle, details=waiting)
        handle = handle.model_copy(update={"heartbeat_at": beat})
        if handle.seconds_silent() > self.silence_limit_s:
            error = f"the driver's last heartbeat was {handle.seconds_silent():.0f} s ago (head node lost)"
            return _status(before, RunState.FAILED, handle, error=error)
        seen = RunDetails(heartbeat_at=beat, evictions=handle.evictions)
        return _status(before, RunState.RUNNING, handle, details=seen)

    def _ingest(self, record: ExperimentRecord, handle: VMClusterHandle) -> tuple[VMClusterHandle, str | None]:
        return ingest_area(self.areas, record.id, handle, self.settings.max_artifact_bytes)

    def _boot_notes(self, experiment_id: str) -> list[dict[str, Any]]:
        """What the VMs' ``boot.py`` reported of failed starts (``artifacts/boot/<vm>.json``), newest first."""
        notes = []
        for name in self.store.list_artifacts(experiment_id, f"{BOOT_NOTES}/"):
            try:
                note = json.loads(self.store.get_artifact(experiment_id, name))
            except (NotFound, ValueError):
                continue
            if isinstance(note, dict):
                notes.append(note)
        return sorted(notes, key=lambda n: n["at"] if isinstance(n.get("at"), int | float) else 0, reverse=True)

    def _heartbeat(self, experiment_id: str) -> datetime | None:
        """When the driver last said it lives (never later than now: a clock ahead cannot keep a dead
        driver alive), or None before its first heartbeat or when the document is not one."""
        try:
            beat = Heartbeat.model_validate_json(self.store.get_artifact(experiment_id, HEARTBEAT_ARTIFACT))
        except (NotFound, ValidationError):
            return None
        return min(beat.at, datetime.now(UTC))

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        """The last trials and artifacts (the model among them) into the store; what the compute wrote
        that was refused fails the run (a ``BackendError`` the state machine turns into FAILED)."""
        handle = VMClusterHandle.of(record.backend_state)
        after, problem = self._ingest(record, handle)
        if problem:
            raise BackendError(problem, retryable=False)
        return handle_changes(handle, after)

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        """Publish the CANCELLING record to the compute area (the driver watches it); teardown is the backstop."""
        handle = VMClusterHandle.of(record.backend_state)
        return handle_changes(handle, self._ingest(record, handle)[0])

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        """Delete the cluster's VMs, NICs, public IPs and disks (found by tag), the network, and the
        experiment's compute area, which ends the VMs' credential (the state machine revoked it already,
        before this step read anything: nothing the compute wrote is taken in after the run ended)."""
        from shared.backends.vmcluster.network import teardown_network
        from shared.backends.vmcluster.vm_teardown import delete_cluster_resources, find_cluster_resources

        if record.spec is None or not isinstance(record.spec.compute, VMClusterCompute):
            return {}
        before = handle = VMClusterHandle.of(record.backend_state)
        compute = self._compute(record)
        compute_client, network_client = self._clients_for(compute)
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
        if handle.identity is not None:  # after its VMs: nothing runs as it any more
            from shared.backends.vmcluster.identity import delete_identity

            delete_identity(
                *self._identity_clients(compute),
                handle.identity,
                resource_group=compute.resource_group,
                retry=self.retry,
            )
        if handle.area:
            self.areas.revoke_compute_credential(record.id)
        return handle_changes(before, handle)

    # ------------------------------------------------------------------------------------- the sweep
    def find_orphans(
        self, live_experiment_ids: set[str], *, resource_group: str | None = None, subscription_id: str | None = None
    ) -> list[OrphanedCluster]:
        """This deployment's clusters in a resource group whose experiment is not live (see :mod:`.orphans`)."""
        from shared.backends.vmcluster.orphans import find_orphans

        azure = self.settings.azure
        resource_group, subscription_id = (
            resource_group or azure.resource_group,
            subscription_id or azure.subscription_id,
        )
        return find_orphans(
            self._clients, live_experiment_ids, resource_group, subscription_id, self.retry, azure.instance_id
        )

    def delete_orphans(self, orphans: list[OrphanedCluster], *, subscription_id: str | None = None) -> list[str]:
        from shared.backends.vmcluster.orphans import delete_orphans

        return delete_orphans(
            self._clients, orphans, subscription_id or self.settings.azure.subscription_id, self.retry
        )

    def sweep_orphans(
        self, live_experiment_ids: set[str], *, resource_group: str | None = None, subscription_id: str | None = None
    ) -> list[str]:
        """Delete this deployment's clusters and networks in ``resource_group`` whose experiment is not live.
        Defaults: the deployment's (``Settings.azure``); with either unset, or no instance id, it touches nothing."""
        from shared.backends.vmcluster.orphans import sweep_orphans

        azure = self.settings.azure
        resource_group, subscription_id = (
            resource_group or azure.resource_group,
            subscription_id or azure.subscription_id,
        )
        if not resource_group or not subscription_id:
            return []
        deleted = sweep_orphans(
            self._clients, live_experiment_ids, resource_group, subscription_id, self.retry, azure.instance_id
        )
        from shared.backends.vmcluster.identity import make_authorization_client, make_msi_client, sweep_identities

        msi = (self._msi_factory or make_msi_client)(subscription_id)
        authorization = (self._authorization_factory or make_authorization_client)(subscription_id)
        return deleted + sweep_identities(  # after the VMs that ran as them
            msi,
            authorization,
            resource_group=resource_group,
            storage_account_id=azure.storage_account_id,
            live_experiment_ids=live_experiment_ids,
            instance_id=azure.instance_id,
            retry=self.retry,
            registry_id=azure.registry_id,
        )


def _status(
    before: VMClusterHandle,
    state: RunState,
    handle: VMClusterHandle,
    error: str | None = None,
    details: RunDetails | None = None,
) -> RunStatus:
    """What a poll saw, with the fields of the handle it changed since ``before``."""
    return RunStatus(state, error=error, details=details or RunDetails(), updates=handle_changes(before, handle))
