"""The head node's driver (``shared/backends/vmcluster/head.py``) runs the one shared driver run, so a
vmcluster experiment gets the data check and the budget guard the local driver has.

The head runs here in this process against a real Dask scheduler (a LocalCluster on loopback, as the
head's own scheduler is), with an experiment's compute credential of a folder area, as ``node.json``
hands it. The VMs themselves (boot, TLS, restarts) are ``tests/test_vmcluster_standin.py``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

from shared.backends.vmcluster import head
from shared.config import DATA_CHECK_ARTIFACT, DRIVER_OUTCOME_ARTIFACT
from shared.errors import NotFound
from shared.records import ExperimentRecord
from shared.spec import load_spec
from shared.store.compute import ComputeStore
from shared.store.local import LocalStore
from tests.control_plane import tiny_spec


@pytest.fixture(scope="module")
def scheduler_port() -> Iterator[int]:
    """A scheduler on 127.0.0.1 with one in-process worker (the data check and these runs need no more)."""
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield int(cluster.scheduler_address.rsplit(":", 1)[1])


def _vm_spec(**changes: Any) -> dict[str, Any]:
    document = tiny_spec(**changes)
    document["compute"] = {
        "backend": "vmcluster",
        "location": "eastus",  # priced in the bundled catalogue
        "resource_group": "rg",
        "subscription_id": "00000000-0000-0000-0000-000000000002",
        "vm_size": "Standard_NC4as_T4_v3",
        "n_workers": 2,
    }
    return load_spec(document).to_document()


def _run_head(store: LocalStore, record: ExperimentRecord, port: int) -> tuple[int, ComputeStore]:
    """Run the head on ``record``; its exit status and the area it wrote (what the poll step ingests)."""
    store.create_experiment(record)
    credential = store.issue_compute_credential(record.id, timedelta(hours=1))  # publishes the record there
    config = {"credential": json.loads(credential.to_json()), "scheduler_port": port, "heartbeat_s": 0.2}
    return head.run(config), ComputeStore.from_credential(credential)


def _outcome(area: ComputeStore) -> dict[str, Any]:
    outcome: dict[str, Any] = json.loads(area.get_artifact(area.experiment_id, DRIVER_OUTCOME_ARTIFACT))
    return outcome


def test_the_head_checks_the_data_before_any_trial(store: LocalStore, scheduler_port: int, tmp_path: Path) -> None:
    """A target the table lacks fails the run once, at the data check: no trial is run (the head's own copy
    of the loop used to skip the check and fail every trial instead)."""
    table = tmp_path / "table.csv"
    table.write_text("a,b,c\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    dataset = {"uri": str(table), "target": "no_such_column"}
    record = ExperimentRecord(id="exp-head-data", name="head", spec=_vm_spec(dataset=dataset), backend="vmcluster")
    status, area = _run_head(store, record, scheduler_port)
    outcome = _outcome(area)
    assert status == 0
    assert outcome["status"] == "FAILED" and outcome["reason"] == "data check failed"
    assert "no_such_column" in outcome["error"]
    assert outcome["trials_done"] == 0 and area.list_trials(record.id) == []
    with pytest.raises(NotFound):
        area.get_artifact(record.id, DATA_CHECK_ARTIFACT)


def test_the_head_guards_the_budget(store: LocalStore, scheduler_port: int) -> None:
    """A run whose budget its VMs have spent already (started ten hours ago at $0.5/h a node) launches no
    trial: the head guards ``limits.max_cost`` as the local driver does (it used to run every trial)."""
    limits = {**tiny_spec()["limits"], "max_cost": 1.0}
    record = ExperimentRecord(
        id="exp-head-budget",
        name="head",
        spec=_vm_spec(limits=limits),
        backend="vmcluster",
        started_at=datetime.now(UTC) - timedelta(hours=10),
    )
    status, area = _run_head(store, record, scheduler_port)
    outcome = _outcome(area)
    assert status == 0
    assert outcome["status"] == "FAILED" and outcome["stopped_by"] == "max_cost"
    assert outcome["trials_done"] == 0 and area.list_trials(record.id) == []
    assert json.loads(area.get_artifact(record.id, DATA_CHECK_ARTIFACT))  # checked first, and it passed


def test_a_head_restarted_after_its_outcome_does_nothing(store: LocalStore, scheduler_port: int) -> None:
    """Docker restarts a head that exited: once the outcome is written it exits 0 and runs nothing again."""
    record = ExperimentRecord(id="exp-head-done", name="head", spec=_vm_spec(), backend="vmcluster")
    store.create_experiment(record)
    credential = store.issue_compute_credential(record.id, timedelta(hours=1))
    area = ComputeStore.from_credential(credential)
    area.put_artifact(record.id, DRIVER_OUTCOME_ARTIFACT, b'{"status": "COMPLETED"}')
    assert head.run({"credential": json.loads(credential.to_json()), "scheduler_port": scheduler_port}) == 0
    assert area.list_trials(record.id) == [] and _outcome(area) == {"status": "COMPLETED"}
