"""shared.backends.vmcluster: kwargs and plan (pure), VM creation and teardown through the real Azure SDKs
against tests/arm_server.py, and the driver and poll decisions on a real Dask cluster on this machine
standing in for the Azure VMs (same client code, same TLS credentials, same task keys)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster

from shared.backends.arm import RetrySettings
from shared.backends.network import (
    CREATED_BY,
    CREATED_BY_TAG,
    EXPERIMENT_TAG,
    INSTANCE_TAG,
    NetworkHandle,
    ensure_network,
    make_network_client,
    network_names,
)
from shared.backends.vm_teardown import CLUSTER_ID_TAG, make_compute_client
from shared.backends.vmcluster import VMClusterBackend, VMIdentity, bootscript, head, plan
from shared.backends.vmcluster.bootscript import detach_cluster, plan_vms
from shared.backends.vmcluster.head import probe_task, security_from
from shared.backends.vmcluster.settings import (
    NGC_MARKETPLACE_PLAN,
    NGC_VM_IMAGE,
    SECURITY_ARTIFACT,
    check_no_secrets,
    cluster_env,
    cluster_kwargs,
    estimated_node_hours,
)
from shared.compute_spec import NetworkSpec, VMClusterCompute
from shared.config import DRIVER_OUTCOME_ARTIFACT, Settings
from shared.context import Context
from shared.errors import BackendError
from shared.ports import ComputeBackend, RunState, RunStatus
from shared.records import ExperimentRecord, TrialState
from shared.spec import load_spec, read_document
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.control_plane import local_context

ROOT = Path(__file__).resolve().parents[1]
SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-hpo"
LOC = "westeurope"
RGP = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers"
EXP = "exp-vm-1"
OPEN = {"*", "Internet", "0.0.0.0/0", "Any"}


# ------------------------------------------------------------------------------------------ helpers
def _compute(**overrides: Any) -> VMClusterCompute:
    return VMClusterCompute(**{"location": LOC, "resource_group": RG, "subscription_id": SUB, **overrides})


def _handle(experiment_id: str = EXP) -> NetworkHandle:
    net = f"{RGP}/Microsoft.Network"
    return NetworkHandle(
        resource_group=RG,
        location=LOC,
        experiment_id=experiment_id,
        vnet_name=f"vnet-{experiment_id}",
        vnet_id=f"{net}/virtualNetworks/vnet-{experiment_id}",
        subnet_name=f"snet-{experiment_id}",
        subnet_id=f"{net}/virtualNetworks/vnet-{experiment_id}/subnets/snet-{experiment_id}",
        nsg_name=f"nsg-{experiment_id}",
        nsg_id=f"{net}/networkSecurityGroups/nsg-{experiment_id}",
        created=[],
    )


def _spec_document(tiny: bool = False, **compute: Any) -> dict[str, Any]:
    """examples/flights-rf.yaml on a vmcluster; ``tiny`` shrinks it to a few seconds of CPU."""
    document = read_document(ROOT / "examples" / "flights-rf.yaml")
    document["compute"] = {
        "backend": "vmcluster",
        "location": LOC,
        "resource_group": RG,
        "subscription_id": SUB,
        **compute,
    }
    if tiny:
        document["dataset"]["max_rows"] = 3000
        document["trial"]["cv_folds"] = 2
        document["search_space"]["n_estimators"] = {"type": "choice", "values": [5, 8, 10]}
        document["search_space"]["max_depth"] = {"type": "choice", "values": [3, 4, 5]}
        document["limits"].update(max_total_trials=3, max_concurrent_trials=2, timeout=600, trial_timeout=120)
    return load_spec(document).to_document()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def _apply(record: ExperimentRecord, status: RunStatus) -> ExperimentRecord:
    """Merge the handle updates a poll reports, as the state machine's poll step does."""
    if status.updates:
        return record.model_copy(update={"backend_state": {**record.backend_state, **status.updates}})
    return record


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment for Dask worker processes started inside (they open the store from it)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AzureWebJobsStorage", "AzureWebJobsStorage__accountName"):
            mp.delenv(key, raising=False)
        for key, value in values.items():
            mp.setenv(key, value)
        yield


def _docker_command(custom_data: str) -> str:
    cloud_init = base64.b64decode(custom_data).decode()
    [line] = [ln for ln in cloud_init.splitlines() if "docker run" in ln]
    return line


# Driver stand-ins for the poll-decision tests (module level: the workers import them by reference).
def sleepy_driver(experiment_id: str) -> str:
    deadline = time.monotonic() + 3  # Dask cannot stop a running thread: keep it short
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return experiment_id


def failing_driver(experiment_id: str) -> str:
    raise RuntimeError(f"driver for {experiment_id} crashed")


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def arm() -> Iterator[FakeArm]:
    with FakeArm() as server:
        yield server


