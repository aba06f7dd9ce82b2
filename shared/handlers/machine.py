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
from typing import Any

from azure.core.exceptions import AzureError

from shared.config import MODEL_PREFIX
from shared.context import Context
from shared.cost.catalogue import load_catalogue
from shared.cost.ledger import BUDGET_REACHED, CostLedger, compute_ledger, public_cost, rates_for
from shared.dashboard.artifacts import ensure_plots
from shared.errors import BackendError, ConcurrencyConflict, CorruptRecord, NotFound
from shared.ports import ComputeBackend, RunState, RunStatus, merge_handle
from shared.records import (
    TERMINAL_STATUSES,
    EventType,
    ExperimentEvent,
    ExperimentRecord,
    ExperimentStatus,
    RegisteredModel,
    Transition,
    TrialState,
    best_of,
    updated,
    utcnow,
)
from shared.telemetry import steps as telemetry_steps
from shared.telemetry import traceparent_for
from shared.trials import counts_by_state, end_running_trials

log = logging.getLogger(__name__)

S = ExperimentStatus
MAX_REDRIVES = 3
"""How often the sweep re-drives a stalled experiment before failing it."""
STATUS_FOR_EVENT: dict[EventType, frozenset[ExperimentStatus]] = {
    EventType.PROVISION: frozenset({S.SUBMITTED, S.PROVISIONING}),
    EventType.SUBMIT_RUN: frozenset({S.PROVISIONING}),
    EventType.POLL: frozenset({S.RUNNING}),
    EventType.FINALIZE: frozenset({S.FINALIZING}),
    EventType.CANCEL: frozenset({S.CANCELLING}),
    EventType.TEARDOWN: TERMINAL_STATUSES,
}
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ConcurrencyConflict, OSError, AzureError, sqlite3.OperationalError)
"""Errors a step leaves to the message's redelivery: a lost optimistic write, the network, the store being
busy. Any other error (but a ``BackendError``, which says itself) fails the experiment at once."""
EVENT_FOR_STATUS: dict[ExperimentStatus, EventType] = {
    S.SUBMITTED: EventType.PROVISION,
    S.PROVISIONING: EventType.PROVISION,
    S.RUNNING: EventType.POLL,
    S.FINALIZING: EventType.FINALIZE,
    S.CANCELLING: EventType.CANCEL,
}


def send_event(ctx: Context, event_type: EventType, record: ExperimentRecord, delay: int = 0) -> None:
    event = ExperimentEvent(
        type=event_type,
        experiment_id=record.id,
        seq=record.event_seq,
        delay_s=delay,
        traceparent=traceparent_for(record.traceparent),  # the next step is a child of this one
    )
    ctx.events.send(event.model_dump_json(), delay_seconds=delay)


def transition(
    ctx: Context,
    record: ExperimentRecord,
    status: ExperimentStatus,
    reason: str,
    *,
    next_event: EventType | None = None,
    delay: int = 0,
    fence: bool = True,
    announce: bool = True,
    **updates: Any,
) -> ExperimentRecord:
    """Write the new status, then send ``next_event``. ``fence`` bumps the fencing token, which makes
    every event already sent stale; a step that must stay retryable by its own event passes False.

    A status change stages its CloudEvent in the same write; ``announce`` then sends what is staged
    (bounded retries; never raises) before ``next_event``. HTTP paths pass False: the next step sends it.
    """
    changed, before = status != record.status, record.status
    history = list(record.history)
    if changed:
        history.append(Transition(at=utcnow(), status=status, reason=reason))
    fields: dict[str, Any] = {
        "status": status,
        "event_seq": record.event_seq + (1 if fence else 0),
        "updated_at": utcnow(),
        "history": history,
        **updates,
    }
    if "backend_state" in updates:  # what users see of the compute follows its handle
        backend = ctx.backend(record.backend)
        fields["compute"] = backend.handle_type.model_validate(updates["backend_state"]).compute_report()
    if status in TERMINAL_STATUSES and record.ended_at is None:
        fields.setdefault("ended_at", utcnow())
    candidate = updated(record, **fields)
    if changed:
        candidate = ctx.announcer.stage_status(candidate)
    record = ctx.store.update_experiment(candidate)
    telemetry_steps.transition(record.id, record.backend, before.value, status.value, record.cost)
    if announce:
        record = ctx.announcer.flush(ctx.store, record)
    if next_event is not None:
        send_event(ctx, next_event, record, delay)
    return record


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
    step = {
        EventType.PROVISION: _provision,
        EventType.SUBMIT_RUN: _submit_run,
        EventType.POLL: _poll,
        EventType.FINALIZE: _finalize,
        EventType.CANCEL: _cancel,
        EventType.TEARDOWN: _teardown,
    }[event.type]
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
    transition(ctx, current, S.FAILED, reason, next_event=EventType.TEARDOWN, error=error)
    return "failed"


