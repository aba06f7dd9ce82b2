"""The vmcluster backend end to end against a stand-in as hostile as Azure (tests/vm_standin.py).

The VMs are "created" through the real Azure SDK against the local ARM server, which holds the Function
App to the role assignments the Bicep declares (tests/rbac.py); each boots from the boot script in its
custom data, under Python 3.12 in a virtual environment of its own that lacks this project (the code
arrives as the archive in the experiment's compute area), in a folder of its own, as the image's user
(uid 1001) over files owned as cloud-init leaves them, with Dask over TLS, reaching storage only as the
experiment's own managed identity (tokens from a stand-in instance metadata service, checked against the
role assignments ARM recorded by a Storage stand-in in front of Azurite: tests/entra_standin.py) and only
when its subnet has an outbound path. The control plane here (an
``AzureStore`` on Azurite) only creates VMs and reads that area: it never opens a Dask client.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.backends.arm import RetrySettings
from shared.backends.vmcluster import VMClusterBackend, VMClusterHandle
from shared.backends.vmcluster.identity import make_authorization_client, make_msi_client
from shared.backends.vmcluster.network import make_network_client
from shared.backends.vmcluster.vm_teardown import make_compute_client
from shared.config import AZURITE_KEY
from shared.ports import RunState, RunStatus
from shared.records import ExperimentRecord, TrialRecord, TrialState
from shared.spec import load_spec
from shared.store.azure import AzureStore
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.control_plane import local_context, tiny_spec
from tests.entra_standin import ImdsServer, StorageProxy
from tests.rbac import Rbac, function_app_rbac
from tests.vm_standin import VMStandIn, compute_python

pytestmark = pytest.mark.azurite
SUB = "00000000-0000-0000-0000-000000000002"
RG = "rg-standin"
CONTROL_RG = "rg-control"
LOC = "westeurope"
CONTROL_VNET = "vnet-rhpo-standin"
STORAGE_ACCOUNT_ID = (  # the control plane's account as tests/rbac.py names it (Azurite plays it)
    f"/subscriptions/{SUB}/resourceGroups/{CONTROL_RG}/providers/Microsoft.Storage/storageAccounts/strhpostandin"
)
DASK_SUBNET_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{CONTROL_RG}/providers/Microsoft.Network/virtualNetworks/"
    f"{CONTROL_VNET}/subnets/dask"
)


def function_app_roles() -> Rbac:
    """The Function App's role assignments as the Bicep declares them, for this test's resource groups."""
    return function_app_rbac(SUB, RG, CONTROL_RG, CONTROL_VNET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def python() -> Path:
    found = compute_python()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture
def standin(tmp_path: Path, python: Path) -> Iterator[VMStandIn]:
    vms = VMStandIn(python)
    try:
        yield vms
    finally:
        vms.close()


@pytest.fixture
def arm(standin: VMStandIn) -> Iterator[FakeArm]:
    with FakeArm(
        private_ip="127.0.0.1", on_vm_created=standin.boot, on_vm_deleted=standin.delete, rbac=function_app_roles()
    ) as server:
        standin.outbound = server.outbound
        yield server


@pytest.fixture
def storage(arm: FakeArm, azure_store: AzureStore, standin: VMStandIn) -> Iterator[StorageProxy]:
    """Storage's data plane as the VMs meet it (Entra tokens, data roles) and each VM's instance metadata."""
    azurite = str(azure_store.blob_service.url).rstrip("/")
    proxy = StorageProxy(arm.directory, account_id=STORAGE_ACCOUNT_ID, azurite=azurite, account_key=AZURITE_KEY)
    imds = ImdsServer(arm.directory, arm.vm_identities)
    cert = str(proxy.cert)
    standin.platform = lambda vm: {
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.authority(vm),
        "SSL_CERT_FILE": cert,
        "REQUESTS_CA_BUNDLE": cert,
    }
    try:
        yield proxy
    finally:
        imds.close()
        proxy.close()


@pytest.fixture
def store(azure_store: AzureStore) -> AzureStore:
    """The control plane's store on Azurite (its own tables and containers); the VMs never hold its key."""
    return azure_store


