"""The experiment state machine: short, idempotent steps driven by queue events.

SUBMITTED -> PROVISIONING -> RUNNING -> FINALIZING -> COMPLETED, or FAILED, or CANCELLING -> CANCELLED.

Every transition bumps the record's ``event_seq`` and the event it sends carries the new value; a
handler acts only on an event whose ``seq`` equals the record's (a fencing token), so a redelivered,
duplicated or overtaken event changes nothing. Writes use optimistic concurrency: a handler that loses
a race raises ``ConcurrencyConflict``, its message is redelivered, and the redelivery is then stale.
An event lost between a write and its send is recovered by ``shared.handlers.sweeper.sweep``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError

from shared.context import Context
from shared.cost.guard import budget_stops, cost_guard_reason, run_ledger
from shared.cost.ledger import BUDGET_REACHED, public_cost
from shared.errors import BackendError, ConcurrencyConflict, CorruptRecord, NotFound
from shared.handlers.cancelling import cancel_step
from shared.handlers.writer import S, StepUpdate, finalized, progress, transition, with_model_uri
from shared.ports import RunState, merge_handle
from shared.records import (
    TERMINAL_STATUSES,
    EventType,
    ExperimentEvent,
    ExperimentRecord,
    ExperimentStatus,
    TrialState,
    utcnow,
)
from shared.telemetry import steps as telemetry_steps
from shared.trials import end_running_trials

log = logging.getLogger(__name__)

MAX_REDRIVES = 3
"""How often the sweep re-drives a stalled experiment before failing it."""
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ConcurrencyConflict, OSError, AzureError, sqlite3.OperationalError)
"""Errors a step leaves to the message's redelivery: a lost optimistic write, the network, the store being
busy. Any other error (but a ``BackendError``, which says itself) fails the experiment at once."""


def handle_event(ctx: Context, body: str) -> str:
    """Handle one ``experiment-events`` message; returns what happened (for logs and tests). The step is
    a span of the experiment's trace (``shared.telemetry.steps``)."""
    event = ExperimentEvent.model_validate_json(body)
    with telemetry_steps.step_span(event.type.value, event) as step:
        return step.done(_handle(ctx, event, step))


def _handle(ctx: Context, event: ExperimentEvent, span: telemetry_steps.Step) -> str:
    try:
        record = ctx.store.get_experiment(event.experiment_id)
    except NotFound:
        log.warning("event %s for unknown experiment %s dropped", event.type, event.experiment_id)
        return "unknown experiment"
    except CorruptRecord as exc:
        # Nothing can drive a record nobody can read: contain it (its compute's credential ends) and drop.
        ctx.areas.revoke_compute_credential(event.experiment_id)
        log.error("event %s dropped, credential revoked: %s", event.type, exc)
        return "unreadable record"
    telemetry_steps.step_record(span, record.backend, record.status.value)
    if event.seq != record.event_seq or record.status not in STATUS_FOR_EVENT[event.type]:
        return "stale"
    step = STEPS[event.type]
    try:
        return step(ctx, record)
    except BackendError as exc:
        if exc.retryable:
            raise  # the message is redelivered after the visibility timeout
        return _fail_step(ctx, record, "backend error", str(exc), exc)
    except TRANSIENT_ERRORS:
        raise  # the store, the network: the redelivery may find them back (a lost race finds itself stale)
    except Exception as exc:  # a defect, or data no redelivery changes: it would fail alike until poisoned
        log.exception("the %s step of %s failed", event.type.value, record.id)
        error = f"the {event.type.value} step failed: {type(exc).__name__}: {exc}"
        return _fail_step(ctx, record, "step error", error, exc)


def _fail_step(ctx: Context, record: ExperimentRecord, reason: str, error: str, exc: Exception) -> str:
    """FAILED now with ``error``, then teardown; an experiment that ended meanwhile keeps its end (the error
    is raised again: its message is redelivered, then stale)."""
    current = ctx.store.get_experiment(record.id)
    if current.status in TERMINAL_STATUSES:
        raise exc
    transition(ctx, current, S.FAILED, reason, next_event=EventType.TEARDOWN, update=StepUpdate(error=error))
    return "failed"


