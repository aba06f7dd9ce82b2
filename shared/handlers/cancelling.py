"""CANCELLING -> CANCELLED: a cancelled run ends with its best model so far where its backend can give one.

A user who cancels wants what was found so far. A backend that declares ``Capabilities.model_on_cancel``
ends its run by itself once asked (the driver stops starting trials, ends the running ones, refits the best
finished trial and writes its outcome; AzureML cancels the sweep, whose finished trials saved their models),
so the CANCELLING state waits for that end before the teardown deletes the compute and its area. Each CANCEL
event is one short idempotent step, fenced like a poll:

1. the first asks the run to stop (``backend.cancel``) and sets ``cancel_deadline``
   (``Settings.cancel_wait_seconds`` from now);
2. each next one polls the run (its trials and files reach the store on the way; the backend starts nothing
   new while the experiment is CANCELLING) and sends itself again after ``poll_seconds`` while the run goes on;
3. once the run ended, ``backend.finalize`` brings the best finished trial's model in as for a completed run,
   and the experiment ends CANCELLED with it; at the deadline, or when the run is gone, it ends CANCELLED
   without one. Either way ``no_model`` says why there is none, and the teardown follows.

A backend without the capability, or a run that never started, is cancelled and torn down at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from shared.context import Context
from shared.errors import BackendError
from shared.handlers.writer import S, StepUpdate, finalized, progress, transition, with_model_uri
from shared.ports import ComputeBackend, RunState, RunStatus, merge_handle
from shared.records import EventType, ExperimentRecord, utcnow

log = logging.getLogger(__name__)

ENDED = frozenset({RunState.SUCCEEDED, RunState.CANCELLED, RunState.FAILED})
NO_TRIAL_FINISHED = "no trial had finished when the experiment was cancelled"


def cancel_step(ctx: Context, record: ExperimentRecord) -> str:
    """The CANCEL event's step (see the module's docstring); returns what happened."""
    backend = ctx.backend(record.backend) if record.backend_state else None
    if backend is None or record.started_at is None:
        return _cancelled(ctx, record, backend, "the run had not started: no trial ran")
    if not backend.capabilities.model_on_cancel:
        why = backend.capabilities.reasons.get("model_on_cancel", "its backend keeps no model of a cancelled run")
        return _cancelled(ctx, record, backend, f"the {backend.name} backend makes no model of a cancelled run: {why}")
    deadline = record.cancel_deadline
    if deadline is None:  # ask once; the backend's cancel is idempotent should this step repeat
        handle = merge_handle(backend, record.backend_state, backend.cancel(record))
        update = StepUpdate(
            backend_state=handle, cancel_deadline=utcnow() + timedelta(seconds=ctx.settings.cancel_wait_seconds)
        )
        return _wait(ctx, record, update, "asked the run to stop and keep its best model")
    status = backend.poll(record)
    update = progress(ctx, record, ctx.store.list_trials(record.id))
    if status.updates:
        handle = merge_handle(backend, record.backend_state, status.updates)
        record = record.model_copy(update={"backend_state": handle})
        update = update | StepUpdate(backend_state=record.backend_state)
    if status.state not in ENDED:
        if utcnow() < deadline:
            return _wait(ctx, record, update, "waiting for the best model so far")
        limit = ctx.settings.cancel_wait_seconds
        why = f"the run did not end with its best model within {limit} s of the cancel (RAPIDS_HPO_CANCEL_WAIT_SECONDS)"
        return _end(ctx, record, update | StepUpdate(no_model=why), "cancelled: the wait for the model ran out")
    return _end(ctx, record, update | _model(ctx, backend, record, status, update), "cancelled")


def _model(
    ctx: Context, backend: ComputeBackend, record: ExperimentRecord, status: RunStatus, update: StepUpdate
) -> StepUpdate:
    """The run ended: its best model taken in (``finalize``), or why there is none."""
    if update.best is None:
        return StepUpdate(no_model=NO_TRIAL_FINISHED)
    if status.state is RunState.FAILED:
        return StepUpdate(no_model=f"the run ended without its best model: {status.error or 'it failed'}")
    try:
        taken = finalized(backend, record, backend.finalize(record))
    except BackendError as exc:
        if exc.retryable and utcnow() < (record.cancel_deadline or utcnow()):
            raise  # the message is redelivered; the deadline still bounds the wait
        return StepUpdate(no_model=f"the best trial's model could not be taken in: {exc}")
    best = with_model_uri(ctx, record, update.best)
    if best.model_uri is None:
        why = status.error or "the run ended without saving the best trial's model"
        return taken | StepUpdate(no_model=f"the run ended without its best model: {why}")
    return taken | StepUpdate(best=best)


def _wait(ctx: Context, record: ExperimentRecord, update: StepUpdate, reason: str) -> str:
    """Stay CANCELLING; the same event comes back after ``poll_seconds`` (fenced: a duplicate is stale)."""
    delay = ctx.settings.poll_seconds
    transition(ctx, record, S.CANCELLING, reason, next_event=EventType.CANCEL, delay=delay, update=update)
    return "waiting for the model"


def _end(ctx: Context, record: ExperimentRecord, update: StepUpdate, reason: str) -> str:
    transition(ctx, record, S.CANCELLED, reason, next_event=EventType.TEARDOWN, update=update)
    return "cancelled"


def _cancelled(ctx: Context, record: ExperimentRecord, backend: ComputeBackend | None, why: str) -> str:
    """Cancelled at once (no wait for a model): stop the run, end CANCELLED, tear down; ``no_model`` says why."""
    update = StepUpdate()
    if backend is not None:
        update = StepUpdate(backend_state=merge_handle(backend, record.backend_state, backend.cancel(record)))
    update = update | progress(ctx, record, ctx.store.list_trials(record.id))
    no_model = why if update.best is not None or record.started_at is None else NO_TRIAL_FINISHED
    return _end(ctx, record, update | StepUpdate(no_model=no_model), "cancelled")
