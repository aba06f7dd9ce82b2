"""The state machine as a table (issue 21): one writer for every step (teardown included), the trials read
at most once per step, the dispatch and the statuses each event acts in as one table, and the cost rules
in ``shared/cost/guard.py`` (local adapters, the scripted fake backend)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.cost.guard import budget_stops, cost_guard_reason, run_ledger
from shared.handlers import cancelling, handle_event, machine, request_cancel, submit_experiment, writer
from shared.ports import RunState
from shared.records import (
    TERMINAL_STATUSES,
    CostLedger,
    EventType,
    ExperimentEvent,
    ExperimentRecord,
    ExperimentStatus,
    TrialRecord,
    TrialState,
)
from shared.spec import load_spec
from tests.control_plane import tiny_spec
from tests.fakes.scripted import ScriptedBackend

S = ExperimentStatus


def test_the_table_names_a_step_for_every_event_and_an_event_for_every_live_status():
    assert set(machine.MACHINE) == set(EventType)
    assert {event: rule[0] for event, rule in machine.MACHINE.items()} == machine.STATUS_FOR_EVENT
    for status in S:
        if status in TERMINAL_STATUSES:
            assert status not in machine.EVENT_FOR_STATUS
            assert status in machine.STATUS_FOR_EVENT[EventType.TEARDOWN]
        else:  # the sweep re-drives a live status with an event that acts in it
            assert status in machine.STATUS_FOR_EVENT[machine.EVENT_FOR_STATUS[status]]


class Audit:
    """Counts, per delivered event, the trial listings and the record writes, and whether each write came
    through :func:`writer.transition`."""

    def __init__(self, ctx, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listings = 0
        self.writes: list[bool] = []  # True: inside transition
        self._inside = 0
        store = ctx.store
        list_trials, update = store.list_trials, store.update_experiment

        def counted_list(*args, **kwargs):
            self.listings += 1
            return list_trials(*args, **kwargs)

        def audited_update(record):
            self.writes.append(self._inside > 0)
            return update(record)

        real_transition = writer.transition

        def tracked_transition(*args, **kwargs):
            self._inside += 1
            try:
                return real_transition(*args, **kwargs)
            finally:
                self._inside -= 1

        monkeypatch.setattr(store, "list_trials", counted_list)
        monkeypatch.setattr(store, "update_experiment", audited_update)
        for module in (machine, cancelling):  # the modules whose steps write
            monkeypatch.setattr(module, "transition", tracked_transition)

    def reset(self) -> None:
        self.listings, self.writes = 0, []


def deliver_all(ctx, audit: Audit, most: int = 100) -> list[tuple[str, int, list[bool]]]:
    """Deliver the queued events (``most`` at most), noting for each what it did, its trial listings and
    its writes."""
    seen: list[tuple[str, int, list[bool]]] = []
    while ctx.events.count() and len(seen) < most:
        (message,) = ctx.events.receive(1, visibility_timeout=60)
        audit.reset()
        outcome = handle_event(ctx, message.body)
        ctx.events.delete(message)
        seen.append((outcome, audit.listings, list(audit.writes)))
    return seen


@pytest.mark.parametrize("ending", ["completed", "cancelled", "failed"])
def test_every_step_writes_through_the_one_writer_and_reads_the_trials_at_most_once(ctx, monkeypatch, ending):
    backend = ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING, RunState.SUCCEEDED])
    if ending == "failed":
        backend.polls = [RunState.RUNNING, RunState.FAILED]
        backend.error = "the run failed on the compute"
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    audit = Audit(ctx, monkeypatch)
    ctx.store.put_trial(TrialRecord(experiment_id=record.id, number=0, params={"max_depth": 4},
                                    state=TrialState.COMPLETED, value=0.8, metrics={"accuracy": 0.8}))  # fmt: skip
    ctx.store.put_trial(TrialRecord(experiment_id=record.id, number=1, params={"max_depth": 6},
                                    state=TrialState.RUNNING))  # fmt: skip
    steps = deliver_all(ctx, audit, most=3)  # provision, submit, the first poll
    if ending == "cancelled":
        request_cancel(ctx, record.id)
    steps += deliver_all(ctx, audit)
    for outcome, listings, writes in steps:
        assert listings <= 1, (outcome, listings)
        if outcome != "stale":  # the poll overtaken by the cancel does nothing
            assert writes and all(writes), (outcome, writes)  # every write came through transition
    final = ctx.store.get_experiment(record.id)
    assert final.torn_down and final.status_emitted and final.status.value.lower() == ending
    assert steps[-1][0] == "torn down"
    (trial,) = [t for t in ctx.store.list_trials(record.id) if t.number == 1]
    assert trial.state is (TrialState.CANCELLED if ending == "cancelled" else TrialState.FAILED)


def test_the_teardown_write_is_fenced_and_a_repeat_is_stale(ctx):
    ctx.backends["local"] = ScriptedBackend(polls=[RunState.SUCCEEDED])
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    outcomes = []
    while ctx.events.count():
        (message,) = ctx.events.receive(1, visibility_timeout=60)
        outcomes.append(handle_event(ctx, message.body))
        ctx.events.delete(message)
        if outcomes[-1] == "torn down":
            teardown = message
    assert outcomes[-2:] == ["failed", "torn down"]  # no trial completed, then the teardown
    final = ctx.store.get_experiment(record.id)
    event = ExperimentEvent.model_validate_json(teardown.body)
    assert final.event_seq == event.seq + 1 and final.history[-1].status is S.FAILED  # no transition added
    assert handle_event(ctx, teardown.body) == "stale"


# ------------------------------------------------------------------------------ shared/cost/guard.py
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def priced(**limits: object) -> ExperimentRecord:
    document = tiny_spec(compute={"backend": "local", "n_workers": 2, "equivalent_vm_size": "Standard_NC4as_T4_v3"})
    document["limits"] = {**document["limits"], **limits}
    return ExperimentRecord(id="exp-g", name="g", spec=load_spec(document), started_at=T0)


def test_the_ledger_is_a_function_of_the_record_its_trials_and_a_clock():
    record = priced(max_cost=1.0)
    early, late = run_ledger(record, [], T0 + timedelta(minutes=1)), run_ledger(record, [], T0 + timedelta(hours=5))
    assert isinstance(early, CostLedger) and isinstance(late, CostLedger)
    assert early.spent_usd < late.spent_usd and early.budget_usd == 1.0
    assert not budget_stops(early, running=True) and budget_stops(late, running=True)
    assert not budget_stops(late, running=False)  # a run that ended is finalized, not stopped
    stopped = run_ledger(record.model_copy(update={"cost": late.model_copy(update={"stopped": "budget reached"})}),
                         [], T0 + timedelta(hours=6))  # fmt: skip
    assert stopped is not None and stopped.stopped == "budget reached"  # a stop once recorded stays
    assert run_ledger(record.model_copy(update={"started_at": None}), [], T0) is None


def test_the_guard_stops_a_run_past_its_timeout_with_a_grace():
    record = priced(timeout=3600)
    assert cost_guard_reason(record, T0 + timedelta(seconds=3600 * 1.1 + 299)) is None
    reason = cost_guard_reason(record, T0 + timedelta(seconds=3600 * 1.1 + 301))
    assert reason is not None and "timeout of 3600 s" in reason