@pytest.fixture
def backend(tmp_path: Path, arm: FakeArm, store: AzureStore, storage: StorageProxy) -> VMClusterBackend:
    ctx = local_context(tmp_path / "control-plane")
    settings = dataclasses.replace(
        ctx.settings, azure=dataclasses.replace(ctx.settings.azure, storage_account_id=STORAGE_ACCOUNT_ID)
    )
    credential = StaticTokenCredential(arm.token)
    retry = RetrySettings(attempts=3, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)
    return VMClusterBackend(
        store,
        settings,
        compute_client_factory=lambda sub: make_compute_client(sub, credential, arm.base_url, polling_interval=0),
        network_client_factory=lambda sub: make_network_client(sub, credential, arm.base_url, polling_interval=0),
        msi_client_factory=lambda sub: make_msi_client(sub, credential, arm.base_url),
        authorization_client_factory=lambda sub: make_authorization_client(sub, credential, arm.base_url),
        vm_blob_endpoint=storage.url,
        retry=retry,
        scheduler_port=_free_port(),
        ready_timeout_s=240,
        silence_limit_s=120,
    )


def _spec(total: int = 4, **compute: Any) -> dict[str, Any]:
    document = tiny_spec()
    document["limits"] = {"max_total_trials": total, "max_concurrent_trials": 2, "timeout": 900, "trial_timeout": 240}
    document["compute"] = {
        "backend": "vmcluster",
        "location": LOC,
        "resource_group": RG,
        "subscription_id": SUB,
        "vm_size": "Standard_D4s_v5",  # CPU: no --gpus=all
        "n_workers": 2,
        "worker_class": "distributed.Nanny",
        "worker_options": {"nthreads": 1},
        **compute,
    }
    return load_spec(document).to_document()


def _apply(record: ExperimentRecord, state: dict[str, Any]) -> ExperimentRecord:
    return record.model_copy(update={"backend_state": {**record.backend_state, **state}})


def _run(
    backend: VMClusterBackend,
    standin: VMStandIn,
    record: ExperimentRecord,
    *,
    during: Callable[[ExperimentRecord, RunStatus], None] | None = None,
    timeout_s: float = 240,
) -> tuple[ExperimentRecord, RunStatus]:
    """provision -> submit -> poll until the run ends, as the state machine would drive it."""
    record = _apply(record, backend.provision(record))
    record = _apply(record, backend.submit(record))
    deadline = time.monotonic() + timeout_s
    while True:
        status = backend.poll(record)
        record = _apply(record, status.updates)
        if status.state not in {RunState.PENDING, RunState.RUNNING}:
            return record, status
        if during is not None:
            during(record, status)
        assert time.monotonic() < deadline, f"still {status.state}: {status.details}\n{standin.logs()}"
        time.sleep(0.5)


def _trials(backend: VMClusterBackend, experiment_id: str) -> list[TrialRecord]:
    return backend.store.list_trials(experiment_id)


def _new_record(backend: VMClusterBackend, spec: dict[str, Any]) -> ExperimentRecord:
    record = ExperimentRecord(id=f"exp-{uuid.uuid4().hex[:8]}", name="standin", spec=spec, backend="vmcluster")
    return backend.store.create_experiment(record)


