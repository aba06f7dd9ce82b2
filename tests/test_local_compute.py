"""The local driver is a compute like the others: it holds its area's credential only, and what it writes
reaches the store through the one ingestion path (its bounds and quotas included)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.backends.local import LocalHandle, is_alive
from shared.ports import RunState
from shared.records import TrialRecord, TrialState
from shared.store.compute import TRIALS_PREFIX, ComputeStore
from tests.conformance.backend import LocalHarness, apply_update, new_record, poll, submitted
from tests.control_plane import local_context

SECRET = "AccountKey=not-for-the-compute"


@pytest.fixture
def harness(tmp_path: Path) -> LocalHarness:
    return LocalHarness(local_context(tmp_path / "home", poll_seconds=0), tmp_path)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.slow  # a real driver process and its cluster: 29 s at load 5; CI runs it
def test_the_driver_holds_no_control_plane_credential_and_its_trials_come_in_by_ingestion(
    harness: LocalHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's own storage settings (and other keys) stay with the host: the driver gets its area's
    credential on stdin; its trials reach the store only when a poll ingests them."""
    monkeypatch.setenv("AzureWebJobsStorage", f"DefaultEndpointsProtocol=https;{SECRET}")
    monkeypatch.setenv("AzureWebJobsStorage__accountName", "controlplane")
    monkeypatch.setenv("EVENTGRID_TOPIC_KEY", SECRET)
    record = submitted(harness, limits={"max_total_trials": 2, "max_concurrent_trials": 2})
    handle = LocalHandle.model_validate(record.backend_state)
    assert handle.pid and handle.area
    environ = _environ(handle.pid)
    assert not [name for name in environ if name.startswith("AzureWebJobsStorage")]
    assert not [name for name, value in environ.items() if SECRET in value]
    harness.finish(record, RunState.SUCCEEDED)
    assert harness._area(record).list_trials(record.id), "the driver wrote its trials into its area"
    assert not harness.ctx.store.list_trials(record.id), "nothing reached the store before a poll"
    record, status = poll(harness, harness.ctx.store.get_experiment(record.id))
    assert status.state is RunState.SUCCEEDED, status
    assert [t.number for t in harness.ctx.store.list_trials(record.id)] == [0, 1]
    assert LocalHandle.model_validate(record.backend_state).ingested_until is not None
    apply_update(harness, record, harness.backend().teardown(record))
    assert not is_alive(record.backend_state)


def test_a_trial_past_the_budget_in_the_local_area_fails_the_run_unread(harness: LocalHarness) -> None:
    """What a local driver writes is judged as any compute's: a trial numbered past the budget is refused
    and the run fails with the reason (before the driver ever ran here: the area is all that counts)."""
    backend = harness.backend()
    record = new_record(harness, limits={"max_total_trials": 2, "max_concurrent_trials": 1})
    record = apply_update(harness, record, {"area": True})
    area = ComputeStore.from_credential(harness.ctx.areas.issue_compute_credential(record.id, timedelta(hours=1)))
    forged = TrialRecord(experiment_id=record.id, number=99, params={}, state=TrialState.COMPLETED, value=1.0)
    area.area.put(f"{TRIALS_PREFIX}{forged.number:010d}.json", forged.model_dump_json().encode())
    status = backend.poll(record)
    assert status.state is RunState.FAILED and status.error and "trials/0000000099.json" in status.error, status
    assert harness.ctx.store.list_trials(record.id) == []