def _provision(ctx: Context, record: ExperimentRecord) -> str:
    if record.status is S.SUBMITTED:
        # Not fenced: if provisioning fails, this same event is redelivered and must still act.
        record = transition(ctx, record, S.PROVISIONING, "provisioning compute", fence=False)
    backend = ctx.backend(record.backend)
    handle = merge_handle(backend, record.backend_state, backend.provision(record))
    next_event = EventType.SUBMIT_RUN
    transition(
        ctx, record, S.PROVISIONING, "provisioned", next_event=next_event, update=StepUpdate(backend_state=handle)
    )
    return "provisioned"


def _submit_run(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    handle = merge_handle(backend, record.backend_state, backend.submit(record))
    update = StepUpdate(backend_state=handle, started_at=record.started_at or utcnow())
    delay = ctx.settings.poll_seconds
    transition(ctx, record, S.RUNNING, "run submitted", next_event=EventType.POLL, delay=delay, update=update)
    return "submitted"


def progress_updates(ctx: Context, record: ExperimentRecord) -> dict[str, Any]:
    """:func:`progress` of the stored trials, as the fields it sets (for tests and tools)."""
    return progress(ctx, record, ctx.store.list_trials(record.id)).changes()


def _poll(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    status = backend.poll(record)  # the compute's new trials reach the store on the way
    trials, now = ctx.store.list_trials(record.id), utcnow()
    running = status.state in {RunState.PENDING, RunState.RUNNING}
    update = progress(ctx, record, trials)
    handle = merge_handle(backend, record.backend_state, status.updates) if status.updates else None
    if handle is not None:
        update = update | StepUpdate(backend_state=handle)
    driver_stopped = status.outcome is not None and status.outcome.reason == BUDGET_REACHED
    ledger = run_ledger(record, trials, now, driver_stopped=driver_stopped)
    if ledger is not None:
        update = update | StepUpdate(cost=ledger)
    if budget_stops(ledger, running):
        # The hard stop: what runs is cancelled; the trials so far are kept and the best one finalized.
        assert ledger is not None
        stopped = backend.cancel(record)
        if stopped:
            update = update | StepUpdate(backend_state=merge_handle(backend, handle or record.backend_state, stopped))
        update = update | StepUpdate(cost=ledger.model_copy(update={"stopped": BUDGET_REACHED}))
        transition(ctx, record, S.FINALIZING, BUDGET_REACHED, next_event=EventType.FINALIZE, update=update)
        return BUDGET_REACHED
    guard = cost_guard_reason(record, now)
    if guard and running:
        backend.cancel(record)
        update = update | StepUpdate(error=guard)
        transition(ctx, record, S.FAILED, guard, next_event=EventType.TEARDOWN, update=update)
        return "budget exceeded"
    if status.state is RunState.SUCCEEDED:
        why = status.outcome.reason if status.outcome is not None else None  # which limit or rule ended it
        finished = f"run finished: {why}" if why else "run finished"
        transition(ctx, record, S.FINALIZING, finished, next_event=EventType.FINALIZE, update=update)
        return "finished"
    if status.state is RunState.FAILED:
        update = update | StepUpdate(error=status.error or "the run failed")
        transition(ctx, record, S.FAILED, "run failed", next_event=EventType.TEARDOWN, update=update)
        return "failed"
    if status.state is RunState.CANCELLED:
        transition(ctx, record, S.CANCELLED, "run cancelled", next_event=EventType.TEARDOWN, update=update)
        return "cancelled"
    delay = ctx.settings.poll_seconds
    transition(ctx, record, S.RUNNING, "poll", next_event=EventType.POLL, delay=delay, update=update)
    return "running"


def _finalize(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    handle_update = backend.finalize(record)
    trials = ctx.store.list_trials(record.id)
    update = progress(ctx, record, trials) | finalized(backend, record, handle_update)
    ledger = run_ledger(record, trials, utcnow())
    budget_reached = ledger is not None and ledger.stopped == BUDGET_REACHED
    if ledger is not None:
        update = update | StepUpdate(cost=ledger)
    best = update.best
    if best is None:
        why = f"{BUDGET_REACHED} before any trial completed" if budget_reached else "no trial completed"
        update = update | StepUpdate(error=record.error or why)
        transition(ctx, record, S.FAILED, why, next_event=EventType.TEARDOWN, update=update)
        return "failed"
    update = update | StepUpdate(best=with_model_uri(ctx, record, best))
    reason = BUDGET_REACHED if budget_reached else "completed"
    transition(ctx, record, S.COMPLETED, reason, next_event=EventType.TEARDOWN, update=update)
    return "completed"


def _teardown(ctx: Context, record: ExperimentRecord) -> str:
    """Revoke the compute's credential first (from then on it writes nothing we read), then delete the
    compute; nothing the compute wrote is read on the way, so nothing it wrote can block this step. The
    status stays; the write goes through :func:`transition` like every other."""
    ctx.areas.revoke_compute_credential(record.id)
    handle = record.backend_state
    if record.backend_state and not record.torn_down:
        backend = ctx.backend(record.backend)
        handle = merge_handle(backend, record.backend_state, backend.teardown(record))
    # The compute is gone: nothing can still be running.
    stopped = TrialState.CANCELLED if record.status is S.CANCELLED else TrialState.FAILED
    trials = ctx.store.list_trials(record.id)
    why = f"stopped: experiment {record.status.value}"
    ended = {t.number: t for t in end_running_trials(ctx.store, record.id, why, stopped, trials=trials)}
    trials = [ended.get(t.number, t) for t in trials]
    if not record.status_emitted:
        ctx.status_queue.send(status_message(record))
    update = StepUpdate(
        torn_down=True, status_emitted=True, backend_state=handle, event_log=ctx.announcer.stage_trials(record, trials)
    )
    transition(ctx, record, record.status, "torn down", update=update)
    return "torn down"


# ------------------------------------------------------------------------------------ the machine
Step = Callable[[Context, ExperimentRecord], str]
MACHINE: dict[EventType, tuple[frozenset[ExperimentStatus], Step]] = {
    EventType.PROVISION: (frozenset({S.SUBMITTED, S.PROVISIONING}), _provision),
    EventType.SUBMIT_RUN: (frozenset({S.PROVISIONING}), _submit_run),
    EventType.POLL: (frozenset({S.RUNNING}), _poll),
    EventType.FINALIZE: (frozenset({S.FINALIZING}), _finalize),
    EventType.CANCEL: (frozenset({S.CANCELLING}), cancel_step),
    EventType.TEARDOWN: (TERMINAL_STATUSES, _teardown),
}
"""Each event: the statuses it acts in (in any other it is stale) and the step it runs. Every step is short
and idempotent, reads the trials at most once, and writes through :func:`transition` only."""
STATUS_FOR_EVENT: dict[EventType, frozenset[ExperimentStatus]] = {event: rule[0] for event, rule in MACHINE.items()}
STEPS: dict[EventType, Step] = {event: rule[1] for event, rule in MACHINE.items()}
EVENT_FOR_STATUS: dict[ExperimentStatus, EventType] = {
    S.SUBMITTED: EventType.PROVISION,
    S.PROVISIONING: EventType.PROVISION,
    S.RUNNING: EventType.POLL,
    S.FINALIZING: EventType.FINALIZE,
    S.CANCELLING: EventType.CANCEL,
}
"""The event that moves an experiment on from each live status (the sweep re-drives with it)."""


def status_message(record: ExperimentRecord) -> str:
    """The one message per terminal experiment on ``experiment-status`` (consumers dedupe by id). Bounded
    by construction (the error is clipped text, the best trial's metrics stay out, its params are bounded),
    so it always fits a queue message."""
    best = (
        record.best.model_dump(mode="json", include={"number", "value", "params", "model_uri"}) if record.best else None
    )
    return json.dumps(
        {
            "id": record.id,
            "name": record.name,
            "status": record.status.value,
            "best": best,
            "error": record.error,
            "trials_done": record.trials_done,
            "ended_at": record.ended_at.isoformat() if record.ended_at else None,
            "cost": public_cost(record.cost),
        }
    )