@pytest.fixture
def retry() -> RetrySettings:
    return RetrySettings(attempts=4, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return local_context(tmp_path, poll_seconds=1)


def _backend(ctx: Context, arm: FakeArm, retry: RetrySettings, **kwargs: Any) -> VMClusterBackend:
    credential = StaticTokenCredential(arm.token)
    kwargs.setdefault("allow_local_store", True)
    return VMClusterBackend(
        ctx.store,
        ctx.settings,
        compute_client_factory=lambda sub: make_compute_client(sub, credential, arm.base_url, polling_interval=0),
        network_client_factory=lambda sub: make_network_client(sub, credential, arm.base_url, polling_interval=0),
        retry=retry,
        **kwargs,
    )


def _record(ctx: Context, experiment_id: str = EXP, *, tiny: bool = True, **state: Any) -> ExperimentRecord:
    record = ExperimentRecord(
        id=experiment_id,
        name="flights-rf",
        spec=_spec_document(tiny=tiny),
        backend="vmcluster",
        backend_state=state,
    )
    return ctx.store.create_experiment(record)


# --------------------------------------------------------------------------------- kwargs (pure)
def test_cluster_kwargs_default_to_the_seeds_mnmg_settings() -> None:
    env_vars = cluster_env(experiment_id=EXP, storage_account_name="sthpo", identity=None)
    kwargs = cluster_kwargs(_compute(), _handle(), experiment_id=EXP, env_vars=env_vars)

    assert kwargs["location"] == LOC and kwargs["resource_group"] == RG and kwargs["subscription_id"] == SUB
    assert kwargs["vnet"] == f"vnet-{EXP}"
    assert kwargs["subnet"] == _handle().subnet_id  # an ARM id: dask-cloudprovider puts it into each NIC
    assert kwargs["security_group"] == f"nsg-{EXP}"
    assert kwargs["vm_size"] == "Standard_NC8as_T4_v3" and kwargs["scheduler_vm_size"] is None
    assert kwargs["docker_image"].startswith("rapidsai/") and kwargs["docker_args"] == "--shm-size=256m"
    assert kwargs["worker_class"] == "dask_cuda.CUDAWorker"
    assert kwargs["worker_options"] == {"rmm_managed_memory": True}  # the keyword CUDAWorker(**opts) takes
    assert kwargs["n_workers"] == 2 and kwargs["disk_size"] == 100
    assert kwargs["security"] is True and kwargs["public_ingress"] is False and kwargs["auto_shutdown"] is True
    assert kwargs["bootstrap"] is False
    assert kwargs["vm_image"] == NGC_VM_IMAGE and kwargs["marketplace_plan"] == NGC_MARKETPLACE_PLAN
    assert kwargs["vm_image"]["sku"] == kwargs["marketplace_plan"]["name"]
    assert kwargs["scheduler_options"] == {"port": 8786}
    assert "extra_vm_options" not in kwargs
    assert kwargs["env_vars"]["RAPIDS_HPO_EXPERIMENT_ID"] == EXP
    assert kwargs["env_vars"]["AzureWebJobsStorage__accountName"] == "sthpo"
    assert "optuna" in kwargs["env_vars"]["EXTRA_PIP_PACKAGES"]
    json.dumps(kwargs)


def test_cluster_kwargs_overrides_marketplace_off_and_identity() -> None:
    compute = _compute(
        vm_size="Standard_NC24ads_A100_v4",
        scheduler_vm_size="Standard_NC4as_T4_v3",
        n_workers=4,
        disk_size=200,
        docker_image="myregistry/rapids:1",
        worker_options={"rmm-pool-size": "20GB", "device_memory_limit": 0.8},
        use_marketplace_image=False,
        security=False,
    )
    identity = VMIdentity(f"{RGP}/Microsoft.ManagedIdentity/userAssignedIdentities/id-dask", "client-123")
    env_vars = cluster_env(experiment_id=EXP, storage_account_name="sthpo", identity=identity)
    kwargs = cluster_kwargs(compute, _handle(), experiment_id=EXP, env_vars=env_vars, identity=identity)

    assert kwargs["vm_size"] == "Standard_NC24ads_A100_v4" and kwargs["scheduler_vm_size"] == "Standard_NC4as_T4_v3"
    assert (kwargs["n_workers"], kwargs["disk_size"], kwargs["docker_image"]) == (
        4,
        200,
        "myregistry/rapids:1",
    )
    assert kwargs["worker_options"] == {"rmm_pool_size": "20GB", "device_memory_limit": 0.8}
    assert kwargs["bootstrap"] is True and kwargs["marketplace_plan"] == {}
    assert kwargs["vm_image"]["publisher"] == "Canonical"
    assert kwargs["security"] is False and kwargs["public_ingress"] is False
    assert kwargs["extra_vm_options"] == {
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity.resource_id: {}}}
    }
    assert kwargs["env_vars"]["AZURE_CLIENT_ID"] == "client-123"
    assert kwargs["env_vars"]["AzureWebJobsStorage__clientId"] == "client-123"

    with pytest.raises(ValueError, match="--gpus=all"):
        cluster_kwargs(_compute(scheduler_vm_size="Standard_D4s_v5"), _handle(), experiment_id=EXP, env_vars={})
    with pytest.raises(ValueError, match="westeurope"):
        cluster_kwargs(_compute(location="eastus"), _handle(), experiment_id=EXP, env_vars={})