@pytest.mark.slow  # boots stand-in VMs (~30 s, minutes under load); the vmcluster conformance cases keep its steps
def test_provision_boot_trials_outcome_model_teardown(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm, store: AzureStore, storage: StorageProxy
) -> None:
    # Azure applies a new role to Storage's data only after a while: here, not before a VM was refused (403).
    arm.directory.propagation_s = 3600

    def propagate_once_refused(current: ExperimentRecord, status: RunStatus) -> None:
        if arm.directory.denied:
            arm.directory.propagation_s = 0

    record = _new_record(backend, _spec(total=3))
    record, status = _run(backend, standin, record, during=propagate_once_refused)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    assert any("/containers/" in refused for refused in arm.directory.denied)  # refused at first, then retried
    assert status.outcome is not None
    outcome = status.outcome.model_dump(mode="json")
    assert outcome["status"] == "COMPLETED" and outcome["best"] is not None
    trials = _trials(backend, record.id)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state is TrialState.COMPLETED for t in trials)
    assert {t.engine for t in trials} == {"cpu"}  # pandas/scikit-learn on the stand-in
    handle = VMClusterHandle.of(record.backend_state)
    assert handle.workers_created and handle.evictions == 0

    # Three VMs booted from their own boot scripts: a head on-demand and two workers, in folders of
    # their own, on Python 3.12 (which wrote the trials), never with the control plane's packages.
    assert len(standin.containers) == 3 and all(c.starts == 1 for c in standin.containers.values())
    head = standin.containers[handle.scheduler_vm or ""]
    node = json.loads((head.cwd / "opt/rapids-hpo/node.json").read_text())
    assert node["credential"]["kind"] == "blob-identity" and node["credential"]["url"].startswith(storage.url)
    assert AZURITE_KEY not in json.dumps(node) and not any("AzureWebJobsStorage" in k for k in head.env)
    for vm in arm.of_type("virtualMachines"):  # customData holds no secret: no SAS, key or PEM of any kind
        boot = base64.b64decode(vm["properties"]["osProfile"]["customData"]).decode()
        assert not any(s in boot.lower() for s in ("sig=", "accountkey", "-----begin", "private key")), vm["name"]
        assert handle.identity and handle.identity.resource_id in vm["identity"]["userAssignedIdentities"]
    assert oct((head.cwd / "opt/rapids-hpo/tls/key.pem").stat().st_mode & 0o777) == "0o600"  # read from the area
    assert (head.cwd / "opt/rapids-hpo/code/shared/backends/vmcluster/head.py").exists()

    backend.finalize(record)
    assert store.list_artifacts(record.id, "model/")  # written by the head's refit, ingested with the outcome
    assert store.get_artifact(record.id, "driver/outcome.json")

    areas = [c.name for c in store.blob_service.list_containers(name_starts_with=f"{store.container_name}-run")]
    assert len(areas) == 1
    backend.teardown(record)
    assert arm.of_type("virtualMachines") == [] and arm.of_type("virtualNetworks") == []
    assert not any(standin.alive(name) for name in standin.containers)
    assert not store.blob_service.get_container_client(areas[0]).exists()  # nothing left for the VMs to reach
    assert not arm.of_type("userAssignedIdentities") and not arm.directory.assignments  # their identity is gone
    assert store.list_artifacts(record.id, "model/")


def seed_control_plane_network(arm: FakeArm) -> str:
    """The control-plane VNet as infra/modules/network.bicep leaves it (NAT gateway on the ``dask``
    subnet); returns the VNet's id."""
    network = f"/subscriptions/{SUB}/resourceGroups/{CONTROL_RG}/providers/Microsoft.Network"
    ip = arm.seed(f"{network}/publicIPAddresses/{CONTROL_VNET}-nat-ip", {"location": LOC, "sku": {"name": "Standard"}})
    nat = arm.seed(
        f"{network}/natGateways/{CONTROL_VNET}-nat",
        {"location": LOC, "sku": {"name": "Standard"}, "properties": {"publicIpAddresses": [{"id": ip["id"]}]}},
    )
    nsg = arm.seed(f"{network}/networkSecurityGroups/{CONTROL_VNET}-dask-nsg", {"location": LOC})
    subnet = {
        "addressPrefix": "10.50.1.0/24",
        "networkSecurityGroup": {"id": nsg["id"]},
        "natGateway": {"id": nat["id"]},
    }
    vnet = arm.seed(
        f"{network}/virtualNetworks/{CONTROL_VNET}",
        {
            "location": LOC,
            "properties": {
                "addressSpace": {"addressPrefixes": ["10.50.0.0/16"]},
                "subnets": [{"name": "dask", "properties": subnet}],
            },
        },
    )
    return str(vnet["id"])