def _provision(ctx: Context, record: ExperimentRecord) -> str:
    if record.status is S.SUBMITTED:
        # Not fenced: if provisioning fails, this same event is redelivered and must still act.
        record = transition(ctx, record, S.PROVISIONING, "provisioning compute", fence=False)
    backend = ctx.backend(record.backend)
    handle = merge_handle(backend, record.backend_state, backend.provision(record))
    transition(ctx, record, S.PROVISIONING, "provisioned", next_event=EventType.SUBMIT_RUN, backend_state=handle)
    return "provisioned"


def _submit_run(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    handle = merge_handle(backend, record.backend_state, backend.submit(record))
    transition(
        ctx,
        record,
        S.RUNNING,
        "run submitted",
        next_event=EventType.POLL,
        delay=ctx.settings.poll_seconds,
        backend_state=handle,
        started_at=record.started_at or utcnow(),
    )
    return "submitted"


def progress_updates(ctx: Context, record: ExperimentRecord) -> dict[str, Any]:
    """Progress fields from the trial records: done/total, best so far, last progress time, and the
    events of trials finished since the last step (the compute writes trials; we learn of them here).

    ``trials_done`` counts the trials that ended with a result (completed, pruned, timed out): a failed or
    cancelled attempt is no progress towards the budget's answer, so a run whose trials all fail shows 0/N, not N/N.
    Any trial ending, failed or not, still shows the run is alive (``last_progress_at``)."""
    trials = ctx.store.list_trials(record.id)
    unfinished = {TrialState.RUNNING.value, TrialState.FAILED.value, TrialState.CANCELLED.value}
    done = sum(n for state, n in counts_by_state(trials).items() if state not in unfinished)
    updates: dict[str, Any] = {"trials_done": done, "best": best_of(trials, record.goal) or record.best}
    updates["event_log"] = ctx.announcer.stage_trials(record, trials)
    ended = any(t.ended_at is not None and t.ended_at > record.last_progress_at for t in trials)
    if done != record.trials_done or ended:
        updates["last_progress_at"] = utcnow()
        updates["redrives"] = 0  # progress: earlier stalls no longer count against the experiment
    return updates


def _poll(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    status = backend.poll(record)
    updates = progress_updates(ctx, record)
    if status.updates:
        updates["backend_state"] = merge_handle(backend, record.backend_state, status.updates)
    if _budget_stop(ctx, record, backend, status, updates):
        return BUDGET_REACHED
    guard = cost_guard_reason(record)
    if guard and status.state in {RunState.PENDING, RunState.RUNNING}:
        backend.cancel(record)
        transition(ctx, record, S.FAILED, guard, next_event=EventType.TEARDOWN, error=guard, **updates)
        return "budget exceeded"
    if status.state is RunState.SUCCEEDED:
        why = status.outcome.reason if status.outcome is not None else None  # which limit or rule ended it
        finished = f"run finished: {why}" if why else "run finished"
        transition(ctx, record, S.FINALIZING, finished, next_event=EventType.FINALIZE, **updates)
        return "finished"
    if status.state is RunState.FAILED:
        error = status.error or "the run failed"
        transition(ctx, record, S.FAILED, "run failed", next_event=EventType.TEARDOWN, error=error, **updates)
        return "failed"
    if status.state is RunState.CANCELLED:
        transition(ctx, record, S.CANCELLED, "run cancelled", next_event=EventType.TEARDOWN, **updates)
        return "cancelled"
    transition(ctx, record, S.RUNNING, "poll", next_event=EventType.POLL, delay=ctx.settings.poll_seconds, **updates)
    return "running"


def _budget_stop(
    ctx: Context, record: ExperimentRecord, backend: ComputeBackend, status: RunStatus, updates: dict[str, Any]
) -> bool:
    """Put the cost ledger in ``updates``; at ``limits.max_cost`` cancel what runs and finalize (True)."""
    ledger = cost_ledger(ctx, record)
    if ledger is None:
        return False
    if status.outcome is not None and status.outcome.reason == BUDGET_REACHED:
        ledger.stopped = BUDGET_REACHED  # the driver stopped launching trials at the budget
    updates["cost"] = ledger
    if not (ledger.exhausted and status.state in {RunState.PENDING, RunState.RUNNING}):
        return False
    # The hard stop: what runs is cancelled; the trials so far are kept and the best one finalized.
    stopped = backend.cancel(record)
    if stopped:
        updates["backend_state"] = merge_handle(backend, updates.get("backend_state", record.backend_state), stopped)
    updates["cost"] = ledger.model_copy(update={"stopped": BUDGET_REACHED})
    transition(ctx, record, S.FINALIZING, BUDGET_REACHED, next_event=EventType.FINALIZE, **updates)
    return True


def cost_ledger(ctx: Context, record: ExperimentRecord) -> CostLedger | None:
    """The experiment's cost so far (node-seconds x the catalogue's prices), or None when unpriced."""
    if record.started_at is None:
        return None
    spec = record.run_spec
    rates = rates_for(spec, load_catalogue())
    if rates is None:
        return None
    ledger = compute_ledger(rates, ctx.store.list_trials(record.id), record.started_at, utcnow(), spec.limits.max_cost)
    if record.cost is not None and record.cost.stopped:
        ledger.stopped = record.cost.stopped
    return ledger


def cost_guard_reason(record: ExperimentRecord) -> str | None:
    """Why the cost guard stops this run (None: it does not): past the experiment's timeout (with a
    grace period), or more node-hours spent than ``compute.max_node_hours`` by the backend's own rule
    (its compute section's billing profile)."""
    if record.started_at is None:
        return None
    elapsed = (utcnow() - record.started_at).total_seconds()
    spec = record.run_spec
    timeout = spec.limits.timeout
    if timeout is not None and elapsed > float(timeout) * 1.1 + 300:
        return f"cost guard: running {elapsed:.0f} s, past the experiment timeout of {timeout} s"
    max_node_hours = getattr(spec.compute, "max_node_hours", None)
    if max_node_hours:
        spent = spec.compute.billing(spec).node_hours(elapsed, overheads=False)
        if spent > float(max_node_hours):
            return f"cost guard: {spent:.2f} node-hours used, over max_node_hours={max_node_hours}"
    return None


def _finalize(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    handle_update = backend.finalize(record)
    ensure_plots(ctx.store, record)  # SVG/HTML charts when the compute saved none (pure Python, never raises)
    updates = progress_updates(ctx, record)
    if handle_update:
        handle = merge_handle(backend, record.backend_state, handle_update)
        updates["backend_state"] = handle
        if handle.get("registered_model"):
            updates["registered_model"] = RegisteredModel.model_validate(handle["registered_model"])
    ledger = cost_ledger(ctx, record)
    budget_reached = ledger is not None and ledger.stopped == BUDGET_REACHED
    if ledger is not None:
        updates["cost"] = ledger
    best = updates.get("best")
    if best is None:
        why = f"{BUDGET_REACHED} before any trial completed" if budget_reached else "no trial completed"
        transition(ctx, record, S.FAILED, why, next_event=EventType.TEARDOWN, error=record.error or why, **updates)
        return "failed"
    model_files = ctx.store.list_artifacts(record.id, MODEL_PREFIX)
    if model_files and best.model_uri is None:
        updates["best"] = updated(best, model_uri=f"/api/experiments/{record.id}/model")
    reason = BUDGET_REACHED if budget_reached else "completed"
    transition(ctx, record, S.COMPLETED, reason, next_event=EventType.TEARDOWN, **updates)
    return "completed"


def _cancel(ctx: Context, record: ExperimentRecord) -> str:
    updates: dict[str, Any] = {}
    if record.backend_state:
        backend = ctx.backend(record.backend)
        updates["backend_state"] = merge_handle(backend, record.backend_state, backend.cancel(record))
    updates |= progress_updates(ctx, record)
    transition(ctx, record, S.CANCELLED, "cancelled", next_event=EventType.TEARDOWN, **updates)
    return "cancelled"


def _teardown(ctx: Context, record: ExperimentRecord) -> str:
    """Revoke the compute's credential first (from then on it writes nothing we read), then delete the
    compute; nothing the compute wrote is read on the way, so nothing it wrote can block this step."""
    ctx.areas.revoke_compute_credential(record.id)
    handle = record.backend_state
    if record.backend_state and not record.torn_down:
        backend = ctx.backend(record.backend)
        handle = merge_handle(backend, record.backend_state, backend.teardown(record))
    # The compute is gone: nothing can still be running.
    stopped = TrialState.CANCELLED if record.status is S.CANCELLED else TrialState.FAILED
    end_running_trials(ctx.store, record.id, f"stopped: experiment {record.status.value}", stopped)
    trials = ctx.store.list_trials(record.id)
    if not record.status_emitted:
        ctx.status_queue.send(status_message(record))
    record = ctx.store.update_experiment(
        updated(
            record,
            torn_down=True,
            status_emitted=True,
            event_seq=record.event_seq + 1,
            updated_at=utcnow(),
            backend_state=handle,
            event_log=ctx.announcer.stage_trials(record, trials),
        )
    )
    ctx.announcer.flush(ctx.store, record)
    return "torn down"


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
