"""Every transition of the experiment state machine, duplicate delivery of every event type, the
request queue's bad input, the sweep, and the cost guard (local adapters, scripted backend)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from shared.config import QUEUE_REQUESTS
from shared.errors import BackendError
from shared.handlers import (
    MAX_REDRIVES,
    InvalidRequest,
    handle_event,
    handle_request_message,
    request_cancel,
    submit_experiment,
    sweep,
)
from shared.ports import Message, RunState
from shared.queues import poison_queue_name
from shared.records import EventType, ExperimentEvent, ExperimentStatus, TrialRecord, TrialState
from shared.runner import LocalHost
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend

S = ExperimentStatus


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    context.backends["local"] = ScriptedBackend()
    return context


def backend(ctx) -> ScriptedBackend:
    return ctx.backends["local"]


def submit(ctx, **changes):
    record, created = submit_experiment(ctx, load_spec(tiny_spec(**changes)))
    assert created
    return record


def next_event(ctx) -> Message:
    (message,) = ctx.events.receive(1, visibility_timeout=60)
    return message


def deliver(ctx, message: Message) -> str:
    outcome = handle_event(ctx, message.body)
    ctx.events.delete(message)
    return outcome


def add_completed_trial(ctx, experiment_id: str, number: int = 0, value: float = 0.8) -> None:
    ctx.store.put_trial(
        TrialRecord(
            experiment_id=experiment_id,
            number=number,
            params={"max_depth": 4},
            state=TrialState.COMPLETED,
            value=value,
            metrics={"accuracy": value},
        )
    )


def statuses(record) -> list[str]:
    return [h.status.value for h in record.history if h.reason not in {"poll", "provisioned"}]


def test_happy_path_visits_every_status_and_emits_one_status_event(ctx):
    record = submit(ctx)
    assert record.status is S.SUBMITTED and record.trials_total == 3
    assert deliver(ctx, next_event(ctx)) == "provisioned"
    assert deliver(ctx, next_event(ctx)) == "submitted"
    assert deliver(ctx, next_event(ctx)) == "running"
    add_completed_trial(ctx, record.id)
    assert deliver(ctx, next_event(ctx)) == "finished"
    assert deliver(ctx, next_event(ctx)) == "completed"
    assert deliver(ctx, next_event(ctx)) == "torn down"
    final = ctx.store.get_experiment(record.id)
    assert statuses(final) == ["SUBMITTED", "PROVISIONING", "RUNNING", "FINALIZING", "COMPLETED"]
    assert final.best.value == 0.8 and final.trials_done == 1 and final.torn_down
    assert [name for name, _ in backend(ctx).calls] == ["provision", "submit", "poll", "poll", "finalize", "teardown"]
    (status,) = ctx.status_queue.receive(5)
    assert json.loads(status.body)["status"] == "COMPLETED"
    assert ctx.events.count() == 0


@pytest.mark.parametrize("event_type", [e.value for e in EventType if e is not EventType.CANCEL])
def test_duplicate_delivery_of_each_event_changes_nothing(ctx, event_type):
    record = submit(ctx)
    add_completed_trial(ctx, record.id)
    backend(ctx).polls = [RunState.SUCCEEDED]
    while True:
        message = next_event(ctx)
        event = ExperimentEvent.model_validate_json(message.body)
        if event.type.value == event_type:
            break
        deliver(ctx, message)
    deliver(ctx, message)
    calls_before = list(backend(ctx).calls)
    after_first = ctx.store.get_experiment(record.id)
    queued = ctx.events.count()
    assert handle_event(ctx, message.body) == "stale"  # the duplicate
    assert backend(ctx).calls == calls_before
    assert ctx.store.get_experiment(record.id).version == after_first.version
    assert ctx.events.count() == queued


def test_duplicate_cancel_event_is_stale(ctx):
    record = submit(ctx)
    deliver(ctx, next_event(ctx))
    request_cancel(ctx, record.id)
    stale_provision = next_event(ctx)  # overtaken by the cancel
    cancel = next_event(ctx)
    assert handle_event(ctx, stale_provision.body) == "stale"
    assert deliver(ctx, cancel) == "cancelled"
    assert handle_event(ctx, cancel.body) == "stale"
    assert backend(ctx).count("cancel") == 1


def test_cancel_while_running_stops_the_run_and_tears_down(ctx):
    record = submit(ctx)
    backend(ctx).polls = [RunState.RUNNING]
    for _ in range(3):
        deliver(ctx, next_event(ctx))
    poll = next_event(ctx)
    cancelling = request_cancel(ctx, record.id)
    assert cancelling.status is S.CANCELLING
    assert handle_event(ctx, poll.body) == "stale"
    assert deliver(ctx, next_event(ctx)) == "cancelled"
    assert deliver(ctx, next_event(ctx)) == "torn down"
    final = ctx.store.get_experiment(record.id)
    assert final.status is S.CANCELLED and final.torn_down and final.ended_at
    assert backend(ctx).count("cancel") == 1 and backend(ctx).count("teardown") == 1
    assert request_cancel(ctx, record.id).status is S.CANCELLED  # idempotent on terminal


def test_trials_a_cancel_stops_end_cancelled_and_count_as_no_progress(ctx):
    record = submit(ctx)
    backend(ctx).polls = [RunState.RUNNING]
    for _ in range(3):
        deliver(ctx, next_event(ctx))
    running = TrialRecord(experiment_id=record.id, number=0, params={"max_depth": 4}, state=TrialState.RUNNING)
    ctx.store.put_trial(running)
    request_cancel(ctx, record.id)
    next_event(ctx)  # the poll the cancel overtook
    assert deliver(ctx, next_event(ctx)) == "cancelled"
    assert deliver(ctx, next_event(ctx)) == "torn down"
    (trial,) = ctx.store.list_trials(record.id)
    assert trial.state is TrialState.CANCELLED and trial.error == "stopped: experiment CANCELLED" and trial.ended_at
    assert ctx.store.get_experiment(record.id).trials_done == 0


def test_run_failure_ends_failed_with_the_reason(ctx):
    record = submit(ctx)
    backend(ctx).polls = [RunState.FAILED]
    backend(ctx).error = "every trial failed; first error: boom"
    for _ in range(4):
        deliver(ctx, next_event(ctx))
    final = ctx.store.get_experiment(record.id)
    assert final.status is S.FAILED and "boom" in final.error
    assert backend(ctx).count("teardown") == 1
    (status,) = ctx.status_queue.receive(5)
    assert json.loads(status.body)["error"] == final.error


def test_finalize_without_a_completed_trial_fails(ctx):
    record = submit(ctx)
    backend(ctx).polls = [RunState.SUCCEEDED]
    for _ in range(4):
        deliver(ctx, next_event(ctx))
    final = ctx.store.get_experiment(record.id)
    assert final.status is S.FAILED and final.error == "no trial completed"


def test_non_retryable_backend_error_fails_the_experiment(ctx):
    backend(ctx).fail_on["provision"] = BackendError("quota exceeded for Standard_NC6s_v3")
    record = submit(ctx)
    assert deliver(ctx, next_event(ctx)) == "failed"
    final = ctx.store.get_experiment(record.id)
    assert final.status is S.FAILED and "quota exceeded" in final.error


def test_retryable_backend_error_is_retried_then_poisoned(tmp_path):
    ctx = local_context(tmp_path)
    ctx.backends["local"] = ScriptedBackend(fail_on={"provision": BackendError("429", retryable=True)})
    record = submit(ctx)
    host = LocalHost(ctx, visibility_timeout=1)
    for _ in range(5):
        host.run(until=lambda: ctx.events.count() == 0, timeout=3)
    assert backend(ctx).count("provision") == 5
    poison = ctx.queues.queue(poison_queue_name(ctx.events.name))
    assert poison.count() == 1
    assert ctx.store.get_experiment(record.id).status is S.PROVISIONING  # the sweep re-drives it later


def test_lost_events_are_redriven_by_the_sweep_then_failed_when_stalled(ctx):
    record = submit(ctx)
    ctx.events.delete(next_event(ctx))  # the PROVISION event is lost
    assert sweep(ctx, stall_seconds=3600)["redriven"] == []
    report = sweep(ctx, stall_seconds=0)
    assert report["redriven"] == [record.id]
    assert deliver(ctx, next_event(ctx)) == "provisioned"
    redrives = 1
    while True:  # from now on it keeps losing its events
        while ctx.events.count():
            ctx.events.delete(next_event(ctx))
        report = sweep(ctx, stall_seconds=0)
        if report["failed"]:
            break
        assert report["redriven"] == [record.id]
        redrives += 1
    assert redrives == MAX_REDRIVES and report["failed"] == [record.id]
    final = ctx.store.get_experiment(record.id)
    assert final.status is S.FAILED and final.error.startswith("stalled")


def test_sweep_tears_down_finished_experiments_that_missed_teardown(ctx):
    record = submit(ctx)
    backend(ctx).polls = [RunState.FAILED]
    for _ in range(3):
        deliver(ctx, next_event(ctx))
    ctx.events.delete(next_event(ctx))  # the TEARDOWN event is lost
    assert sweep(ctx, stall_seconds=0)["teardown"] == [record.id]
    assert deliver(ctx, next_event(ctx)) == "torn down"
    assert ctx.store.get_experiment(record.id).torn_down
    assert sweep(ctx, stall_seconds=0) == {
        "redriven": [],
        "failed": [],
        "teardown": [],
        "announced": [],
        "unreadable": [],
    }


def test_cost_guard_cancels_an_experiment_over_its_node_hours(ctx):
    """The guard counts node-hours by the backend's own billing rule (1 worker + the scheduler: 2 nodes)
    against max_node_hours."""
    ctx.backends["vmcluster"] = ScriptedBackend(name="vmcluster", polls=[RunState.RUNNING])
    compute = {"backend": "vmcluster", "resource_group": "rg", "location": "eastus", "n_workers": 1,
               "max_node_hours": 1.5}  # fmt: skip
    record, _ = submit_experiment(ctx, load_spec(tiny_spec(compute=compute)))
    scripted = ctx.backends["vmcluster"]
    for _ in range(3):
        deliver(ctx, next_event(ctx))
    current = ctx.store.get_experiment(record.id)
    ctx.store.update_experiment(current.model_copy(update={"started_at": current.started_at - timedelta(minutes=40)}))
    assert deliver(ctx, next_event(ctx)) == "running"  # 2 nodes x 40 min = 1.33 node-hours: under the limit
    current = ctx.store.get_experiment(record.id)
    ctx.store.update_experiment(current.model_copy(update={"started_at": current.started_at - timedelta(minutes=10)}))
    assert deliver(ctx, next_event(ctx)) == "budget exceeded"  # 2 x 50 min = 1.67
    final = ctx.store.get_experiment(record.id)
    assert final.status is S.FAILED and "1.67 node-hours used, over max_node_hours=1.5" in final.error
    assert scripted.count("cancel") == 1


# ------------------------------------------------------------------------------ the request queue
def test_request_message_starts_an_experiment_once_even_if_redelivered(ctx):
    body = json.dumps(tiny_spec())
    first = handle_request_message(ctx, body, message_id="m-1")
    again = handle_request_message(ctx, body, message_id="m-1")
    assert first.id == again.id
    assert len(ctx.store.list_experiments()[0]) == 1


def test_request_envelope_with_id_and_yaml_body(ctx):
    import yaml

    body = yaml.safe_dump({"id": "exp-from-logic-app", "spec": tiny_spec()})
    record = handle_request_message(ctx, body, message_id="m-2")
    assert record.id == "exp-from-logic-app" and record.status is S.SUBMITTED


def test_invalid_request_with_id_records_failed_and_raises(ctx):
    body = json.dumps({"id": "exp-bad", "spec": tiny_spec(limits={"max_total_trials": 0})})
    with pytest.raises(InvalidRequest) as raised:
        handle_request_message(ctx, body, message_id="m-3")
    assert raised.value.errors[0]["loc"] == "limits.max_total_trials"
    record = ctx.store.get_experiment("exp-bad")
    assert record.status is S.FAILED and "max_total_trials" in record.error
    with pytest.raises(InvalidRequest):  # redelivered: still rejected, recorded and announced once
        handle_request_message(ctx, body, message_id="m-3")
    (status,) = ctx.status_queue.receive(5)
    assert json.loads(status.body)["status"] == "FAILED"


def test_malformed_request_goes_to_the_poison_queue_on_its_first_delivery(tmp_path):
    ctx = local_context(tmp_path)
    ctx.requests.send('{"id": "exp-broken", "spec": {"name": ')  # not JSON, not YAML
    host = LocalHost(ctx, visibility_timeout=1)
    assert host.step() == 1 and ctx.requests.count() == 0  # one delivery: a refusal is final, not retried
    poison = ctx.queues.queue(poison_queue_name(QUEUE_REQUESTS))
    (message,) = poison.receive(1)
    assert message.body.startswith('{"id": "exp-broken"')  # kept, not dropped
    assert not host.failures


def test_unknown_experiment_event_is_dropped_with_a_log(ctx, caplog):
    body = ExperimentEvent(type=EventType.POLL, experiment_id="exp-nope", seq=1).model_dump_json()
    with caplog.at_level(logging.WARNING, logger="shared.handlers.machine"):
        assert handle_event(ctx, body) == "unknown experiment"
    [entry] = [r for r in caplog.records if r.name == "shared.handlers.machine"]
    assert entry.levelno == logging.WARNING and "exp-nope" in entry.getMessage() and "dropped" in entry.getMessage()
    assert ctx.events.count() == 0  # nothing sent on: the event is gone


def test_idempotency_key_returns_the_same_experiment(ctx):
    spec = load_spec(tiny_spec())
    first, created = submit_experiment(ctx, spec, idempotency_key="k-1")
    second, created_again = submit_experiment(ctx, spec, idempotency_key="k-1")
    assert created and not created_again and first.id == second.id
    assert len(ctx.store.list_experiments()[0]) == 1


def test_a_retried_submit_resends_a_lost_first_event_and_the_duplicate_is_harmless(ctx):
    """The attempt that stored the experiment died before its event was sent (or its reply was lost):
    the client's retry sends it, so the experiment does not wait for the sweep; once it has moved on a
    retry sends nothing, and a duplicate first event changes nothing."""
    spec = load_spec(tiny_spec())
    record, _ = submit_experiment(ctx, spec, idempotency_key="k-2")
    ctx.events.delete(next_event(ctx))  # the first event is lost
    assert ctx.events.count() == 0
    again, created = submit_experiment(ctx, spec, idempotency_key="k-2")
    assert not created and again.id == record.id and ctx.events.count() == 1
    submit_experiment(ctx, spec, idempotency_key="k-2")  # a second retry while still SUBMITTED: two events
    assert deliver(ctx, next_event(ctx)) == "provisioned"
    assert deliver(ctx, next_event(ctx)) == "stale"  # the duplicate
    assert deliver(ctx, next_event(ctx)) == "submitted"
    assert backend(ctx).count("provision") == 1 and backend(ctx).count("submit") == 1
    submit_experiment(ctx, spec, idempotency_key="k-2")  # past SUBMITTED: nothing is re-sent
    assert ctx.events.count() == 1  # only the poll the submit step scheduled


def test_what_the_compute_went_through_follows_its_handle_onto_the_record_and_the_api(ctx):
    """A handle change a poll returns (here: the driver restarted twice) reaches ``record.compute`` in the
    same write, and the API and ``rapids-hpo status`` show it."""
    from fastapi.testclient import TestClient

    from shared.api import create_api
    from shared.compute_report import ComputeReport

    backend(ctx).polls = [RunState.RUNNING]
    backend(ctx).poll_updates = [{"restarts": 1}, {"restarts": 2}]
    record = submit(ctx)
    for _ in range(2):
        deliver(ctx, next_event(ctx))
    assert ctx.store.get_experiment(record.id).compute.driver_restarts == 0
    deliver(ctx, next_event(ctx))
    assert ctx.store.get_experiment(record.id).compute.driver_restarts == 1
    deliver(ctx, next_event(ctx))
    shown = (
        TestClient(create_api(context=ctx), base_url="http://localhost")
        .get(f"/api/experiments/{record.id}")
        .json()["compute"]
    )
    assert shown == {"driver_restarts": 2, "evictions": 0, "heartbeat_at": None, "link": None}
    assert ComputeReport.model_validate(shown).summary() == "driver restarted 2x"


def test_a_failed_trial_is_no_progress_but_shows_the_run_is_alive(ctx):
    from shared.handlers.machine import progress_updates

    record = submit(ctx)
    add_completed_trial(ctx, record.id, number=0)
    ctx.store.put_trial(
        TrialRecord(
            experiment_id=record.id,
            number=1,
            params={"max_depth": 4},
            state=TrialState.FAILED,
            error="boom",
            ended_at=record.last_progress_at + timedelta(seconds=1),
        )
    )
    seen_one = ctx.store.get_experiment(record.id).model_copy(update={"trials_done": 1})
    updates = progress_updates(ctx, seen_one)
    assert updates["trials_done"] == 1  # 1 of 3 done: the failed attempt is not counted
    assert updates["last_progress_at"] > record.last_progress_at  # yet its ending shows the run is alive
    ended_before = seen_one.model_copy(update={"last_progress_at": record.last_progress_at + timedelta(seconds=5)})
    assert "last_progress_at" not in progress_updates(ctx, ended_before)  # nothing new since