@pytest.mark.parametrize(
    "env_vars",
    [
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true"},
        {"STORAGE_KEY": "abc"},
        {"X": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0"},
        {"DATA_URL": "https://a.blob.core.windows.net/c?sv=2024&sig=abc"},
        {"AZURE_CLIENT_SECRET": "s"},
    ],
)
def test_secrets_never_reach_the_vms(env_vars: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="refusing"):
        check_no_secrets(env_vars)
    with pytest.raises(ValueError, match="refusing"):
        cluster_kwargs(_compute(), _handle(), experiment_id=EXP, env_vars=env_vars)


def test_azurevmcluster_accepts_the_kwargs_and_boots_the_vms_we_mean() -> None:
    """Every name is an AzureVMCluster/VMCluster/SpecCluster parameter, and dask-cloudprovider, given
    them (without touching Azure), names the VMs and renders the docker commands we intend."""
    import dask
    from dask_cloudprovider.azure import AzureVMCluster
    from dask_cloudprovider.generic.vmcluster import VMCluster
    from distributed.deploy.spec import SpecCluster

    env_vars = cluster_env(experiment_id=EXP, storage_account_name="sthpo", identity=None)
    kwargs = cluster_kwargs(_compute(), _handle(), experiment_id=EXP, env_vars=env_vars)
    accepted = {
        name for cls in (AzureVMCluster, VMCluster, SpecCluster) for name in inspect.signature(cls.__init__).parameters
    }
    assert set(kwargs) <= accepted, set(kwargs) - accepted

    before = {key: dask.config.get(key, None) for key in bootscript._TLS_CONFIG_KEYS}
    image_before = dict(dask.config.get("cloudprovider.azure.azurevm.vm_image"))
    assert image_before != NGC_VM_IMAGE
    security = security_from(head.new_credentials("c0ffee00", True))
    [scheduler] = plan_vms(kwargs, cluster_id="c0ffee00", security=security, scheduler_address=None)
    workers = plan_vms(
        kwargs, cluster_id="c0ffee00", security=security, scheduler_address="tls://10.0.0.4:8786", count=2
    )

    assert scheduler.name == "dask-c0ffee00-scheduler" and scheduler.size == "Standard_NC8as_T4_v3"
    assert len({w.name for w in workers}) == 2 and all(w.name.startswith("dask-c0ffee00-worker-") for w in workers)
    assert scheduler.plan == NGC_MARKETPLACE_PLAN and scheduler.image == NGC_VM_IMAGE and scheduler.disk_size == 100
    worker_run = _docker_command(workers[0].custom_data)
    assert "--gpus=all" in worker_run and "--shm-size=256m" in worker_run
    assert f'-e RAPIDS_HPO_EXPERIMENT_ID="{EXP}"' in worker_run
    assert '-e AzureWebJobsStorage__accountName="sthpo"' in worker_run
    assert kwargs["docker_image"] in worker_run
    assert '"cls": "dask_cuda.CUDAWorker", "opts": {"rmm_managed_memory": true' in worker_run
    assert "tls://10.0.0.4:8786" in worker_run
    assert "distributed.cli.dask_scheduler --port 8786" in _docker_command(scheduler.custom_data)
    cloud_init = base64.b64decode(workers[0].custom_data).decode()
    assert "shutdown -h now" in cloud_init  # auto_shutdown stops (not deletes) a VM: teardown deletes
    assert "apt-get install -y docker-ce" not in cloud_init  # bootstrap=False: the NGC image has Docker
    # The TLS config reaches the VMs (inside the Dask config env var), but this process's config is as
    # it was, and no cluster object is left for distributed's atexit hook to close.
    assert "DASK_INTERNAL_INHERIT_CONFIG" in worker_run
    assert {key: dask.config.get(key, None) for key in bootscript._TLS_CONFIG_KEYS} == before
    assert dask.config.get("cloudprovider.azure.azurevm.vm_image") == image_before
    assert not [c for c in SpecCluster._instances if isinstance(c, AzureVMCluster)]


def test_detach_makes_a_never_started_cluster_object_inert() -> None:
    from dask_cloudprovider.azure import AzureVMCluster
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster

    kwargs = cluster_kwargs(_compute(), _handle(), experiment_id=EXP, env_vars={})

    async def build() -> Any:
        with bootscript._isolated_dask_config():
            return AzureVMCluster(**kwargs, asynchronous=True)

    cluster = asyncio.run(build())
    assert cluster.status == Status.created and cluster in SpecCluster._instances
    detach_cluster(cluster)
    assert cluster.status == Status.closed and cluster not in SpecCluster._instances
    assert cluster.shutdown_on_close is False
    cluster.close()  # returns at once: no scale-down, no destroy_vm
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as running,
        pytest.raises(ValueError, match="never started"),
    ):
        detach_cluster(running)


def test_dask_cloudprovider_create_vm_bodies_are_rejected_by_arm_with_these_sdks(
    arm: FakeArm, retry: RetrySettings
) -> None:
    """Why create_vm is ours: AzureVM.create_vm passes snake_case dicts, which azure-mgmt-network 33 /
    azure-mgmt-compute 39 send verbatim, so ARM gets no properties.ipConfigurations."""
    from azure.core.exceptions import HttpResponseError

    credential = StaticTokenCredential(arm.token)
    compute_client = make_compute_client(SUB, credential, arm.base_url, polling_interval=0)
    network_client = make_network_client(SUB, credential, arm.base_url, polling_interval=0)
    handle = _handle()
    arm.seed(handle.nsg_id, {"location": LOC})
    arm.seed(handle.vnet_id, {"location": LOC, "properties": {"subnets": [{"name": handle.subnet_name}]}})
    kwargs = cluster_kwargs(_compute(), handle, experiment_id=EXP, env_vars={})

    async def dask_cloudprovider_create() -> None:
        from dask_cloudprovider.azure import AzureVMCluster

        with bootscript._isolated_dask_config():
            cluster = AzureVMCluster(**{**kwargs, "security": False}, asynchronous=True)
        try:
            cluster.quiet = True
            cluster.compute_client, cluster.network_client = compute_client, network_client
            await cluster.scheduler_class(**cluster.scheduler_options).create_vm()
        finally:
            detach_cluster(cluster)

    with pytest.raises(HttpResponseError, match="ipConfigurations"):
        asyncio.run(dask_cloudprovider_create())
    [nic_put] = arm.calls("PUT", "networkInterfaces")
    assert "ip_configurations" in nic_put.body and "properties" not in nic_put.body


