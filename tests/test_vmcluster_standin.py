"""The vmcluster backend end to end against a stand-in as hostile as Azure (tests/vm_standin.py).

The VMs are "created" through the real Azure SDK against the local ARM server; each boots from the
boot script in its custom data, under Python 3.12 in a virtual environment of its own that lacks this
project (the code arrives as the archive in the experiment's container), in a folder of its own, with
Dask over TLS, reaching storage (Azurite) only with the container's SAS. The control plane here only
creates VMs and reads that container: it never opens a Dask client.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.backends.arm import RetrySettings
from shared.backends.network import make_network_client
from shared.backends.vm_teardown import make_compute_client
from shared.backends.vmcluster import VMClusterBackend, VMClusterHandle
from shared.backends.vmcluster.exchange import Exchange
from shared.ports import RunState, RunStatus
from shared.records import ExperimentRecord, TrialRecord, TrialState
from shared.spec import load_spec
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.control_plane import local_context, tiny_spec
from tests.vm_standin import VMStandIn, compute_python

pytestmark = pytest.mark.azurite
SUB = "00000000-0000-0000-0000-000000000002"
RG = "rg-standin"
LOC = "westeurope"


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
    vms = VMStandIn(tmp_path / "vms", python)
    try:
        yield vms
    finally:
        vms.close()


@pytest.fixture
def arm(standin: VMStandIn) -> Iterator[FakeArm]:
    with FakeArm(private_ip="127.0.0.1", on_vm_created=standin.boot, on_vm_deleted=standin.delete) as server:
        yield server


@pytest.fixture
def backend(tmp_path: Path, arm: FakeArm, azurite: str) -> VMClusterBackend:
    from azure.storage.blob import BlobServiceClient

    ctx = local_context(tmp_path / "control-plane")
    credential = StaticTokenCredential(arm.token)
    retry = RetrySettings(attempts=3, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)
    backend = VMClusterBackend(
        ctx.store,
        ctx.settings,
        compute_client_factory=lambda sub: make_compute_client(sub, credential, arm.base_url, polling_interval=0),
        network_client_factory=lambda sub: make_network_client(sub, credential, arm.base_url, polling_interval=0),
        blob_service=BlobServiceClient.from_connection_string(azurite),
        retry=retry,
        scheduler_port=_free_port(),
        ready_timeout_s=240,
        silence_limit_s=120,
    )
    backend.ctx = ctx  # type: ignore[attr-defined]  (the tests read the store through it)
    return backend


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


def test_provision_boot_trials_outcome_model_teardown(
    backend: VMClusterBackend, standin: VMStandIn, arm: FakeArm, azurite: str
) -> None:
    from azure.storage.blob import BlobServiceClient

    record = _new_record(backend, _spec(total=3))
    record, status = _run(backend, standin, record)

    assert status.state is RunState.SUCCEEDED, (status, standin.logs())
    outcome = status.details["outcome"]
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
    assert "exchange_url" in (head.cwd / "opt/rapids-hpo/node.json").read_text()
    assert not any("AzureWebJobsStorage" in k or "ACCOUNT" in k.upper() for k in head.env)
    assert (head.cwd / "opt/rapids-hpo/code/shared/backends/vmcluster/head.py").exists()

    backend.finalize(record)
    assert backend.store.list_artifacts(record.id, "model/")
    assert backend.store.get_artifact(record.id, "driver/outcome.json")

    backend.teardown(record)
    assert arm.of_type("virtualMachines") == [] and arm.of_type("virtualNetworks") == []
    assert not any(standin.alive(name) for name in standin.containers)
    blobs = BlobServiceClient.from_connection_string(azurite)
    assert not Exchange.of(blobs, record.id).container.exists()
    assert backend.store.list_artifacts(record.id, "model/")  # copied before the container went


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


def test_the_compute_credential_reaches_only_its_own_experiments_container(
    backend: VMClusterBackend, azurite: str
) -> None:
    """The SAS the VMs of experiment A get opens A's container and nothing else: not B's, not the
    account's other containers, not a new container."""
    from datetime import timedelta

    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient, ContainerClient

    blobs = BlobServiceClient.from_connection_string(azurite)
    mine, theirs = (
        Exchange.of(blobs, "exp-a-" + uuid.uuid4().hex[:6]),
        Exchange.of(blobs, "exp-b-" + uuid.uuid4().hex[:6]),
    )
    for exchange in (mine, theirs):
        exchange.ensure()
        exchange.put("trials/00000000.json", b"{}")
    url = mine.sas_url(blobs, valid_for=timedelta(minutes=10))
    base, _, sas = url.partition("?")
    ContainerClient.from_container_url(url).upload_blob("driver/heartbeat.json", b"{}", overwrite=True)
    assert mine.get("driver/heartbeat.json") == b"{}"
    other = ContainerClient.from_container_url(f"{theirs.container.url}?{sas}")
    with pytest.raises(HttpResponseError):
        other.download_blob("trials/00000000.json").readall()
    with pytest.raises(HttpResponseError):
        other.upload_blob("trials/00000001.json", b"{}")
    with pytest.raises(HttpResponseError):
        ContainerClient.from_container_url(f"{base}-new?{sas}").create_container()