@pytest.mark.slow  # ~15 s each; the lifecycle test above keeps the strict stand-ins in the default run
def test_boot_files_are_the_image_users_the_vms_have_a_way_out_and_pulls_are_retried(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm, store: AzureStore
) -> None:
    """Blockers 2 and 3 of issue 22, played as Azure and the image would: the container runs as uid 1001
    over files cloud-init wrote as root, and the experiment's new (private by default) subnet needs an
    outbound path before the VMs reach Storage at all. And the registry refuses each VM's first two pulls
    (a rate limit): the boot script pulls again after a pause."""
    standin.fail_pulls(2)
    record = _new_record(backend, _spec(total=2))
    record, status = _run(backend, standin, record)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    assert not standin.refused and len(standin.containers) == 3
    for name, container in standin.containers.items():
        assert standin.pulls(name) == 3 and standin.sleeps(name) == [15.0, 60.0]  # two pauses, then pulled
        assert container.user == (1001, 1001) and container.network == "the NAT gateway of its subnet"
        node = container.cwd / "opt/rapids-hpo/node.json"
        assert node.stat().st_uid == 1001 and oct(node.stat().st_mode & 0o777) == "0o600"
    [subnet] = arm.of_type("virtualNetworks")[0]["properties"]["subnets"]
    assert subnet["properties"]["natGateway"]["id"].lower() in {g["id"].lower() for g in arm.of_type("natGateways")}
    backend.teardown(record)
    assert not arm.of_type("natGateways") and not arm.of_type("publicIPAddresses")


@pytest.mark.slow  # ~25 s under load; the lifecycle test keeps the strict stand-ins in the default run
def test_a_container_that_never_starts_fails_the_run_at_the_first_poll_with_why(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm
) -> None:
    """Every pull of the image fails (Docker Hub's rate limit on the NAT gateway's one IP): no container
    starts, so nothing inside one can report. The boot script's host-side ``boot.py --never-started``
    writes a final note with the SAS it already holds, and the run fails at the first poll with the
    reason, not after the ready timeout with the VMs billed."""
    standin.fail_pulls(99)
    record = _new_record(backend, _spec(total=2))
    record = _apply(record, backend.provision(record))
    record = _apply(record, backend.submit(record))
    status = backend.poll(record)

    assert status.state is RunState.FAILED, (status, standin.logs())
    error = status.error or ""
    assert error.startswith("the head node could not start: dask-") and ": starting the container:" in error
    assert "docker run exited 125" in error and "every pull of the image failed" in error, error
    assert "(the container never started)" in error and "az vm boot-diagnostics get-boot-log" in error
    assert standin.refused and not standin.containers  # nothing ran on any VM
    backend.teardown(record)


@pytest.mark.slow  # ~15 s each; the lifecycle test above keeps the strict stand-ins in the default run
def test_a_run_on_the_control_planes_dask_subnet_needs_no_role_above_the_subnet(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm
) -> None:
    """Blocker 4: ``network.existing_vnet`` on the infra's NAT'd ``dask`` subnet, with only the roles the
    Bicep grants there (none on the VNet: RBAC flows down, never up)."""
    vnet_id = seed_control_plane_network(arm)
    record = _new_record(backend, _spec(total=2, network={"existing_vnet": vnet_id, "existing_subnet": "dask"}))
    record, status = _run(backend, standin, record)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    assert arm.calls("GET", f"/virtualNetworks/{CONTROL_VNET}/subnets/dask")  # the subnet, never its VNet
    assert {c.network for c in standin.containers.values()} == {"the NAT gateway of its subnet"}
    backend.teardown(record)
    assert arm.resource(vnet_id) is not None  # not ours: never deleted


@pytest.mark.slow
def test_killing_the_head_mid_run_loses_no_finished_trial(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm
) -> None:
    record = _new_record(backend, _spec(total=6))
    before: dict[int, float | None] = {}

    def kill_head_once(current: ExperimentRecord, status: RunStatus) -> None:
        done = [t for t in _trials(backend, current.id) if t.state is TrialState.COMPLETED]
        if done and not before:
            before.update({t.number: t.value for t in done})
            standin.crash(VMClusterHandle.of(current.backend_state).scheduler_vm or "")

    record, status = _run(backend, standin, record, during=kill_head_once, timeout_s=300)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    head = standin.containers[VMClusterHandle.of(record.backend_state).scheduler_vm or ""]
    assert head.starts == 2  # Docker's restart policy, played by the stand-in, started it again
    trials = {t.number: t for t in _trials(backend, record.id)}
    assert before and all(trials[n].state is TrialState.COMPLETED and trials[n].value == v for n, v in before.items())
    assert sum(t.state is TrialState.COMPLETED for t in trials.values()) >= 6 - 2  # interrupted ones retried once
    assert sorted(trials) == list(range(6))