def test_module_imports_stay_light_for_dask_workers() -> None:
    code = (
        "import sys, shared.backends.vmcluster\n"
        "heavy = ('azure', 'dask_cloudprovider', 'tenacity', 'distributed', 'optuna', 'pandas')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ plan and cost
def test_plan_for_the_default_vmcluster_spec() -> None:
    spec = load_spec(_spec_document())
    result = plan(spec, "exp-PLAN", storage_account_name="sthpo")

    json.dumps(result)
    network = result["network"]
    names = network_names("exp-PLAN")
    assert network["virtual_network"] == {"name": names.vnet, "create": True, "address_space": "10.0.0.0/16"}
    assert (network["subnet"]["name"], network["network_security_group"]["name"]) == (names.subnet, names.nsg)
    assert network["subnet"]["prefix"] == "10.0.0.0/24" and network["subnet"]["create"] is True
    nsg = network["network_security_group"]
    [rule] = nsg["rules"]  # the body ARM receives
    props = rule["properties"]
    assert props["destinationPortRanges"] == ["8786", "8787"] and props["access"] == "Allow"
    assert props["direction"] == "Inbound" and props["sourceAddressPrefix"] == "VirtualNetwork"
    assert not OPEN & {props.get("sourceAddressPrefix"), *(props.get("sourceAddressPrefixes") or [])}
    assert network["tags"] == {EXPERIMENT_TAG: "exp-PLAN", CREATED_BY_TAG: CREATED_BY}

    kwargs = result["cluster"]["kwargs"]
    assert kwargs["public_ingress"] is False and kwargs["vnet"] == network["virtual_network"]["name"]
    assert kwargs["subnet"].endswith(f"/virtualNetworks/{kwargs['vnet']}/subnets/{network['subnet']['name']}")
    assert kwargs["security_group"] == nsg["name"]
    assert kwargs["env_vars"]["AzureWebJobsStorage__accountName"] == "sthpo"
    assert result["cluster"]["vms"]["workers"]["count"] == 2
    # (2 workers + 1 scheduler) x flights-rf's timeout of 1800 s
    assert result["cost"] == {
        "nodes": 3,
        "hours": 0.5,
        "node_hours": 1.5,
        "basis": "limits.timeout",
        "max_node_hours": None,
    }
    assert any("terms accept --urn nvidia:ngc_azure_17_11:" in note for note in result["notes"])

    document = _spec_document(
        max_node_hours=1.0,
        network={
            "existing_vnet": "vnet-hub",
            "existing_subnet": "dask",
            "existing_security_group": "nsg-dask",
        },
    )
    document["limits"]["timeout"] = None
    spec = load_spec(document)
    result = plan(spec, "exp-PLAN")
    assert result["network"]["virtual_network"]["create"] is False
    assert result["network"]["network_security_group"] == {"name": "nsg-dask", "create": False, "rules": []}
    assert result["cluster"]["kwargs"]["subnet"].endswith("/virtualNetworks/vnet-hub/subnets/dask")
    assert result["cost"]["basis"].startswith("estimate")
    # 900 s start-up + ceil(10 trials / 2) waves x trial_timeout 300 s = 2400 s on 3 nodes
    assert result["cost"]["node_hours"] == 2.0
    assert any("exceeds max_node_hours" in note for note in result["notes"])
    with pytest.raises(ValueError, match="vmcluster"):
        plan(load_spec(ROOT / "examples" / "flights-rf.yaml"))


def test_estimated_node_hours_counts_the_scheduler() -> None:
    assert estimated_node_hours(_compute(n_workers=2), 3600) == 3.0
    assert estimated_node_hours(_compute(n_workers=5), 1800) == 3.0
    assert estimated_node_hours(_compute(), -5) == 0.0


# ------------------------------------------------------------------------- the whole run, end to end
def test_submit_poll_run_and_teardown_with_vms_on_fake_arm_and_dask_on_this_machine(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    """Provision and VM creation go through the real SDKs to the fake ARM; the scheduler address the
    fake NIC reports is a real TLS Dask cluster here, started with the credentials submit stored."""
    port = _free_port()
    arm.private_ip = "127.0.0.1"
    foreign_nic = arm.seed(
        f"{RGP}/Microsoft.Network/networkInterfaces/someone-else-nic",
        {
            "location": LOC,
            "tags": {"creator": "dask-cloudprovider", CLUSTER_ID_TAG: "ffffffff"},
            "properties": {"ipConfigurations": [{"name": "ip", "properties": {}}]},
        },
    )
    backend = _backend(ctx, arm, retry, scheduler_port=port, connect_timeout_s=3)
    assert isinstance(backend, ComputeBackend)
    record = _record(ctx)

    record = record.model_copy(update={"backend_state": backend.provision(record)})
    handle = NetworkHandle.model_validate(record.backend_state["network"])
    assert handle.created and backend.provision(record)["network"] == record.backend_state["network"]

    arm.clear_requests()
    submitted = backend.submit(record)
    cluster_id = submitted["cluster_id"]
    assert submitted["scheduler_address"] == f"tls://127.0.0.1:{port}"
    document = json.loads(ctx.store.get_secret(EXP, SECURITY_ARTIFACT))
    assert document["cluster_id"] == cluster_id and document["tls_key"].startswith("-----BEGIN")
    assert "BEGIN" not in json.dumps(submitted)  # the TLS key lives in the artifact, not the record
    [vm_put] = arm.calls("PUT", "virtualMachines/")
    assert vm_put.path.endswith(f"/virtualMachines/dask-{cluster_id}-scheduler")
    tags = {
        "creator": "dask-cloudprovider",
        CLUSTER_ID_TAG: cluster_id,
        EXPERIMENT_TAG: EXP,
        CREATED_BY_TAG: CREATED_BY,
    }
    assert vm_put.body["tags"] == tags
    assert vm_put.body["plan"] == NGC_MARKETPLACE_PLAN
    assert vm_put.body["properties"]["storageProfile"]["imageReference"]["offer"] == "ngc_azure_17_11"
    assert vm_put.body["properties"]["hardwareProfile"]["vmSize"] == "Standard_NC8as_T4_v3"
    docker = _docker_command(vm_put.body["properties"]["osProfile"]["customData"])
    assert f"--port {port}" in docker and f'RAPIDS_HPO_EXPERIMENT_ID="{EXP}"' in docker
    [nic_put] = arm.calls("PUT", "networkInterfaces/")
    assert nic_put.body["tags"] == tags
    [ip_config] = nic_put.body["properties"]["ipConfigurations"]
    assert ip_config["properties"]["subnet"]["id"] == handle.subnet_id
    assert "publicIPAddress" not in ip_config["properties"] and not arm.calls("PUT", "publicIPAddresses")

    # Idempotent: the recorded state is returned; a lost state reuses the credentials and the VM.
    arm.clear_requests()
    assert backend.submit(record.model_copy(update={"backend_state": submitted})) == submitted
    again = backend.submit(record)
    assert (again["cluster_id"], again["scheduler_address"]) == (cluster_id, submitted["scheduler_address"])
    assert not arm.calls("PUT")
    record = record.model_copy(update={"backend_state": submitted})

    # The scheduler VM is still booting: PENDING.
    status = backend.poll(record)
    assert status.state is RunState.PENDING and "not reachable yet" in status.details["waiting_for"]

    # "The VMs booted": a TLS cluster on the recorded port with the stored credentials.
    with (
        _env(RAPIDS_HPO_HOME=str(ctx.settings.home)),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=port,
            security=security_from(document),
            dashboard_address=None,
        ) as cluster,
    ):
        assert cluster.scheduler_address == submitted["scheduler_address"]
        arm.clear_requests()
        status = backend.poll(record)
        assert status.state is RunState.RUNNING and status.details["driver"] == "submitted", status
        record = _apply(record, status)
        assert record.backend_state["driver_key"] == f"driver-{EXP}" and record.backend_state["workers_created"]
        worker_puts = arm.calls("PUT", "virtualMachines/")
        assert len(worker_puts) == 2
        assert all(
            f"/virtualMachines/dask-{cluster_id}-worker-" in r.path and r.body["tags"] == tags for r in worker_puts
        )
        worker_docker = _docker_command(worker_puts[0].body["properties"]["osProfile"]["customData"])
        assert f"tls://127.0.0.1:{port}" in worker_docker and "dask_cuda.CUDAWorker" in worker_docker

        deadline = time.monotonic() + 120
        seen: list[str] = []
        while status.state in {RunState.PENDING, RunState.RUNNING}:
            assert time.monotonic() < deadline, f"driver still running: {status}"
            time.sleep(0.5)
            status = backend.poll(record)
            record = _apply(record, status)
            seen.append(repr(status.details.get("driver")))
        assert status.state is RunState.SUCCEEDED, (status, seen)
        assert len(arm.calls("PUT", "virtualMachines/")) == 2  # workers were created once

    outcome = json.loads(ctx.store.get_artifact(EXP, DRIVER_OUTCOME_ARTIFACT))
    assert outcome["status"] == "COMPLETED" and outcome["best"] is not None
    trials = ctx.store.list_trials(EXP)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state is not TrialState.RUNNING for t in trials)
    assert ctx.store.list_artifacts(EXP, "model/")
    assert backend.finalize(record) == {}

    # Teardown: everything the cluster-id/experiment tags (and the VM names, for disks) say, then the
    # network; the foreign NIC stays. VMs go before NICs and disks.
    assert len(arm.of_type("virtualMachines")) == 3 and len(arm.of_type("disks")) == 3
    arm.clear_requests()
    backend.teardown(record)
    assert arm.of_type("virtualMachines") == [] and arm.of_type("disks") == []
    assert [n["id"] for n in arm.of_type("networkInterfaces")] == [foreign_nic["id"]]
    assert arm.of_type("virtualNetworks") == [] and arm.of_type("networkSecurityGroups") == []
    kinds = [r.path.split("/")[-2] for r in arm.calls("DELETE")]
    assert kinds.index("networkInterfaces") > max(i for i, k in enumerate(kinds) if k == "virtualMachines")
    assert kinds.index("disks") > max(i for i, k in enumerate(kinds) if k == "virtualMachines")


