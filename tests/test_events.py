"""CloudEvents from the state machine, through the real Event Grid client to a local topic receiver.

The experiments are driven step by step as the Functions host would (local adapters, the scripted
backend of tests.control_plane); trials are written to the store the way the compute writes them, and
the control plane learns of them when it polls. Covered: the events of a whole experiment and their
order and ids; redelivered steps and re-sent batches keep their ids; a topic that fails (500s,
connection refused) and recovers loses nothing and never holds up or fails a step; refused events.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from shared.api import ExperimentView
from shared.events import Announcer
from shared.events.announcer import MAX_PENDING, _staged
from shared.events.catalog import (
    BEST_TRIAL_IMPROVED,
    STATUS_CHANGED,
    TRIAL_FINISHED,
    decode_ranges,
    encode_ranges,
)
from shared.events.eventgrid import EventGridPublisher
from shared.events.port import Event
from shared.handlers import InvalidRequest, handle_event, handle_request_message, submit_experiment, sweep
from shared.ports import RunState
from shared.records import EventLog, ExperimentStatus, TrialRecord, TrialState, utcnow
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
from tests.topic_receiver import TopicReceiver

SOURCE = "/rapids-hpo-control/test"
PUBLISH_SLACK_S = 1.5
"""Beyond the announcer's retry budget, what one batch may spend in the topic (its connection timeout, 0.5 s,
and the scheduling of a loaded machine). The step's own store and queue work is not timed: only what the topic
can hold it up by."""


@pytest.fixture
def receiver():
    topic = TopicReceiver().start()
    yield topic
    topic.stop()


STORES = [pytest.param("local", id="local"), pytest.param("azure", id="azure", marks=pytest.mark.azurite)]


@pytest.fixture
def store_kind(request) -> str:
    """The store under the outbox: local (SQLite) unless a test asks for ``STORES``."""
    return getattr(request, "param", "local")


@pytest.fixture
def ctx(tmp_path, receiver, store_kind, request):
    context = local_context(tmp_path)
    if store_kind == "azure":  # tables and containers of its own on Azurite (the queues stay local)
        context.store = request.getfixturevalue("azure_store")
    context.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING, RunState.RUNNING, RunState.SUCCEEDED])
    publisher = EventGridPublisher.from_settings(receiver.endpoint, receiver.key, connection_timeout=0.5)
    context.announcer = Announcer(publisher=publisher, source=SOURCE, backoff_s=0.05, budget_s=1.0)
    return context


def trial(experiment_id: str, number: int, state: TrialState, value: float | None = None, **extra) -> TrialRecord:
    ended = None if state is TrialState.RUNNING else utcnow() + timedelta(milliseconds=number)
    return TrialRecord(
        experiment_id=experiment_id,
        number=number,
        params={"max_depth": 4 + number},
        state=state,
        value=value,
        engine="sklearn",
        ended_at=ended,
        duration_s=None if ended is None else 1.5 + number,
        **extra,
    )


def step(ctx) -> str:
    """Deliver the next event-queue message as the host does; no step may be slow."""
    (message,) = ctx.events.receive(1, visibility_timeout=60)
    announcer = ctx.announcer
    sends: list[float] = []
    send = announcer._send

    def timed_send(*args, **kwargs):
        started = time.monotonic()
        try:
            return send(*args, **kwargs)
        finally:
            sends.append(time.monotonic() - started)

    announcer._send = timed_send
    try:
        outcome = handle_event(ctx, message.body)
    finally:
        del announcer._send  # the class's method again
    limit = announcer.budget_s + PUBLISH_SLACK_S
    assert all(spent < limit for spent in sends), f"step {outcome!r} was held up by the topic: {sends}"
    ctx.events.delete(message)
    return outcome


def run_experiment(ctx) -> str:
    """SUBMITTED to torn down; the compute writes trials between the polls."""
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    eid = record.id
    assert [step(ctx) for _ in range(2)] == ["provisioned", "submitted"]
    ctx.store.put_trial(trial(eid, 0, TrialState.COMPLETED, 0.70))
    ctx.store.put_trial(trial(eid, 1, TrialState.RUNNING))
    assert step(ctx) == "running"
    ctx.store.put_trial(trial(eid, 1, TrialState.COMPLETED, 0.80))
    ctx.store.put_trial(trial(eid, 2, TrialState.COMPLETED, 0.75))
    assert step(ctx) == "running"
    ctx.store.put_trial(trial(eid, 3, TrialState.PRUNED, 0.60, error=None))
    ctx.store.put_trial(trial(eid, 4, TrialState.RUNNING))  # still running when the run ends
    assert [step(ctx) for _ in range(3)] == ["finished", "completed", "torn down"]
    return eid


def expected(eid: str) -> list[tuple[str, str, str]]:
    """(type, subject, id) of a whole run_experiment, in the order the topic must receive them."""
    exp = f"/experiments/{eid}"

    def status(n: int) -> tuple[str, str, str]:
        return (STATUS_CHANGED, exp, f"{eid}/status/{n}")

    def finished(n: int) -> tuple[str, str, str]:
        return (TRIAL_FINISHED, f"{exp}/trials/{n}", f"{eid}/trials/{n}/1")

    def best(n: int) -> tuple[str, str, str]:
        return (BEST_TRIAL_IMPROVED, f"{exp}/trials/{n}", f"{eid}/best/{n}")

    return [
        *(status(n) for n in (1, 2, 3)),  # SUBMITTED, PROVISIONING, RUNNING
        finished(0),
        best(0),
        finished(1),
        best(1),
        finished(2),
        finished(3),
        status(4),  # FINALIZING
        status(5),  # COMPLETED
        finished(4),  # stopped by the teardown
    ]


def triples(events: list[dict]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["subject"], e["id"]) for e in events]


@pytest.mark.parametrize("store_kind", STORES, indirect=True)
def test_a_whole_experiment_announces_every_transition_trial_and_improvement_in_order(ctx, receiver):
    eid = run_experiment(ctx)
    events = receiver.events
    assert triples(events) == expected(eid)
    assert {e["source"] for e in events} == {SOURCE}

    statuses = [e["data"] for e in events if e["type"] == STATUS_CHANGED]
    assert [(s["status"], s["previous_status"]) for s in statuses] == [
        ("SUBMITTED", None),
        ("PROVISIONING", "SUBMITTED"),
        ("RUNNING", "PROVISIONING"),
        ("FINALIZING", "RUNNING"),
        ("COMPLETED", "FINALIZING"),
    ]
    assert [s["sequence"] for s in statuses] == [1, 2, 3, 4, 5]
    completed = statuses[-1]
    assert completed["progress"] == {"done": 4, "total": 3} and completed["best"]["number"] == 1
    assert completed["best"]["value"] == pytest.approx(0.80) and completed["reason"] == "completed"

    by_id = {e["id"]: e for e in events}
    first = by_id[f"{eid}/trials/0/1"]["data"]
    assert first == {
        "experiment_id": eid,
        "number": 0,
        "attempt": 1,
        "state": "COMPLETED",
        "value": pytest.approx(0.70),
        "params": {"max_depth": 4},
        "duration_s": 1.5,
        "engine": "sklearn",
        "error": None,
    }
    assert by_id[f"{eid}/trials/3/1"]["data"]["state"] == "PRUNED"
    stopped = by_id[f"{eid}/trials/4/1"]["data"]
    assert stopped["state"] == "FAILED" and stopped["error"] == "stopped: experiment COMPLETED"
    improved = by_id[f"{eid}/best/1"]["data"]
    assert (improved["previous_number"], improved["previous_value"]) == (0, pytest.approx(0.70))
    assert (improved["primary_metric"], improved["goal"]) == ("accuracy", "maximize")

    record = ctx.store.get_experiment(eid)
    assert record.event_log.pending == [] and record.event_log.sent == len(events)
    assert record.event_log.failures == 0 and record.event_log.trials == "0-4"
    (status,) = ctx.status_queue.receive(5)  # the experiment-status message stays
    assert json.loads(status.body)["status"] == "COMPLETED"


def test_redelivered_steps_announce_nothing_new(ctx, receiver):
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    (message,) = ctx.events.receive(1, visibility_timeout=60)
    assert handle_event(ctx, message.body) == "provisioned"
    sent = list(receiver.events)
    requests = len(receiver.requests)
    assert handle_event(ctx, message.body) == "stale"  # the host delivers it again
    assert receiver.events == sent and len(receiver.requests) == requests
    assert triples(sent) == expected(record.id)[:2]


def test_a_batch_the_topic_took_but_did_not_acknowledge_is_sent_again_with_the_same_ids(ctx, receiver):
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    receiver.fail(1, 500, keep=True)  # accepted, then the answer is lost
    step(ctx)
    first, second = receiver.batches
    assert [e["id"] for e in first] == [e["id"] for e in second] == [f"{record.id}/status/{n}" for n in (1, 2)]
    assert first == second  # byte for byte the same events: subscribers dedupe on (source, id)
    log = ctx.store.get_experiment(record.id).event_log
    assert (log.sent, log.failures, log.pending) == (2, 1, [])


@pytest.mark.parametrize("store_kind", STORES, indirect=True)
@pytest.mark.parametrize("outage", ["connection refused", "500"])
def test_a_topic_that_fails_then_recovers_loses_nothing_and_blocks_nothing(ctx, receiver, outage):
    if outage == "connection refused":
        receiver.stop()
    else:
        receiver.fail(1000, 500)
    started = time.monotonic()
    eid = run_experiment(ctx)  # every step finishes in time (step() checks) while nothing gets through
    elapsed = time.monotonic() - started
    record = ctx.store.get_experiment(eid)
    assert record.status is ExperimentStatus.COMPLETED and record.torn_down
    log = record.event_log
    assert [(e["type"], e["subject"], e["id"]) for e in log.pending] == expected(eid)
    # One retry budget, then the breaker kept the other steps from trying (and from writing) at all.
    assert log.sent == 0 and log.failures == 3 and log.last_error
    assert receiver.events == [] and len(receiver.requests) == (3 if outage == "500" else 0)
    view = ExperimentView.of(record).events  # what GET /api/experiments/{id} shows
    assert (view.sent, view.pending, view.failures) == (0, len(expected(eid)), log.failures)

    if outage == "connection refused":
        receiver.start()  # the same port again
    else:
        receiver.faults.clear()
    report = sweep(ctx, stall_seconds=3600)
    assert report["announced"] == [eid]
    assert triples(receiver.events) == expected(eid)  # all of them, once, in order
    log = ctx.store.get_experiment(eid).event_log
    assert (log.pending, log.sent) == ([], len(expected(eid)))
    assert sweep(ctx, stall_seconds=3600)["announced"] == []
    print(f"{outage}: whole experiment with the topic down took {elapsed:.2f} s")


def test_a_refused_event_is_dropped_and_counted_and_the_rest_still_arrive(ctx, receiver):
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    receiver.fail(2, 400)  # the batch is refused, then its first event alone
    step(ctx)
    assert [e["id"] for e in receiver.events] == [f"{record.id}/status/2"]
    log = ctx.store.get_experiment(record.id).event_log
    assert (log.sent, log.dropped, log.pending) == (1, 1, [])
    assert "400" in log.last_error


def test_an_invalid_request_with_an_id_announces_its_failure(ctx, receiver):
    body = json.dumps({"id": "exp-bad-1", "spec": tiny_spec(limits={"max_total_trials": 0})})
    with pytest.raises(InvalidRequest):
        handle_request_message(ctx, body)
    (event,) = receiver.events
    assert (event["id"], event["data"]["status"]) == ("exp-bad-1/status/1", "FAILED")
    assert event["data"]["error"].startswith("invalid request")


def test_without_a_topic_nothing_is_staged_but_trials_are_marked(tmp_path):
    ctx = local_context(tmp_path)  # the default announcer: no topic
    ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING, RunState.RUNNING, RunState.SUCCEEDED])
    eid = run_experiment(ctx)
    log = ctx.store.get_experiment(eid).event_log
    assert (log.pending, log.sent, log.failures) == ([], 0, 0)
    assert log.trials == "0-4" and log.best_number == 1  # turning events on later replays nothing


def test_a_retried_trial_is_announced_once_per_attempt(ctx, receiver):
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    eid = record.id
    step(ctx), step(ctx)
    ctx.store.put_trial(trial(eid, 0, TrialState.FAILED, error="interrupted: the driver restarted"))
    step(ctx)
    ctx.store.put_trial(trial(eid, 0, TrialState.COMPLETED, 0.9, attempt=2))
    step(ctx)
    ids = [e["id"] for e in receiver.events if e["type"] != STATUS_CHANGED]
    assert ids == [f"{eid}/trials/0/1", f"{eid}/trials/0/2", f"{eid}/best/0"]
    assert ctx.store.get_experiment(eid).event_log.retried == {"0": 2}


def test_minimize_announces_decreasing_values_only():
    from shared.events.catalog import trial_events
    from shared.records import ExperimentRecord

    record = ExperimentRecord(id="e", name="e", spec=tiny_spec(objective={"primary_metric": "log_loss"}))
    trials = [trial("e", n, TrialState.COMPLETED, v) for n, v in enumerate([0.5, 0.7, 0.4, 0.4, 0.6])]
    events, markers = trial_events(record, trials, SOURCE)
    assert [e.id for e in events if e.type == BEST_TRIAL_IMPROVED] == ["e/best/0", "e/best/2"]
    assert (markers["best_number"], markers["best_value"]) == (2, 0.4)


def test_ranges_are_compact_and_round_trip():
    numbers = {0, 1, 2, 3, 7, 9, 10}
    assert encode_ranges(numbers) == "0-3,7,9-10"
    assert decode_ranges(encode_ranges(numbers)) == numbers
    assert encode_ranges(range(1000)) == "0-999" and decode_ranges("") == set()


def test_the_outbox_is_capped_and_counts_what_it_drops():
    event = Event(id="x", type=STATUS_CHANGED, source=SOURCE, subject="/experiments/x", time=utcnow().isoformat())
    log = _staged(EventLog(), [event] * (MAX_PENDING + 5))
    assert len(log.pending) == MAX_PENDING and log.dropped == 5


def test_a_lost_clearing_write_sends_the_same_events_again_later(ctx, receiver):
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))  # SUBMITTED is staged, not yet sent
    stale = ctx.store.get_experiment(record.id)
    ctx.store.update_experiment(stale.model_copy(update={"redrives": 1}))  # another writer got there first
    assert ctx.announcer.flush(ctx.store, stale) is stale  # sent, but recording that lost the race
    assert ctx.store.get_experiment(record.id).event_log.pending  # so it is still staged
    sweep(ctx, stall_seconds=3600)
    assert [e["id"] for e in receiver.events] == [f"{record.id}/status/1"] * 2  # again, with the same id
    assert ctx.store.get_experiment(record.id).event_log.pending == []


def test_a_cancelled_experiment_announces_cancelling_then_cancelled(ctx, receiver):
    from shared.handlers import request_cancel

    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    assert step(ctx) == "provisioned"
    request_cancel(ctx, record.id)  # the HTTP path stages CANCELLING without publishing
    assert [e["data"]["status"] for e in receiver.events] == ["SUBMITTED", "PROVISIONING"]
    ctx.events.delete(ctx.events.receive(1)[0])  # the SUBMIT_RUN the cancel overtook
    assert [step(ctx) for _ in range(2)] == ["cancelled", "torn down"]
    statuses = [e["data"]["status"] for e in receiver.events if e["type"] == STATUS_CHANGED]
    assert statuses == ["SUBMITTED", "PROVISIONING", "CANCELLING", "CANCELLED"]


def test_many_trials_through_a_long_outage_wait_in_the_store_and_none_is_lost(ctx, receiver):
    """700 trials end before the first poll while the topic is down: the outbox takes what fits, the rest
    wait unannounced in the store (``behind``), and after the topic is back the sweep sends all of them."""
    receiver.stop()
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    eid = record.id
    step(ctx), step(ctx)
    for number in range(700):
        ctx.store.put_trial(trial(eid, number, TrialState.COMPLETED, 0.9 - number / 10_000))
    assert [step(ctx) for _ in range(5)] == ["running", "running", "finished", "completed", "torn down"]
    log = ctx.store.get_experiment(eid).event_log
    assert log.behind and log.dropped == 0 and len(log.pending) <= 500
    receiver.start()
    assert sweep(ctx, stall_seconds=3600)["announced"] == [eid]
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids))
    assert sorted(i for i in ids if "/trials/" in i) == sorted(f"{eid}/trials/{n}/1" for n in range(700))
    assert [i for i in ids if "/best/" in i] == [f"{eid}/best/0"]  # values only fall after trial 0
    assert [i for i in ids if "/status/" in i] == [f"{eid}/status/{n}" for n in range(1, 6)]
    log = ctx.store.get_experiment(eid).event_log
    assert not log.behind and log.pending == [] and log.trials == "0-699"
