"""A cancelled experiment keeps its best model so far (issue 30): the CANCELLING state waits, one short fenced
step at a time, for the run to end with its model, up to ``Settings.cancel_wait_seconds``, then tears down; the
record says why there is no model when there is none. The scripted backend plays the run (the local driver's
part: ``tests/test_end_to_end.py``); each test attacks one way the wait could go wrong."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from shared.config import MODEL_PREFIX
from shared.errors import BackendError, ConcurrencyConflict
from shared.handlers import cancelling, handle_event, request_cancel, submit_experiment
from shared.ports import Capabilities, Message, RunState
from shared.records import ExperimentStatus, TrialRecord, TrialState, updated, utcnow
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend

S = ExperimentStatus
KEEPS_MODEL = Capabilities(
    model_from="driver", cloud_resources=False, finds_orphans=False, restarts_driver=False, model_on_cancel=True
)


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    backend = ScriptedBackend(polls=[RunState.RUNNING])
    backend.capabilities = KEEPS_MODEL  # the instance plays a backend that keeps it
    context.backends["local"] = backend
    return context


def backend(ctx) -> ScriptedBackend:
    return ctx.backends["local"]


def next_event(ctx) -> Message:
    (message,) = ctx.events.receive(1, visibility_timeout=60)
    return message


def deliver(ctx, message: Message | None = None) -> str:
    message = message or next_event(ctx)
    outcome = handle_event(ctx, message.body)
    ctx.events.delete(message)
    return outcome


def trial(experiment_id: str, number: int, value: float | None, state: TrialState = TrialState.COMPLETED):
    metrics = {"accuracy": value} if value is not None else {}
    return TrialRecord(
        experiment_id=experiment_id, number=number, params={"max_depth": 4 + number}, state=state, value=value,
        metrics=metrics,
    )  # fmt: skip


def running_experiment(ctx, *trials: tuple[int, float | None, TrialState]) -> str:
    """An experiment RUNNING on the scripted backend with ``trials`` stored; its cancel requested."""
    record, _ = submit_experiment(ctx, load_spec(tiny_spec(limits={"max_total_trials": 6})))
    for number, value, state in trials:
        ctx.store.put_trial(trial(record.id, number, value, state))
    for _ in range(3):  # provision, submit, a poll
        deliver(ctx)
    assert ctx.store.get_experiment(record.id).status is S.RUNNING
    request_cancel(ctx, record.id)
    assert deliver(ctx) == "stale"  # the poll the cancel overtook; the CANCEL event is next
    return record.id


def run_ended(ctx, experiment_id: str, state: RunState = RunState.CANCELLED, *, model: bool = True) -> None:
    """The run ends the way the local driver's does after a cancel: the stopped trial CANCELLED, the best
    finished trial's model in the store, the outcome read by the next poll."""
    for record in ctx.store.list_trials(experiment_id):
        if record.state is TrialState.RUNNING:
            ctx.store.put_trial(updated(record, state=TrialState.CANCELLED, error="cancelled", ended_at=utcnow()))
    if model:
        ctx.store.put_artifact(experiment_id, MODEL_PREFIX + "model.pkl", b"the refit model")
    backend(ctx).polls = [state]


def test_cancel_mid_trial_waits_for_the_run_then_ends_cancelled_with_the_best_finished_trials_model(ctx):
    experiment_id = running_experiment(
        ctx, (0, 0.7, TrialState.COMPLETED), (1, 0.9, TrialState.COMPLETED), (2, None, TrialState.RUNNING)
    )
    assert deliver(ctx) == "waiting for the model"  # asked the run to stop; nothing torn down yet
    asked = ctx.store.get_experiment(experiment_id)
    assert asked.status is S.CANCELLING and asked.cancel_deadline is not None and not asked.torn_down
    assert deliver(ctx) == "waiting for the model"  # the driver still refits
    assert backend(ctx).count("cancel") == 1 and backend(ctx).count("teardown") == 0
    run_ended(ctx, experiment_id)
    assert deliver(ctx) == "cancelled"
    assert backend(ctx).count("finalize") == 1 and backend(ctx).count("teardown") == 0  # the model came first
    assert deliver(ctx) == "torn down"
    final = ctx.store.get_experiment(experiment_id)
    assert final.status is S.CANCELLED and final.torn_down and final.no_model is None
    assert final.best is not None and (final.best.number, final.best.value) == (1, 0.9)
    assert final.best.model_uri == f"/api/experiments/{experiment_id}/model"
    states = {t.number: t.state for t in ctx.store.list_trials(experiment_id)}
    assert states == {0: TrialState.COMPLETED, 1: TrialState.COMPLETED, 2: TrialState.CANCELLED}
    assert [h.status for h in final.history][-2:] == [S.CANCELLING, S.CANCELLED]


def test_cancel_before_any_trial_finished_ends_with_no_model_and_says_why(ctx):
    experiment_id = running_experiment(ctx, (0, None, TrialState.RUNNING))
    assert deliver(ctx) == "waiting for the model"
    run_ended(ctx, experiment_id, model=False)
    assert deliver(ctx) == "cancelled"
    assert deliver(ctx) == "torn down"
    final = ctx.store.get_experiment(experiment_id)
    assert final.status is S.CANCELLED and final.best is None
    assert final.no_model == cancelling.NO_TRIAL_FINISHED
    assert backend(ctx).count("finalize") == 0  # nothing to take in