# ------------------------------------------------------------------------------ poll decisions
@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


def _started(ctx: Context, address: str, experiment_id: str, **state: Any) -> ExperimentRecord:
    """A record as submit leaves it, for a plain-TCP scheduler at ``address``."""
    ctx.store.put_secret(experiment_id, SECURITY_ARTIFACT, json.dumps(head.new_credentials("c1", False)).encode())
    base = {
        "cluster_id": "c1",
        "scheduler_address": address,
        "submitted_at": _ago(0),
        "workers_created": True,
        "driver_restarts": 0,
    }
    return _record(ctx, experiment_id, **{**base, **state})


@pytest.mark.parametrize(
    ("status", "expected"),
    [("COMPLETED", RunState.SUCCEEDED), ("FAILED", RunState.FAILED), ("CANCELLED", RunState.CANCELLED)],
)
def test_poll_reports_the_outcome_artifact_without_asking_the_cluster(
    ctx: Context, arm: FakeArm, retry: RetrySettings, status: str, expected: RunState
) -> None:
    record = _record(ctx, cluster_id="c1", scheduler_address="tls://127.0.0.1:1", driver_key=f"driver-{EXP}")
    outcome = {
        "status": status,
        "reason": "r",
        "trials_done": 3,
        "best": None,
        "error": "boom" if status == "FAILED" else None,
    }
    ctx.store.put_artifact(EXP, DRIVER_OUTCOME_ARTIFACT, json.dumps(outcome).encode())
    result = _backend(ctx, arm, retry).poll(record)
    assert result.state is expected and result.details["outcome"] == outcome
    assert result.error == outcome["error"]
    assert arm.requests == []


