"""shared.backends.vmcluster: kwargs and plan (pure); provision, submit, poll, cancel and teardown through
the real Azure SDKs against tests/arm_server.py, the compute area of a local store. No Dask here:
the control plane never talks to the cluster (the cluster itself: tests/test_vmcluster_standin.py)."""

from __future__ import annotations

import base64
import io
import json
import shlex
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shared.backends.arm import RetrySettings
from shared.backends.vmcluster import VMClusterBackend, VMClusterHandle, VMIdentity, plan
from shared.backends.vmcluster.exchange import CODE_BLOB, HEARTBEAT_ARTIFACT
from shared.backends.vmcluster.identity import make_authorization_client, make_msi_client
from shared.backends.vmcluster.network import NetworkHandle, ensure_network, make_network_client
from shared.backends.vmcluster.network_layout import (
    CREATED_BY,
    CREATED_BY_TAG,
    EXPERIMENT_TAG,
    INSTANCE_TAG,
    network_names,
)
from shared.backends.vmcluster.section import NetworkSpec, VMClusterCompute
from shared.backends.vmcluster.settings import (
    NGC_MARKETPLACE_PLAN,
    NGC_VM_IMAGE,
    SECURITY_ARTIFACT,
    check_no_secrets,
    cluster_env,
    cluster_kwargs,
    is_gpu_size,
)
from shared.backends.vmcluster.vm_teardown import CLUSTER_ID_TAG, make_compute_client
from shared.config import DRIVER_OUTCOME_ARTIFACT, AzureSettings
from shared.context import Context
from shared.errors import BackendError
from shared.ports import RunState, RunStatus
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, TrialState
from shared.spec import load_spec, read_document
from shared.store.compute import FolderArea
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.control_plane import local_context
from tests.rbac import function_app_rbac

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


def _merge(record: ExperimentRecord, update: dict[str, Any]) -> ExperimentRecord:
    """Merge a step's handle update (the fields it changed), as the state machine does."""
    return record.model_copy(update={"backend_state": {**record.backend_state, **update}})


def _apply(record: ExperimentRecord, status: RunStatus) -> ExperimentRecord:
    """Merge the handle updates a poll reports, as the state machine's poll step does."""
    return _merge(record, status.updates)


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def arm() -> Iterator[FakeArm]:
    """The ARM stand-in, holding the Function App to the Bicep's role assignments in this group."""
    with FakeArm(rbac=function_app_rbac(SUB, RG)) as server:
        yield server