def test_a_run_that_never_answers_is_torn_down_when_the_wait_runs_out(ctx):
    experiment_id = running_experiment(ctx, (0, 0.8, TrialState.COMPLETED), (1, None, TrialState.RUNNING))
    assert deliver(ctx) == "waiting for the model"
    for _ in range(3):
        assert deliver(ctx) == "waiting for the model"  # RUNNING for ever: the driver does not answer
    record = ctx.store.get_experiment(experiment_id)
    assert record.cancel_deadline is not None
    # The wait's time passes (the deadline is stored: a restarted host keeps it, nothing counts in memory).
    ctx.store.update_experiment(updated(record, cancel_deadline=utcnow() - timedelta(seconds=1)))
    assert deliver(ctx) == "cancelled"
    assert deliver(ctx) == "torn down"
    final = ctx.store.get_experiment(experiment_id)
    assert final.status is S.CANCELLED and final.torn_down and backend(ctx).count("teardown") == 1
    assert final.no_model is not None and "did not end with its best model within 600 s" in final.no_model
    assert final.best is not None and final.best.model_uri is None  # the best trial, without a model
    (stopped,) = [t for t in ctx.store.list_trials(experiment_id) if t.number == 1]
    assert stopped.state is TrialState.CANCELLED  # the teardown ended it


def test_the_wait_is_as_long_as_the_setting_says(ctx):
    ctx.settings = dataclasses.replace(ctx.settings, cancel_wait_seconds=0)
    experiment_id = running_experiment(ctx, (0, 0.8, TrialState.COMPLETED), (1, None, TrialState.RUNNING))
    assert deliver(ctx) == "waiting for the model"
    assert deliver(ctx) == "cancelled"  # the first poll after the ask is already past a 0 s wait
    assert "within 0 s" in (ctx.store.get_experiment(experiment_id).no_model or "")


def test_the_cancel_event_delivered_twice_asks_once_and_the_duplicate_is_stale(ctx):
    experiment_id = running_experiment(ctx, (0, 0.8, TrialState.COMPLETED), (1, None, TrialState.RUNNING))
    cancel = next_event(ctx)
    assert handle_event(ctx, cancel.body) == "waiting for the model"
    assert handle_event(ctx, cancel.body) == "stale"  # redelivered after it acted
    ctx.events.delete(cancel)
    wait = next_event(ctx)
    before = ctx.store.get_experiment(experiment_id)
    assert handle_event(ctx, wait.body) == "waiting for the model"
    assert handle_event(ctx, wait.body) == "stale"
    ctx.events.delete(wait)
    # Two hosts took the same message at once: both read the record before either wrote; the loser's write
    # is refused (optimistic concurrency), its message comes back and is then stale.
    with pytest.raises(ConcurrencyConflict):
        cancelling.cancel_step(ctx, before)
    assert backend(ctx).count("cancel") == 1
    run_ended(ctx, experiment_id)
    assert deliver(ctx) == "cancelled"
    assert deliver(ctx) == "torn down"
    assert ctx.events.count() == 0
    final = ctx.store.get_experiment(experiment_id)
    assert final.status is S.CANCELLED and final.best is not None and final.best.model_uri is not None
    assert backend(ctx).count("teardown") == 1 and backend(ctx).count("finalize") == 1


def test_a_run_gone_during_the_wait_ends_at_once_and_the_record_says_why(ctx):
    experiment_id = running_experiment(ctx, (0, 0.8, TrialState.COMPLETED), (1, None, TrialState.RUNNING))
    assert deliver(ctx) == "waiting for the model"
    backend(ctx).polls, backend(ctx).error = [RunState.FAILED], "the driver ended without an outcome"
    assert deliver(ctx) == "cancelled"
    final = ctx.store.get_experiment(experiment_id)
    assert final.no_model == "the run ended without its best model: the driver ended without an outcome"
    assert final.error is None  # a cancel is no failure


def test_a_model_that_cannot_be_taken_in_is_no_model_with_the_reason(ctx):
    experiment_id = running_experiment(ctx, (0, 0.8, TrialState.COMPLETED))
    assert deliver(ctx) == "waiting for the model"
    run_ended(ctx, experiment_id, model=False)
    backend(ctx).fail_on["finalize"] = BackendError("the best trial saved no model", retryable=False)
    assert deliver(ctx) == "cancelled"
    final = ctx.store.get_experiment(experiment_id)
    assert final.no_model == "the best trial's model could not be taken in: the best trial saved no model"


def test_a_backend_that_keeps_no_model_is_cancelled_at_once_and_says_so(ctx):
    backend(ctx).capabilities = ScriptedBackend.capabilities.model_copy(
        update={"reasons": {"model_on_cancel": "its trials save no model"}}
    )
    experiment_id = running_experiment(ctx, (0, 0.8, TrialState.COMPLETED))
    assert deliver(ctx) == "cancelled"
    final = ctx.store.get_experiment(experiment_id)
    assert final.no_model == "the local backend makes no model of a cancelled run: its trials save no model"
    assert backend(ctx).count("poll") == 1  # the wait never polled


def test_a_run_cancelled_before_it_started_has_no_model_because_no_trial_ran(ctx):
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    request_cancel(ctx, record.id)
    assert deliver(ctx) == "stale"  # the provision event
    assert deliver(ctx) == "cancelled"
    final = ctx.store.get_experiment(record.id)
    assert final.no_model == "the run had not started: no trial ran" and backend(ctx).count("cancel") == 0
