"""The state machine's one writer (:func:`transition`) and what every step computes from the trials
(:func:`progress`): shared by the steps of :mod:`shared.handlers.machine` and :mod:`shared.handlers.cancelling`,
the intake and the sweep."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.config import MODEL_PREFIX
from shared.context import Context
from shared.ports import ComputeBackend, HandleUpdate, merge_handle
from shared.records import (
    TERMINAL_STATUSES,
    BestTrial,
    CostLedger,
    EventLog,
    EventType,
    ExperimentEvent,
    ExperimentRecord,
    ExperimentStatus,
    RegisteredModel,
    Transition,
    TrialRecord,
    TrialState,
    best_of,
    updated,
    utcnow,
)
from shared.telemetry import steps as telemetry_steps
from shared.telemetry import traceparent_for
from shared.trials import counts_by_state

S = ExperimentStatus


def send_event(ctx: Context, event_type: EventType, record: ExperimentRecord, delay: int = 0) -> None:
    event = ExperimentEvent(
        type=event_type,
        experiment_id=record.id,
        seq=record.event_seq,
        delay_s=delay,
        traceparent=traceparent_for(record.traceparent),  # the next step is a child of this one
    )
    ctx.events.send(event.model_dump_json(), delay_seconds=delay)


class StepUpdate(BaseModel):
    """What a step changes on the record beside its status: only the fields it sets are written. The
    writer (:func:`transition`) adds what every write carries (the history entry, the fencing token, the
    times, what users see of the compute's handle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trials_done: int | None = None
    best: BestTrial | None = None
    last_progress_at: datetime | None = None
    redrives: int | None = None
    event_log: EventLog | None = None
    backend_state: dict[str, Any] | None = None
    cost: CostLedger | None = None
    registered_model: RegisteredModel | None = None
    error: str | None = None
    started_at: datetime | None = None
    torn_down: bool | None = None
    status_emitted: bool | None = None
    no_model: str | None = None
    cancel_deadline: datetime | None = None

    def changes(self) -> dict[str, Any]:
        """The fields this update sets, by name."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    def __or__(self, other: StepUpdate) -> StepUpdate:
        """This update with ``other``'s fields laid over it."""
        return self.model_copy(update=other.changes())


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
    update: StepUpdate | None = None,
) -> ExperimentRecord:
    """The one writer of the state machine: write the new status and ``update``, then send ``next_event``.
    ``fence`` bumps the fencing token, which makes every event already sent stale; a step that must stay
    retryable by its own event passes False.

    A status change stages its CloudEvent in the same write; ``announce`` then sends what is staged
    (bounded retries; never raises) before ``next_event``. HTTP paths pass False: the next step sends it.
    """
    changes = update.changes() if update is not None else {}
    changed, before = status != record.status, record.status
    history = list(record.history)
    if changed:
        history.append(Transition(at=utcnow(), status=status, reason=reason))
    fields: dict[str, Any] = {
        "status": status,
        "event_seq": record.event_seq + (1 if fence else 0),
        "updated_at": utcnow(),
        "history": history,
        **changes,
    }
    if "backend_state" in changes:  # what users see of the compute follows its handle
        backend = ctx.backend(record.backend)
        fields["compute"] = backend.handle_type.model_validate(changes["backend_state"]).compute_report()
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


def progress(ctx: Context, record: ExperimentRecord, trials: list[TrialRecord]) -> StepUpdate:
    """Progress from the trial records: done/total, best so far, last progress time, and the events of
    trials finished since the last step (the compute writes trials; we learn of them here).

    ``trials_done`` counts the trials that ended with a result (completed, pruned, timed out): a failed or
    cancelled attempt is no progress towards the budget's answer, so a run whose trials all fail shows 0/N,
    not N/N. Any trial ending, failed or not, still shows the run is alive (``last_progress_at``)."""
    unfinished = {TrialState.RUNNING.value, TrialState.FAILED.value, TrialState.CANCELLED.value}
    done = sum(n for state, n in counts_by_state(trials).items() if state not in unfinished)
    update = StepUpdate(
        trials_done=done,
        best=best_of(trials, record.goal) or record.best,
        event_log=ctx.announcer.stage_trials(record, trials),
    )
    ended = any(t.ended_at is not None and t.ended_at > record.last_progress_at for t in trials)
    if done != record.trials_done or ended:
        # progress: earlier stalls no longer count against the experiment
        update = update | StepUpdate(last_progress_at=utcnow(), redrives=0)
    return update


def with_model_uri(ctx: Context, record: ExperimentRecord, best: BestTrial) -> BestTrial:
    """``best`` with the one model link the control plane gives: the API's, once the model's files are in its
    store, else none. A location the compute wrote is never kept: it is a path in the compute's area, which
    teardown deletes (users were shown a dead ``file://`` path), or whatever a hostile compute chose."""
    link = f"/api/experiments/{record.id}/model" if ctx.store.list_artifacts(record.id, MODEL_PREFIX) else None
    return best if best.model_uri == link else updated(best, model_uri=link)


def finalized(backend: ComputeBackend, record: ExperimentRecord, changes: HandleUpdate) -> StepUpdate:
    """What ``backend.finalize``'s handle ``changes`` set on the record: the handle, and the registered model
    (``output.register_model``) when the backend registered one."""
    if not changes:
        return StepUpdate()
    handle = merge_handle(backend, record.backend_state, changes)
    update = StepUpdate(backend_state=handle)
    if handle.get("registered_model"):
        update = update | StepUpdate(registered_model=RegisteredModel.model_validate(handle["registered_model"]))
    return update