@pytest.fixture
def retry() -> RetrySettings:
    return RetrySettings(attempts=4, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return local_context(tmp_path, poll_seconds=1)


def _backend(ctx: Context, arm: FakeArm, retry: RetrySettings, **kwargs: Any) -> VMClusterBackend:
    credential = StaticTokenCredential(arm.token)
    return VMClusterBackend(
        ctx.store,
        ctx.settings,
        compute_client_factory=lambda sub: make_compute_client(sub, credential, arm.base_url, polling_interval=0),
        network_client_factory=lambda sub: make_network_client(sub, credential, arm.base_url, polling_interval=0),
        msi_client_factory=lambda sub: make_msi_client(sub, credential, arm.base_url),
        authorization_client_factory=lambda sub: make_authorization_client(sub, credential, arm.base_url),
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
    env_vars = cluster_env(experiment_id=EXP)
    kwargs = cluster_kwargs(_compute(), _handle(), experiment_id=EXP, env_vars=env_vars)

    assert kwargs["location"] == LOC and kwargs["resource_group"] == RG and kwargs["subscription_id"] == SUB
    assert kwargs["vnet"] == f"vnet-{EXP}"
    assert kwargs["subnet"] == _handle().subnet_id  # an ARM id: dask-cloudprovider puts it into each NIC
    assert kwargs["security_group"] == f"nsg-{EXP}"
    # The head runs the scheduler and the driver only: a CPU size unless the spec says otherwise.
    assert kwargs["vm_size"] == "Standard_NC8as_T4_v3" and kwargs["scheduler_vm_size"] == "Standard_D8s_v5"
    assert kwargs["docker_image"] == "rapidsai/base:26.10-cuda12-py3.12"  # CUDA major only since RAPIDS 25.12
    assert kwargs["docker_args"] == "--shm-size=1g --ulimit=memlock=-1 --ulimit=stack=67108864"  # RAPIDS' advice
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
    assert not any("Storage" in k or "CLIENT" in k for k in kwargs["env_vars"])  # the VMs hold a SAS only
    assert "optuna" in kwargs["env_vars"]["EXTRA_PIP_PACKAGES"] and kwargs["spot"] is False
    json.dumps(kwargs)


def test_gpu_sizes_the_image_cannot_drive_are_refused() -> None:
    """NV-series GPUs need NVIDIA's GRID driver (not promised by the NGC image); plain Ubuntu has no NVIDIA
    driver at all. Both would boot, bill, and fail at ``--gpus=all``."""
    with pytest.raises(ValueError, match=r"vm_size: Standard_NV36ads_A10_v5 is an NV-series .*GRID"):
        _compute(vm_size="Standard_NV36ads_A10_v5")
    with pytest.raises(ValueError, match=r"scheduler_vm_size: .*NV-series"):
        _compute(scheduler_vm_size="Standard_NV36ads_A10_v5")
    with pytest.raises(ValueError, match="no NVIDIA driver"):
        _compute(vm_size="Standard_NC24ads_A100_v4", use_marketplace_image=False)
    assert is_gpu_size("Standard_NV36ads_A10_v5") and is_gpu_size("standard_nd96asr_v4")
    # Nor does the plan offer them as alternatives.
    from shared.cost.catalogue import load_catalogue
    from shared.cost.estimate import CANDIDATE_SIZES, candidate_estimates

    assert "Standard_NV36ads_A10_v5" in CANDIDATE_SIZES
    compared = {row.vm_size for row in candidate_estimates(load_spec(_spec_document()), load_catalogue())}
    assert compared and not {size for size in compared if "_NV" in size}
    assert not is_gpu_size("Standard_D4s_v5") and not is_gpu_size("Standard_DC4s_v3")


def test_cluster_kwargs_overrides_marketplace_off_and_identity() -> None:
    compute = _compute(
        vm_size="Standard_D16s_v5",
        scheduler_vm_size="Standard_D4s_v5",
        n_workers=4,
        disk_size=200,
        docker_image="myregistry/rapids:1",
        worker_options={"rmm-pool-size": "20GB", "device_memory_limit": 0.8},
        use_marketplace_image=False,
        security=False,
    )
    identity = VMIdentity(f"{RGP}/Microsoft.ManagedIdentity/userAssignedIdentities/id-dask", "client-123")
    env_vars = cluster_env(experiment_id=EXP)
    kwargs = cluster_kwargs(compute, _handle(), experiment_id=EXP, env_vars=env_vars, identity=identity)

    assert kwargs["vm_size"] == "Standard_D16s_v5" and kwargs["scheduler_vm_size"] == "Standard_D4s_v5"
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

    cpu_head = cluster_kwargs(_compute(scheduler_vm_size="Standard_D4s_v5"), _handle(), experiment_id=EXP, env_vars={})
    assert cpu_head["scheduler_vm_size"] == "Standard_D4s_v5"  # the head runs no GPU code (test_a_cpu_head_...)
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


# ------------------------------------------------------------------------------------ plan and cost
def test_plan_for_the_default_vmcluster_spec() -> None:
    spec = load_spec(_spec_document())
    result = plan(spec, "exp-PLAN")

    json.dumps(result)
    network = result["network"]
    names = network_names("exp-PLAN")
    assert network["virtual_network"] == {"name": names.vnet, "create": True, "address_space": "10.0.0.0/16"}
    assert (network["subnet"]["name"], network["network_security_group"]["name"]) == (names.subnet, names.nsg)
    assert network["subnet"]["prefix"] == "10.0.0.0/24" and network["subnet"]["create"] is True
    nsg = network["network_security_group"]
    allow, deny = nsg["rules"]  # the bodies ARM receives: the subnet may, no one else may
    props = allow["properties"]
    assert props["destinationPortRanges"] == ["8786", "8787"] and props["access"] == "Allow"
    assert props["direction"] == "Inbound" and props["sourceAddressPrefix"] == "10.0.0.0/24"
    assert deny["properties"]["access"] == "Deny" and deny["properties"]["sourceAddressPrefix"] == "*"
    assert deny["properties"]["priority"] > props["priority"]
    assert network["tags"] == {EXPERIMENT_TAG: "exp-PLAN", CREATED_BY_TAG: CREATED_BY}

    kwargs = result["cluster"]["kwargs"]
    assert kwargs["public_ingress"] is False and kwargs["vnet"] == network["virtual_network"]["name"]
    assert kwargs["subnet"].endswith(f"/virtualNetworks/{kwargs['vnet']}/subnets/{network['subnet']['name']}")
    assert kwargs["security_group"] == nsg["name"]
    assert result["cluster"]["vms"]["workers"]["count"] == 2
    assert result["cluster"]["vms"]["workers"]["priority"] == "Regular"
    assert any("never connects to the cluster" in note for note in result["notes"])
    # The way out of a private-by-default subnet, the image and its user, what the head runs.
    assert network["subnet"]["outbound"] == f"NAT gateway {names.nat}"
    assert network["nat_gateway"] == {"name": names.nat, "create": True, "sku": "Standard", "public_ip": names.nat_ip}
    assert any(f"NAT gateway {names.nat}" in note and "private by default" in note for note in result["notes"])
    assert any("rapidsai/base:26.10-cuda12-py3.12" in n and "uid 1001" in n for n in result["notes"])
    assert any("--shm-size=1g --ulimit=memlock=-1 --ulimit=stack=67108864" in n for n in result["notes"])
    head_note = next(note for note in result["notes"] if note.startswith("The head is"))
    assert "Standard_D8s_v5 (no GPU, none needed)" in head_note and "the refit run on workers" in head_note
    assert result["cluster"]["vms"]["scheduler"]["size"] == "Standard_D8s_v5"
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


def test_billing_counts_the_scheduler_and_the_start_up() -> None:
    def profile(**compute: Any) -> Any:
        spec = load_spec(_spec_document(**compute))
        return spec.compute.billing(spec)

    assert profile(n_workers=2).node_hours(3600, overheads=False) == 3.0
    assert profile(n_workers=5).node_hours(1800, overheads=False) == 3.0
    assert profile().node_hours(-5, overheads=False) == 0.0
    assert profile(n_workers=2).node_hours(0) == 3 * 900 / 3600  # the VMs bill while they boot
    spot = profile(n_workers=3, spot=True, scheduler_vm_size="Standard_NC4as_T4_v3")
    assert [(g.role, g.count, g.tier.value) for g in spot.groups] == [("workers", 3, "spot"), ("scheduler", 1, "payg")]
    assert spot.groups[1].vm_size == "Standard_NC4as_T4_v3" and spot.trial_per_gpu


# ------------------------------------------------------------------------ poll, from storage only
def _submitted(
    ctx: Context, arm: FakeArm, retry: RetrySettings, backend: VMClusterBackend, experiment_id: str = EXP
) -> ExperimentRecord:
    record = _record(ctx, experiment_id)
    record = _merge(record, backend.provision(record))
    return _merge(record, backend.submit(record))


def _area(ctx: Context, experiment_id: str = EXP) -> FolderArea:
    """The experiment's compute area, as the compute sees it (a local store's: a folder)."""
    return FolderArea(ctx.store.root / "compute" / experiment_id)  # type: ignore[attr-defined]


def test_provision_puts_the_spec_and_our_code_in_the_experiments_container(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry)
    record = _record(ctx)
    update = backend.provision(record)
    handle = VMClusterHandle.of(update)
    assert handle.network is not None and handle.network.created and handle.area
    area = _area(ctx)
    assert json.loads(area.get("experiment.json"))["spec"] == record.run_spec.model_dump(mode="json")  # what it reads
    with zipfile.ZipFile(io.BytesIO(area.get(CODE_BLOB))) as archive:
        names = set(archive.namelist())
    assert {"shared/backends/vmcluster/head.py", "gpu_jobs/train.py"} <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert backend.provision(_merge(record, update)) == {}  # idempotent: nothing changed


def test_submit_creates_the_head_on_demand_with_its_boot_script_and_keeps_secrets_apart(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry, scheduler_port=18786)
    record = _submitted(ctx, arm, retry, backend)
    handle = VMClusterHandle.of(record.backend_state)
    assert handle.scheduler_address == "tls://10.0.0.4:18786" and handle.cluster_id
    document = json.loads(ctx.store.get_secret(EXP, SECURITY_ARTIFACT))
    assert document["cluster_id"] == handle.cluster_id and document["tls"]["key"].startswith("-----BEGIN")
    assert "BEGIN" not in json.dumps(record.backend_state)  # the TLS key is a secret, not in the record
    [vm_put] = arm.calls("PUT", "virtualMachines/")
    assert vm_put.path.endswith(f"/virtualMachines/dask-{handle.cluster_id}-scheduler")
    props = vm_put.body["properties"]
    assert "priority" not in props  # the head stays on-demand, Spot or not
    assert vm_put.body["plan"] == NGC_MARKETPLACE_PLAN and props["hardwareProfile"]["vmSize"] == "Standard_D8s_v5"
    assert vm_put.body["tags"][CLUSTER_ID_TAG] == handle.cluster_id and vm_put.body["tags"][EXPERIMENT_TAG] == EXP
    cloud_init = yaml.safe_load(base64.b64decode(props["osProfile"]["customData"]))
    files = {f["path"]: f for f in cloud_init["write_files"]}
    node = json.loads(files["/opt/rapids-hpo/node.json"]["content"])
    assert node["role"] == "head" and node["scheduler_port"] == 18786 and node["experiment_id"] == EXP
    assert node["credential"]["experiment_id"] == EXP and node["credential"]["url"] == str(_area(ctx).root)
    assert not any("/tls/" in path for path in files)  # the TLS key is in the area, never in customData
    tls = json.loads((_area(ctx).root / "compute" / "tls.json").read_text())
    assert tls == document["tls"] and "BEGIN" not in base64.b64decode(props["osProfile"]["customData"]).decode()
    owner, pull, line = cloud_init["runcmd"]
    assert "docker pull rapidsai/base:26.10-cuda12-py3.12 && pulled=1 && break" in pull  # retried (test_..._standin)
    assert shlex.split(owner) == ["chown", "-R", "1001", "/opt/rapids-hpo"]  # before the container starts
    argv = shlex.split(line.rpartition(" || ")[0])  # then the host's note if it fails (test_vmcluster_bootscript)
    # the head is a CPU size by default: its container gets no GPUs (the workers' do)
    assert (
        argv[:2] == ["docker", "run"]
        and "--gpus=all" not in argv
        and argv[-2:] == ["python", "/opt/rapids-hpo/boot.py"]
    )
    assert not [a for a in argv if "credential" in a or "AccountKey" in a]  # the credential: a 0600 file
    [nic_put] = arm.calls("PUT", "networkInterfaces/")
    assert "publicIPAddress" not in nic_put.body["properties"]["ipConfigurations"][0]["properties"]

    arm.clear_requests()
    assert backend.submit(record) == {}  # idempotent: nothing changed
    assert not arm.calls("PUT")


def test_poll_replaces_lost_workers_counts_evictions_and_stops_at_their_budget(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry)
    record = _submitted(ctx, arm, retry, backend)
    compute = record.run_spec.compute.model_copy(update={"spot": True, "max_evictions": 1})
    record = record.model_copy(update={"spec": record.run_spec.model_copy(update={"compute": compute})})

    status = backend.poll(record)
    assert status.state is RunState.PENDING and status.details.waiting_for == "the head node's first heartbeat"
    record = _apply(record, status)
    workers = [r for r in arm.calls("PUT", "virtualMachines/") if "-worker-" in r.path]
    assert len(workers) == 2
    assert all(w.body["properties"]["priority"] == "Spot" for w in workers)
    assert all(w.body["properties"]["evictionPolicy"] == "Delete" for w in workers)
    assert all(w.body["properties"]["billingProfile"]["maxPrice"] == -1 for w in workers)
    node = json.loads(
        yaml.safe_load(base64.b64decode(workers[0].body["properties"]["osProfile"]["customData"]))["write_files"][0][
            "content"
        ]
    )
    assert (
        node["role"] == "worker"
        and node["scheduler_address"] == VMClusterHandle.of(record.backend_state).scheduler_address
    )
    assert node["worker_class"] == "dask_cuda.CUDAWorker" and node["worker_options"] == {"rmm_managed_memory": True}

    arm.clear_requests()
    record = _apply(record, backend.poll(record))
    assert not arm.calls("PUT")  # nothing lost: nothing created
    arm.evict(workers[0].path.rsplit("/", 1)[-1])
    status = backend.poll(record)
    record = _apply(record, status)
    assert VMClusterHandle.of(record.backend_state).evictions == 1 and len(arm.calls("PUT", "virtualMachines/")) == 1
    assert VMClusterHandle.of(record.backend_state).compute_report().evictions == 1  # what the API shows
    for vm in [v for v in arm.of_type("virtualMachines") if "-worker-" in v["name"]]:
        arm.evict(vm["name"])
    status = backend.poll(record)
    assert status.state is RunState.FAILED and "max_evictions=1" in (status.error or "")


def test_poll_ingests_trials_reads_the_heartbeat_and_the_outcome(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry, silence_limit_s=60)
    record = _submitted(ctx, arm, retry, backend)
    area = _area(ctx)

    def beat(at: str) -> None:
        area.put(f"artifacts/{HEARTBEAT_ARTIFACT}", json.dumps({"at": at}).encode())

    trial = TrialRecord(experiment_id=EXP, number=0, params={"max_depth": 3}, state=TrialState.RUNNING)
    area.put("trials/0000000000.json", trial.model_dump_json().encode())
    beat(datetime.now(UTC).isoformat())

    status = backend.poll(record)
    assert status.state is RunState.RUNNING, status
    record = _apply(record, status)
    assert [t.number for t in ctx.store.list_trials(EXP)] == [0]

    beat(_ago(120))
    silent = backend.poll(record)
    assert silent.state is RunState.FAILED and "heartbeat" in (silent.error or "")

    done = trial.model_copy(update={"state": TrialState.COMPLETED, "value": 0.8})
    area.put("trials/0000000000.json", done.model_dump_json().encode())
    area.put("artifacts/model/model.pkl", b"model bytes")
    outcome = {"status": "COMPLETED", "reason": "max_total_trials", "trials_done": 1, "best": None, "error": None}
    area.put(f"artifacts/{DRIVER_OUTCOME_ARTIFACT}", json.dumps(outcome).encode())
    final = backend.poll(record)
    assert (
        final.state is RunState.SUCCEEDED
        and final.outcome is not None
        and final.outcome.model_dump(mode="json") == {**outcome, "counts": {}, "stopped_by": None}
    )
    assert ctx.store.list_trials(EXP)[0].state is TrialState.COMPLETED
    assert ctx.store.get_artifact(EXP, "model/model.pkl") == b"model bytes"  # with the outcome, the model

    stored = ctx.store.get_experiment(EXP)
    ctx.store.update_experiment(stored.model_copy(update={"status": ExperimentStatus.CANCELLING}))
    backend.cancel(record)
    assert json.loads(area.get("experiment.json"))["status"] == "CANCELLING"  # what the driver watches
    backend.teardown(_apply(record, final))
    assert not area.root.exists()  # the credential reaches nothing now
    assert backend.poll(_apply(record, final)).state is RunState.SUCCEEDED  # still known, from the store


def test_a_forged_trial_is_never_ingested_and_fails_the_run(ctx: Context, arm: FakeArm, retry: RetrySettings) -> None:
    backend = _backend(ctx, arm, retry)
    record = _submitted(ctx, arm, retry, backend)
    trial = TrialRecord(experiment_id=EXP, number=0, params={"max_depth": 3}, state=TrialState.RUNNING)
    _area(ctx).put("trials/0000000000.json", trial.model_dump_json().encode())
    forged = trial.model_copy(update={"experiment_id": "exp-someone-else", "number": 1})
    _area(ctx).put("trials/0000000001.json", forged.model_dump_json().encode())
    status = backend.poll(record)
    assert status.state is RunState.FAILED and "trials/0000000001.json" in (status.error or "")
    assert "exp-someone-else" in (status.error or "")
    assert [t.number for t in ctx.store.list_trials(EXP)] == [0] and ctx.store.list_trials("exp-someone-else") == []


def test_poll_fails_when_the_head_never_reports(ctx: Context, arm: FakeArm, retry: RetrySettings) -> None:
    backend = _backend(ctx, arm, retry, ready_timeout_s=60)
    record = _submitted(ctx, arm, retry, backend)
    late = record.model_copy(
        update={"backend_state": {**record.backend_state, "submitted_at": _ago(61), "last_error": "quota"}}
    )
    status = backend.poll(late)
    assert (
        status.state is RunState.FAILED and "did not start" in (status.error or "") and "quota" in (status.error or "")
    )


def test_arm_failures_creating_the_scheduler_are_retried_and_a_rerun_reuses_what_exists(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    backend = _backend(ctx, arm, retry)
    record = _record(ctx)
    record = _merge(record, backend.provision(record))

    arm.fail("PUT", "/virtualMachines/", 429, "TooManyRequests", headers={"Retry-After": "0"})
    first = backend.submit(record)  # one 429, retried by arm_call
    assert len(arm.calls("PUT", "/virtualMachines/")) == 2

    lost = _record(ctx, "exp-vm-2")
    lost = _merge(lost, backend.provision(lost))
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
    ctx.settings = replace(ctx.settings, azure=AzureSettings(instance_id="sthpoprod"))
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
    record = _merge(record, backend.provision(record))
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
        "natGateways": 5,
        "networkSecurityGroups": 6,
    }
    cluster = [p for p in deletes if not ("/ng-" in p or "/pip-ng-" in p)]  # the NAT's IP goes with the network
    stages = [order[p.split("/")[-2]] for p in cluster]
    assert stages == sorted(stages)
    assert sum(p.endswith("/dask-c0ffee00-scheduler") for p in deletes) == 2  # 429, then again
    assert arm.of_type("virtualNetworks") == [] and arm.of_type("networkSecurityGroups") == []

    arm.clear_requests()
    backend.teardown(record)  # idempotent: nothing of ours left, only listings (and the 404 NIC, as gone)
    assert {p.split("/")[-2] for p in (r.path for r in arm.calls("DELETE"))} <= {
        "networkInterfaces",
        "virtualNetworks",
        "natGateways",
        "publicIPAddresses",
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
    backend.settings = replace(backend.settings, azure=AzureSettings())
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
    backend.settings = replace(ctx.settings, azure=AzureSettings(subscription_id=SUB, resource_group=RG))
    arm.clear_requests()
    assert sweep_orphans(ctx) == []  # no instance id configured: the sweep is off
    assert arm.requests == []
    backend.settings = replace(ctx.settings, azure=AzureSettings(resource_group=RG, instance_id="sthpoprod"))
    assert sweep_orphans(ctx) == []  # not configured for Azure: touches nothing
    backend.settings = replace(backend.settings, azure=replace(backend.settings.azure, subscription_id=SUB))
    deleted = sweep_orphans(ctx)
    gone = network_names("exp-gone")
    assert {d.rsplit("/", 1)[1] for d in deleted} == {gone.vnet, gone.nat, gone.nat_ip, gone.nsg}
    kept = {network_names(live.id).vnet, network_names("exp-of-dev").vnet}
    assert {r["name"] for r in arm.of_type("virtualNetworks")} == kept
    assert sweep_orphans(ctx) == []  # idempotent


def test_disk_size_beyond_what_the_vms_accept_is_a_spec_error_naming_the_field(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    """dask-cloudprovider raised ValueError above 1023 GB (an event retried until poisoned); now the
    spec refuses it (422 over HTTP), and a record stored before the rule no longer reads (the store lists it
    as unreadable: it harms only itself, and no step of the backend ever sees it)."""
    from shared.spec import SpecError

    with pytest.raises(SpecError) as info:
        _spec_document(disk_size=1024)
    assert [e["loc"] for e in info.value.errors] == ["compute.disk_size"]
    assert _compute(disk_size=1023).disk_size == 1023
    record = _record(ctx)
    stored = record.model_dump(mode="json")
    stored["spec"]["compute"]["disk_size"] = 4095
    with pytest.raises(ValidationError, match="disk_size"):
        ExperimentRecord.model_validate(stored)


def test_a_cpu_head_gets_no_gpus_and_the_refit_runs_on_a_worker(
    ctx: Context, arm: FakeArm, retry: RetrySettings
) -> None:
    """The head runs the scheduler and the driver only, so ``scheduler_vm_size`` may be a CPU size (a third of
    the default spend was an idle GPU): its container gets no ``--gpus``, the workers' do. Why that is
    enough: the refit is a task the driver submits to the cluster (``client.submit(refit_task, ...)`` in
    shared/hpo/refit.py), like every trial, and the modules the scheduler unpickles import no GPU library."""
    import subprocess
    import sys

    backend = _backend(ctx, arm, retry)
    spec = _spec_document(tiny=True, scheduler_vm_size="Standard_D4s_v5")
    record = ctx.store.create_experiment(ExperimentRecord(id=EXP, name="cpu-head", spec=spec, backend="vmcluster"))
    record = _merge(record, backend.provision(record))
    record = _merge(record, backend.submit(record))
    backend.poll(record)
    argv_of = {}
    for put in arm.calls("PUT", "virtualMachines/"):
        cloud_init = yaml.safe_load(base64.b64decode(put.body["properties"]["osProfile"]["customData"]))
        argv_of[put.path.rsplit("/", 1)[-1]] = (
            put.body["properties"]["hardwareProfile"]["vmSize"],
            cloud_init["runcmd"][-1],
        )
    head = [name for name in argv_of if name.endswith("-scheduler")]
    assert head and argv_of[head[0]][0] == "Standard_D4s_v5" and "--gpus=all" not in argv_of[head[0]][1]
    workers = [v for name, v in argv_of.items() if "-worker-" in name]
    assert workers and all("--gpus=all" in line and size.startswith("Standard_NC") for size, line in workers)

    modules = ["shared.hpo.refit", "shared.hpo.trial_task", "shared.hpo.driver", "gpu_jobs.train", "gpu_jobs.trial"]
    probe = (
        f"import sys; [__import__(m) for m in {modules!r}]; "
        "gpu = [m for m in sys.modules if m.split('.')[0] in {'cudf', 'cuml', 'cupy', 'rmm', 'dask_cuda', 'numba'}]; "
        "print(','.join(gpu)); raise SystemExit(1 if gpu else 0)"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, (
        f"imported on the scheduler, these load GPU libraries: {loaded.stdout}{loaded.stderr}"
    )