def test_poll_reports_a_processing_driver_and_cancel_cancels_its_task(
    ctx: Context, arm: FakeArm, retry: RetrySettings, dask_cluster: LocalCluster
) -> None:
    backend = _backend(ctx, arm, retry, driver_function=sleepy_driver)
    record = _started(ctx, dask_cluster.scheduler_address, "exp-sleepy")

    first = backend.poll(record)
    assert first.state is RunState.RUNNING and first.details["driver"] == "submitted"
    record = _apply(record, first)
    key = record.backend_state["driver_key"]
    assert key == "driver-exp-sleepy"
    second = backend.poll(record)
    while second.details["driver"]["state"] != "processing":  # queued for a moment at most
        time.sleep(0.05)
        second = backend.poll(record)
    assert second.state is RunState.RUNNING and second.details["driver"]["worker"]
    assert arm.requests == []  # workers_created: no ARM call while running

    backend.cancel(record)
    with Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        deadline = time.monotonic() + 10
        while probe_task(client, key)["state"] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_poll_resubmits_a_lost_or_failed_driver_then_gives_up(
    ctx: Context, arm: FakeArm, retry: RetrySettings, dask_cluster: LocalCluster
) -> None:
    backend = _backend(ctx, arm, retry, driver_function=failing_driver)
    record = _started(
        ctx, dask_cluster.scheduler_address, "exp-lost", driver_key="driver-exp-lost"
    )  # unknown to the scheduler

    status = backend.poll(record)
    assert status.state is RunState.RUNNING and status.details["restarted"] is True
    assert "gone from the scheduler" in status.details["reason"]
    record = _apply(record, status)
    assert record.backend_state["driver_key"] == "driver-exp-lost-r1"
    assert record.backend_state["driver_restarts"] == 1

    # The resubmitted driver crashes; the next polls see it and resubmit once more, then give up.
    deadline = time.monotonic() + 30
    while record.backend_state["driver_restarts"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        record = _apply(record, status := backend.poll(record))
    assert record.backend_state["driver_key"] == "driver-exp-lost-r2"
    assert "crashed" in record.backend_state["last_error"] or "gone" in record.backend_state["last_error"]
    while status.state is RunState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        record = _apply(record, status := backend.poll(record))
    assert status.state is RunState.FAILED
    assert status.error is not None and "stopped without an outcome 3 times" in status.error


def test_poll_creates_only_the_worker_vms_the_cluster_lacks(
    ctx: Context, arm: FakeArm, retry: RetrySettings, dask_cluster: LocalCluster
) -> None:
    backend = _backend(ctx, arm, retry, driver_function=sleepy_driver)
    record = _started(ctx, dask_cluster.scheduler_address, "exp-reconcile", workers_created=False)
    record = record.model_copy(update={"backend_state": {**record.backend_state, **backend.provision(record)}})
    tags = {"creator": "dask-cloudprovider", CLUSTER_ID_TAG: "c1", EXPERIMENT_TAG: "exp-reconcile"}
    _seed_vm(arm, "dask-c1-worker-aaaaaaaa", tags)  # created by an earlier, interrupted poll
    failed = _seed_vm(arm, "dask-c1-worker-bbbbbbbb", tags)
    arm.resources[failed["id"].lower()]["properties"]["provisioningState"] = "Failed"
    arm.clear_requests()

    status = backend.poll(record)

    assert status.state is RunState.RUNNING and status.updates["workers_created"] is True
    [put] = arm.calls("PUT", "/virtualMachines/")  # 2 wanted, 1 healthy: one more, the failed one replaced
    assert put.path.rsplit("/", 1)[-1].startswith("dask-c1-worker-") and "aaaaaaaa" not in put.path
    assert "bbbbbbbb" not in put.path


def test_poll_waits_for_workers_to_join_before_starting_the_driver(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    from distributed import Scheduler

    async def scenario() -> RunStatus:
        async with Scheduler(host="127.0.0.1", port=0, dashboard_address=":0") as scheduler:
            record = _started(ctx, scheduler.address, "exp-empty")
            return await asyncio.to_thread(_backend(ctx, arm, retry, connect_timeout_s=3).poll, record)

    status = asyncio.run(scenario())
    assert status.state is RunState.PENDING and status.details["waiting_for"] == "waiting for Dask workers to join"


def test_unreachable_scheduler_is_running_until_a_bound_then_failed(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry, connect_timeout_s=1, unreachable_limit_s=600, ready_timeout_s=900)
    closed = f"tcp://127.0.0.1:{_free_port()}"
    ctx.store.put_secret(EXP, SECURITY_ARTIFACT, json.dumps(head.new_credentials("c1", False)).encode())
    base = {"cluster_id": "c1", "scheduler_address": closed, "workers_created": True}
    record = _record(ctx, **base, submitted_at=_ago(0), driver_key=f"driver-{EXP}")

    status = backend.poll(record)
    assert status.state is RunState.RUNNING and status.details["scheduler"] == "unreachable"
    since = status.updates["unreachable_since"]
    record = _apply(record, status)
    assert backend.poll(record).updates["unreachable_since"] == since  # kept, not reset

    late = record.model_copy(update={"backend_state": {**record.backend_state, "unreachable_since": _ago(601)}})
    failed = backend.poll(late)
    assert failed.state is RunState.FAILED and "unreachable for 60" in (failed.error or "")

    starting = record.model_copy(update={"backend_state": {**base, "submitted_at": _ago(0)}})
    assert backend.poll(starting).state is RunState.PENDING
    stuck = record.model_copy(update={"backend_state": {**base, "submitted_at": _ago(901), "last_error": "quota"}})
    result = backend.poll(stuck)
    assert result.state is RunState.FAILED and "not ready" in (result.error or "") and "quota" in (result.error or "")
    backend.cancel(record)  # unreachable: nothing to cancel, no error


def test_submit_refuses_storage_the_vms_cannot_use(ctx: Context, arm: FakeArm, retry: RetrySettings) -> None:
    record = _record(ctx, network=_handle().model_dump(mode="json"))
    with pytest.raises(BackendError, match="identity-based Azure Storage"):
        _backend(ctx, arm, retry, allow_local_store=False).submit(record)
    account = Context(settings=Settings("", "sthpo", ctx.settings.home, 1, 900), store=ctx.store, queues=ctx.queues)
    with pytest.raises(BackendError, match="managed identity"):
        _backend(account, arm, retry, allow_local_store=False).submit(record)
    assert arm.requests == [] and not ctx.store.list_artifacts(EXP, "cluster/")


def test_arm_failures_creating_the_scheduler_are_retried_and_a_rerun_reuses_what_exists(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry)
    record = _record(ctx)
    record = record.model_copy(update={"backend_state": backend.provision(record)})

    arm.fail("PUT", "/virtualMachines/", 429, "TooManyRequests", headers={"Retry-After": "0"})
    first = backend.submit(record)  # one 429, retried by arm_call
    assert len(arm.calls("PUT", "/virtualMachines/")) == 2

    lost = _record(ctx, "exp-vm-2")
    lost = lost.model_copy(update={"backend_state": backend.provision(lost)})
    arm.fail("PUT", "/virtualMachines/", 500, "InternalServerError", times=4)
    with pytest.raises(BackendError, match="failed after 4 attempts: 500"):
        backend.submit(lost)  # the run fails here; a sweep re-drive would call submit again
    cluster_id = json.loads(ctx.store.get_secret("exp-vm-2", SECURITY_ARTIFACT))["cluster_id"]
    again = backend.submit(lost)
    assert again["cluster_id"] == cluster_id != first["cluster_id"]
    names = sorted(r["name"] for r in arm.of_type("networkInterfaces"))
    assert names == sorted(f"dask-{c}-scheduler-nic" for c in (first["cluster_id"], cluster_id))  # no stray NIC

    # A scheduler VM whose creation failed is PUT again under its name, not reused.
    vm_id = f"{RGP}/Microsoft.Compute/virtualMachines/dask-{cluster_id}-scheduler"
    arm.resources[vm_id.lower()]["properties"]["provisioningState"] = "Failed"
    arm.clear_requests()
    assert backend.submit(lost)["cluster_id"] == cluster_id
    assert [r.path for r in arm.calls("PUT", "/virtualMachines/")] == [vm_id]


# ------------------------------------------------------------------------------ teardown by tag
def _seed_vm(arm: FakeArm, name: str, tags: dict[str, str], *, public_ip: bool = False) -> dict[str, Any]:
    nic_props: dict[str, Any] = {"name": "ip", "properties": {}}
    if public_ip:
        pip = arm.seed(f"{RGP}/Microsoft.Network/publicIPAddresses/{name}-ip", {"location": LOC, "tags": tags})
        nic_props["properties"]["publicIPAddress"] = {"id": pip["id"]}
    nic = arm.seed(
        f"{RGP}/Microsoft.Network/networkInterfaces/{name}-nic",
        {"location": LOC, "tags": tags, "properties": {"ipConfigurations": [nic_props]}},
    )
    return arm.seed(
        f"{RGP}/Microsoft.Compute/virtualMachines/{name}",
        {
            "location": LOC,
            "tags": tags,
            "properties": {"networkProfile": {"networkInterfaces": [{"id": nic["id"]}]}},
        },
    )


def test_teardown_deletes_by_tag_in_dependency_order_and_treats_404_as_done(
    ctx: Context, arm: FakeArm, retry: RetrySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPIDS_HPO_INSTANCE_ID", "sthpoprod")
    ours = {
        "creator": "dask-cloudprovider",
        CLUSTER_ID_TAG: "c0ffee00",
        EXPERIMENT_TAG: EXP,
        CREATED_BY_TAG: CREATED_BY,
        INSTANCE_TAG: "sthpoprod",
    }
    crashed = {
        **ours,
        CLUSTER_ID_TAG: "0badc0de",
    }  # a cluster from an attempt whose id never reached the record
    other_tool = {"creator": "dask-cloudprovider", CLUSTER_ID_TAG: "ffffffff"}
    gone_exp = {**ours, CLUSTER_ID_TAG: "deadbeef", EXPERIMENT_TAG: "exp-gone"}
    # Another control plane's cluster in the same resource group (dev beside prod): never an orphan of ours.
    other_plane = {**gone_exp, CLUSTER_ID_TAG: "0dd0dd00", EXPERIMENT_TAG: "exp-of-dev", INSTANCE_TAG: "sthpodev"}
    untagged = {k: v for k, v in gone_exp.items() if k != INSTANCE_TAG} | {CLUSTER_ID_TAG: "0000aaaa"}
    _seed_vm(arm, "dask-c0ffee00-scheduler", ours, public_ip=True)
    _seed_vm(arm, "dask-c0ffee00-worker-aaaaaaaa", ours)
    _seed_vm(arm, "dask-c0ffee00-worker-bbbbbbbb", ours)
    _seed_vm(arm, "dask-0badc0de-scheduler", crashed)
    leftover = arm.seed(f"{RGP}/Microsoft.Compute/disks/dask-c0ffee00-worker-cccccccc_OsDisk_1_abc", {"location": LOC})
    _seed_vm(arm, "dask-ffffffff-scheduler", other_tool)
    _seed_vm(arm, "dask-deadbeef-scheduler", gone_exp)
    _seed_vm(arm, "dask-0dd0dd00-scheduler", other_plane)
    _seed_vm(arm, "dask-0000aaaa-scheduler", untagged)
    unrelated_disk = arm.seed(f"{RGP}/Microsoft.Compute/disks/data-disk", {"location": LOC})
    foreign = {
        r["id"]
        for kind in ("virtualMachines", "networkInterfaces", "disks")
        for r in arm.of_type(kind)
        if any(c in r["name"] for c in ("ffffffff", "deadbeef", "0dd0dd00", "0000aaaa"))
    }

    backend = _backend(ctx, arm, retry)
    record = _record(ctx, cluster_id="c0ffee00")
    record = record.model_copy(update={"backend_state": {**record.backend_state, **backend.provision(record)}})
    arm.fail("DELETE", "dask-c0ffee00-worker-aaaaaaaa-nic", 404, "NotFound")  # someone deleted it already
    arm.fail(
        "DELETE",
        "virtualMachines/dask-c0ffee00-scheduler",
        429,
        "TooManyRequests",
        headers={"Retry-After": "0"},
    )
    arm.clear_requests()

    backend.teardown(record)

    left = {
        r["id"]
        for kind in ("virtualMachines", "networkInterfaces", "publicIPAddresses", "disks")
        for r in arm.of_type(kind)
    }
    assert left == foreign | {
        unrelated_disk["id"],
        f"{RGP}/Microsoft.Network/networkInterfaces/dask-c0ffee00-worker-aaaaaaaa-nic",
    }
    assert leftover["id"] not in left
    deletes = [r.path for r in arm.calls("DELETE")]
    order = {
        "virtualMachines": 0,
        "networkInterfaces": 1,
        "publicIPAddresses": 2,
        "disks": 3,
        "virtualNetworks": 4,
        "networkSecurityGroups": 5,
    }
    stages = [order[p.split("/")[-2]] for p in deletes]
    assert stages == sorted(stages)
    assert sum(p.endswith("/dask-c0ffee00-scheduler") for p in deletes) == 2  # 429, then again
    assert arm.of_type("virtualNetworks") == [] and arm.of_type("networkSecurityGroups") == []

    arm.clear_requests()
    backend.teardown(record)  # idempotent: nothing of ours left, only listings (and the 404 NIC, as gone)
    assert {p.split("/")[-2] for p in (r.path for r in arm.calls("DELETE"))} <= {
        "networkInterfaces",
        "virtualNetworks",
        "networkSecurityGroups",
    }

    orphans = backend.find_orphans({EXP}, resource_group=RG, subscription_id=SUB)
    assert [(o.experiment_id, o.cluster_id) for o in orphans] == [("exp-gone", "deadbeef")]
    [orphan] = orphans
    assert len(orphan.resources.vms) == 1 and len(orphan.resources.nics) == 1 and len(orphan.resources.disks) == 1
    deleted = backend.delete_orphans(orphans, subscription_id=SUB)
    assert len(deleted) == 3
    assert {r["name"] for r in arm.of_type("virtualMachines")} == {
        "dask-ffffffff-scheduler",
        "dask-0dd0dd00-scheduler",
        "dask-0000aaaa-scheduler",
    }
    assert backend.find_orphans({EXP}, resource_group=RG, subscription_id=SUB) == []
    monkeypatch.delenv("RAPIDS_HPO_INSTANCE_ID")
    with pytest.raises(BackendError, match="RAPIDS_HPO_INSTANCE_ID"):
        backend.find_orphans({EXP}, resource_group=RG, subscription_id=SUB)


def test_timer_sweep_deletes_orphaned_networks_and_clusters_by_tag(
    ctx: Context, arm: FakeArm, retry: RetrySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.handlers import sweep_orphans

    backend = _backend(ctx, arm, retry)
    ctx.backends["vmcluster"] = backend
    network_client = make_network_client(SUB, StaticTokenCredential(arm.token), arm.base_url, polling_interval=0)
    live = _record(ctx, "exp-live")

    def network(experiment_id: str, instance: str) -> None:
        tags = {INSTANCE_TAG: instance}
        ensure_network(
            network_client,
            resource_group=RG,
            location="eastus",
            experiment_id=experiment_id,
            spec=NetworkSpec(),
            tags=tags,
            retry=retry,
        )

    network("exp-live", "sthpoprod")
    network("exp-gone", "sthpoprod")
    network("exp-of-dev", "sthpodev")  # another control plane's, in the same resource group
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", RG)
    arm.clear_requests()
    assert sweep_orphans(ctx) == []  # no instance id configured: the sweep is off
    assert arm.requests == []
    monkeypatch.setenv("RAPIDS_HPO_INSTANCE_ID", "sthpoprod")
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
    assert sweep_orphans(ctx) == []  # not configured for Azure: touches nothing
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)
    deleted = sweep_orphans(ctx)
    gone = network_names("exp-gone")
    assert {d.rsplit("/", 1)[1] for d in deleted} == {gone.vnet, gone.nsg}
    kept = {network_names(live.id).vnet, network_names("exp-of-dev").vnet}
    assert {r["name"] for r in arm.of_type("virtualNetworks")} == kept
    assert sweep_orphans(ctx) == []  # idempotent


def test_disk_size_beyond_what_the_vms_accept_is_a_spec_error_naming_the_field(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    """dask-cloudprovider raised ValueError above 1023 GB (an event retried until poisoned); now the
    spec refuses it (422 over HTTP), and a record stored before the rule fails with a BackendError."""
    from shared.spec import SpecError

    with pytest.raises(SpecError) as info:
        _spec_document(disk_size=1024)
    assert [e["loc"] for e in info.value.errors] == ["compute.disk_size"]
    assert _compute(disk_size=1023).disk_size == 1023
    record = _record(ctx)
    old = record.model_copy(update={"spec": {**record.spec, "compute": {**record.spec["compute"], "disk_size": 4095}}})
    with pytest.raises(BackendError, match="disk_size") as raised:
        _backend(ctx, arm, retry).provision(old)
    assert raised.value.retryable is False