@pytest.mark.slow
def test_an_evicted_spot_worker_is_replaced_and_its_trial_retried(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm
) -> None:
    record = _new_record(backend, _spec(total=4, spot=True))
    evicted: list[str] = []

    def evict_once(current: ExperimentRecord, status: RunStatus) -> None:
        running = [t for t in _trials(backend, current.id) if t.state is TrialState.RUNNING]
        if running and not evicted:
            workers = sorted(vm["name"] for vm in arm.of_type("virtualMachines") if "-worker-" in vm["name"])
            evicted.append(workers[0])
            arm.evict(workers[0])

    record, status = _run(backend, standin, record, during=evict_once, timeout_s=300)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    handle = VMClusterHandle.of(record.backend_state)
    assert handle.evictions == 1
    workers = [vm for vm in arm.of_type("virtualMachines") if "-worker-" in vm["name"]]
    assert len(workers) == 2 and evicted[0] not in {vm["name"] for vm in workers}
    assert all(vm["properties"]["priority"] == "Spot" for vm in workers)
    assert all(vm["properties"]["evictionPolicy"] == "Delete" for vm in workers)
    head = next(vm for vm in arm.of_type("virtualMachines") if vm["name"] == handle.scheduler_vm)
    assert head["properties"].get("priority") in {None, "Regular"}
    trials = _trials(backend, record.id)
    assert len(trials) == 4 and all(t.state is TrialState.COMPLETED for t in trials)


@pytest.mark.slow
def test_a_crashed_worker_comes_back_and_its_trial_is_retried(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm
) -> None:
    """A worker's container dies mid-trial (OOM kill, segfault): the VM stays, Docker's restart policy
    starts the worker again, Dask re-runs the trial; no VM is replaced and no eviction is counted."""
    record = _new_record(backend, _spec(total=4))
    crashed: list[str] = []

    def crash_once(current: ExperimentRecord, status: RunStatus) -> None:
        running = [t for t in _trials(backend, current.id) if t.state is TrialState.RUNNING]
        if running and not crashed:
            workers = sorted(name for name in standin.containers if "-worker-" in name)
            crashed.append(workers[0])
            standin.crash(workers[0])

    record, status = _run(backend, standin, record, during=crash_once, timeout_s=300)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    assert crashed and standin.containers[crashed[0]].starts == 2
    assert VMClusterHandle.of(record.backend_state).evictions == 0
    assert len([vm for vm in arm.of_type("virtualMachines") if "-worker-" in vm["name"]]) == 2
    trials = _trials(backend, record.id)
    assert len(trials) == 4 and all(t.state is TrialState.COMPLETED for t in trials)


@pytest.mark.slow  # boots stand-in VMs (~40 s); test_vmcluster_registry.py keeps the pull rules in the default run
def test_a_run_pulls_the_deployments_pinned_image_as_its_own_identity(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm, storage: StorageProxy
) -> None:
    """The deployment's project image (RAPIDS_HPO_IMAGE, by digest, in its registry): provision gives the
    experiment's identity AcrPull there, every VM signs Docker in as that identity and pulls the digest the
    build pushed, the run completes, and teardown takes the AcrPull with the identity."""
    from tests.rbac import registry_id
    from tests.registry_standin import RegistryStandIn

    registry = RegistryStandIn(
        arm.directory,
        registry_id=registry_id(SUB, CONTROL_RG),
        cert=storage.cert,  # the CA the VMs trust (their platform's SSL_CERT_FILE)
        key=storage.folder / "storage-key.pem",
    )
    try:
        digest = registry.push("rapids-hpo", "26.10")
        image = f"{registry.login_server}/rapids-hpo@{digest}"
        azure = dataclasses.replace(
            backend.settings.azure,
            registry=registry.login_server,
            registry_id=registry_id(SUB, CONTROL_RG),
            image=image,
        )
        backend.settings = dataclasses.replace(backend.settings, azure=azure)
        record = _new_record(backend, _spec(total=2))
        record, status = _run(backend, standin, record)

        assert status.state is RunState.SUCCEEDED, (status, standin.logs(), registry.refused)
        assert len(standin.containers) == 3 and registry.pulled == [f"rapids-hpo@{digest}"] * 3
        handle = VMClusterHandle.of(record.backend_state)
        assert handle.image == image and handle.identity and handle.identity.registry_assignment_id
        backend.teardown(record)
        assert not arm.directory.assignments and not arm.of_type("userAssignedIdentities")
    finally:
        registry.close()
