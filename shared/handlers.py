"""The experiment state machine: short, idempotent steps driven by queue events.

SUBMITTED -> PROVISIONING -> RUNNING -> FINALIZING -> COMPLETED, or FAILED, or CANCELLING -> CANCELLED.

Every transition bumps the record's ``event_seq`` and the event it sends carries the new value; a
handler acts only on an event whose ``seq`` equals the record's (a fencing token), so a redelivered,
duplicated or overtaken event changes nothing. Writes use optimistic concurrency: a handler that loses
a race raises ``ConcurrencyConflict``, its message is redelivered, and the redelivery is then stale.
An event lost between a write and its send is recovered by ``sweep`` (the timer trigger).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from shared.config import env
from shared.context import Context
from shared.errors import AlreadyExists, BackendError, NotFound
from shared.ports import RunState
from shared.records import (
    TERMINAL_STATUSES,
    EventType,
    ExperimentEvent,
    ExperimentRecord,
    ExperimentStatus,
    TrialState,
    best_of,
)
from shared.spec import ExperimentSpec, SpecError, load_spec

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
EVENT_FOR_STATUS: dict[ExperimentStatus, EventType] = {
    S.SUBMITTED: EventType.PROVISION,
    S.PROVISIONING: EventType.PROVISION,
    S.RUNNING: EventType.POLL,
    S.FINALIZING: EventType.FINALIZE,
    S.CANCELLING: EventType.CANCEL,
}


class InvalidRequest(ValueError):
    """A request message that can never succeed; ``errors`` name the fields."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def now() -> datetime:
    return datetime.now(UTC)


def new_experiment_id() -> str:
    """Sortable, unique, valid as a table key, blob prefix and Azure resource-name part."""
    return f"exp-{now():%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------------------------- submit
def submit_experiment(
    ctx: Context,
    spec: ExperimentSpec,
    *,
    idempotency_key: str | None = None,
    experiment_id: str | None = None,
) -> tuple[ExperimentRecord, bool]:
    """Store a new experiment and send its first event. Returns ``(record, created)``; a retried
    request (same idempotency key or id) returns the existing experiment with ``created=False``."""
    experiment_id = experiment_id or new_experiment_id()
    if idempotency_key:
        experiment_id = ctx.store.claim_idempotency_key(idempotency_key, experiment_id)
    try:
        return ctx.store.get_experiment(experiment_id), False
    except NotFound:
        pass
    record = ExperimentRecord(
        id=experiment_id,
        name=spec.name,
        spec=spec.to_document(),
        backend=spec.compute.backend,
        trials_total=spec.effective_total_trials(),
        idempotency_key=idempotency_key,
        event_seq=1,
        history=[{"at": now().isoformat(), "status": S.SUBMITTED.value, "reason": "submitted"}],
    )
    try:
        record = ctx.store.create_experiment(record)
    except AlreadyExists:
        return ctx.store.get_experiment(experiment_id), False
    _send(ctx, EventType.PROVISION, record)
    return record, True


def parse_document(text: str | bytes) -> Any:
    """Parse a JSON or YAML document; raise ``InvalidRequest`` with the parser's message."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the body is not UTF-8 text: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"the body is neither JSON nor YAML: {exc}") from None


def handle_request_message(ctx: Context, body: str, *, message_id: str | None = None) -> ExperimentRecord:
    """Handle one ``experiment-requests`` message: a spec, or ``{"spec": ..., "id"?, "idempotency_key"?}``.

    An invalid request raises ``InvalidRequest`` (the host retries, then moves it to the poison queue);
    when the message named an experiment id, that experiment is also recorded as FAILED with the reason.
    """
    document = parse_document(body)
    experiment_id: str | None = None
    key: str | None = None
    if isinstance(document, dict) and "spec" in document:
        experiment_id = _optional_str(document.get("id"))
        key = _optional_str(document.get("idempotency_key"))
        extra = set(document) - {"spec", "id", "idempotency_key"}
        if extra:
            _fail_request(ctx, experiment_id, f"unknown envelope field(s): {', '.join(sorted(extra))}", [])
        document = document["spec"]
    try:
        spec = load_spec(document)
    except SpecError as exc:
        _fail_request(ctx, experiment_id, str(exc), exc.errors)
    if key is None and experiment_id is None and message_id:
        key = f"queue:{message_id}"  # a redelivered message must not start a second experiment
    record, _ = submit_experiment(ctx, spec, idempotency_key=key, experiment_id=experiment_id)
    return record


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise InvalidRequest(f"expected a non-empty string of at most 128 characters, got {value!r}")
    return value


def _fail_request(ctx: Context, experiment_id: str | None, reason: str, errors: list) -> None:
    if experiment_id is not None:
        record = ExperimentRecord(
            id=experiment_id,
            name=experiment_id,
            spec={},
            status=S.FAILED,
            error=f"invalid request: {reason}",
            ended_at=now(),
            torn_down=True,
            history=[{"at": now().isoformat(), "status": S.FAILED.value, "reason": "invalid request"}],
        )
        # AlreadyExists: a valid experiment with this id exists already, or the failure was recorded before.
        with contextlib.suppress(AlreadyExists):
            ctx.store.create_experiment(record)
            ctx.status_queue.send(status_message(record))  # a FAILED experiment, like any other
    raise InvalidRequest(reason, errors)


# --------------------------------------------------------------------------------------------- events
def _send(ctx: Context, event_type: EventType, record: ExperimentRecord, delay: int = 0) -> None:
    event = ExperimentEvent(type=event_type, experiment_id=record.id, seq=record.event_seq)
    ctx.events.send(event.model_dump_json(), delay_seconds=delay)


def _transition(
    ctx: Context,
    record: ExperimentRecord,
    status: ExperimentStatus,
    reason: str,
    *,
    next_event: EventType | None = None,
    delay: int = 0,
    fence: bool = True,
    **updates: Any,
) -> ExperimentRecord:
    """Write the new status, then send ``next_event``. ``fence`` bumps the fencing token, which makes
    every event already sent stale; a step that must stay retryable by its own event passes False."""
    changed = status != record.status
    history = list(record.history)
    if changed:
        history.append({"at": now().isoformat(), "status": status.value, "reason": reason})
    fields: dict[str, Any] = {
        "status": status,
        "event_seq": record.event_seq + (1 if fence else 0),
        "updated_at": now(),
        "history": history,
        **updates,
    }
    if status in TERMINAL_STATUSES and record.ended_at is None:
        fields.setdefault("ended_at", now())
    record = ctx.store.update_experiment(record.model_copy(update=fields))
    if next_event is not None:
        _send(ctx, next_event, record, delay)
    return record


def handle_event(ctx: Context, body: str) -> str:
    """Handle one ``experiment-events`` message; returns what happened (for logs and tests)."""
    event = ExperimentEvent.model_validate_json(body)
    try:
        record = ctx.store.get_experiment(event.experiment_id)
    except NotFound:
        log.warning("event %s for unknown experiment %s dropped", event.type, event.experiment_id)
        return "unknown experiment"
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
        current = ctx.store.get_experiment(record.id)
        if current.status in TERMINAL_STATUSES:
            raise
        _transition(ctx, current, S.FAILED, "backend error", next_event=EventType.TEARDOWN, error=str(exc))
        return "failed"


def _provision(ctx: Context, record: ExperimentRecord) -> str:
    if record.status is S.SUBMITTED:
        # Not fenced: if provisioning fails, this same event is redelivered and must still act.
        record = _transition(ctx, record, S.PROVISIONING, "provisioning compute", fence=False)
    handle = ctx.backend(record.backend).provision(record)
    _transition(ctx, record, S.PROVISIONING, "provisioned", next_event=EventType.SUBMIT_RUN, backend_state=handle)
    return "provisioned"


def _submit_run(ctx: Context, record: ExperimentRecord) -> str:
    handle = ctx.backend(record.backend).submit(record)
    _transition(
        ctx,
        record,
        S.RUNNING,
        "run submitted",
        next_event=EventType.POLL,
        delay=ctx.settings.poll_seconds,
        backend_state=handle,
        started_at=record.started_at or now(),
    )
    return "submitted"


def progress_updates(ctx: Context, record: ExperimentRecord) -> dict[str, Any]:
    """Progress fields from the trial records: done/total, best so far, last progress time."""
    spec = record.spec
    trials = ctx.store.list_trials(record.id)
    done = sum(1 for t in trials if t.state is not TrialState.RUNNING)
    goal = spec.get("objective", {}).get("goal", "maximize")
    updates: dict[str, Any] = {"trials_done": done, "best": best_of(trials, goal) or record.best}
    if done != record.trials_done:
        updates["last_progress_at"] = now()
        updates["redrives"] = 0  # progress: earlier stalls no longer count against the experiment
    return updates


def _poll(ctx: Context, record: ExperimentRecord) -> str:
    backend = ctx.backend(record.backend)
    status = backend.poll(record)
    updates = progress_updates(ctx, record)
    if status.details.get("backend_state"):
        updates["backend_state"] = {**record.backend_state, **status.details["backend_state"]}
    guard = budget_exceeded(record)
    if guard and status.state in {RunState.PENDING, RunState.RUNNING}:
        backend.cancel(record)
        _transition(ctx, record, S.FAILED, guard, next_event=EventType.TEARDOWN, error=guard, **updates)
        return "budget exceeded"
    if status.state is RunState.SUCCEEDED:
        _transition(ctx, record, S.FINALIZING, "run finished", next_event=EventType.FINALIZE, **updates)
        return "finished"
    if status.state is RunState.FAILED:
        error = status.error or "the run failed"
        _transition(ctx, record, S.FAILED, "run failed", next_event=EventType.TEARDOWN, error=error, **updates)
        return "failed"
    if status.state is RunState.CANCELLED:
        _transition(ctx, record, S.CANCELLED, "run cancelled", next_event=EventType.TEARDOWN, **updates)
        return "cancelled"
    _transition(ctx, record, S.RUNNING, "poll", next_event=EventType.POLL, delay=ctx.settings.poll_seconds, **updates)
    return "running"


def budget_exceeded(record: ExperimentRecord) -> str | None:
    """The cost guard: the experiment's timeout (with a grace period) or ``max_node_hours`` spent."""
    if record.started_at is None:
        return None
    elapsed = (now() - record.started_at).total_seconds()
    limits = record.spec.get("limits", {})
    timeout = limits.get("timeout")
    if timeout is not None and elapsed > float(timeout) * 1.1 + 300:
        return f"cost guard: running {elapsed:.0f} s, past the experiment timeout of {timeout} s"
    compute = record.spec.get("compute", {})
    max_node_hours = compute.get("max_node_hours")
    if max_node_hours:
        if compute.get("backend") == "vmcluster":
            nodes = int(compute.get("n_workers") or 1) + 1  # the scheduler is a VM too
        else:
            nodes = compute.get("n_workers") or compute.get("max_instances") or 1
        spent = nodes * elapsed / 3600
        if spent > float(max_node_hours):
            return f"cost guard: {spent:.2f} node-hours used, over max_node_hours={max_node_hours}"
    return None


def _finalize(ctx: Context, record: ExperimentRecord) -> str:
    handle = ctx.backend(record.backend).finalize(record)
    updates = progress_updates(ctx, record)
    if handle:
        updates["backend_state"] = {**record.backend_state, **handle}
    best = updates.get("best")
    if best is None:
        _transition(
            ctx,
            record,
            S.FAILED,
            "no trial completed",
            next_event=EventType.TEARDOWN,
            error=record.error or "no trial completed",
            **updates,
        )
        return "failed"
    model_files = ctx.store.list_artifacts(record.id, "model/")
    if model_files and best.model_uri is None:
        updates["best"] = best.model_copy(update={"model_uri": f"/api/experiments/{record.id}/model"})
    _transition(ctx, record, S.COMPLETED, "completed", next_event=EventType.TEARDOWN, **updates)
    return "completed"


def _cancel(ctx: Context, record: ExperimentRecord) -> str:
    if record.backend_state:
        ctx.backend(record.backend).cancel(record)
    updates = progress_updates(ctx, record)
    _transition(ctx, record, S.CANCELLED, "cancelled", next_event=EventType.TEARDOWN, **updates)
    return "cancelled"


def _teardown(ctx: Context, record: ExperimentRecord) -> str:
    if record.backend_state and not record.torn_down:
        ctx.backend(record.backend).teardown(record)
    for trial in ctx.store.list_trials(record.id):  # the compute is gone: nothing can still be running
        if trial.state is TrialState.RUNNING:
            ctx.store.put_trial(
                trial.model_copy(
                    update={
                        "state": TrialState.FAILED,
                        "error": f"stopped: experiment {record.status.value}",
                        "ended_at": now(),
                    }
                )
            )
    if not record.torn_down or not record.backend_state.get("status_emitted"):
        ctx.status_queue.send(status_message(record))
    ctx.store.update_experiment(
        record.model_copy(
            update={
                "torn_down": True,
                "event_seq": record.event_seq + 1,
                "updated_at": now(),
                "backend_state": {**record.backend_state, "status_emitted": True},
            }
        )
    )
    return "torn down"


def status_message(record: ExperimentRecord) -> str:
    """The one message per terminal experiment on ``experiment-status`` (consumers dedupe by id)."""
    return json.dumps(
        {
            "id": record.id,
            "name": record.name,
            "status": record.status.value,
            "best": record.best.model_dump(mode="json") if record.best else None,
            "error": record.error,
            "trials_done": record.trials_done,
            "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        }
    )


# --------------------------------------------------------------------------------------------- cancel
def request_cancel(ctx: Context, experiment_id: str) -> ExperimentRecord:
    """Ask for an experiment to stop (DELETE). Terminal experiments are returned unchanged."""
    record = ctx.store.get_experiment(experiment_id)
    if record.status in TERMINAL_STATUSES or record.status is S.CANCELLING:
        return record
    return _transition(ctx, record, S.CANCELLING, "cancel requested", next_event=EventType.CANCEL)


# ---------------------------------------------------------------------------------------------- sweep
def sweep(ctx: Context, *, stall_seconds: int | None = None) -> dict[str, list[str]]:
    """Timer step: re-drive experiments whose events were lost, tear down finished ones' compute."""
    stall = timedelta(seconds=stall_seconds if stall_seconds is not None else ctx.settings.stall_seconds)
    cutoff = now() - stall
    report: dict[str, list[str]] = {"redriven": [], "failed": [], "teardown": []}
    for record in _all_experiments(ctx):
        if record.updated_at > cutoff:
            continue
        if record.status in TERMINAL_STATUSES:
            if not record.torn_down:
                _transition(ctx, record, record.status, "sweep", next_event=EventType.TEARDOWN)
                report["teardown"].append(record.id)
            continue
        if record.redrives >= MAX_REDRIVES:
            reason = f"stalled: no progress for {stall.total_seconds():.0f} s after {MAX_REDRIVES} re-drives"
            _transition(ctx, record, S.FAILED, reason, next_event=EventType.TEARDOWN, error=reason)
            report["failed"].append(record.id)
            continue
        _transition(
            ctx,
            record,
            record.status,
            "re-driven by sweep",
            next_event=EVENT_FOR_STATUS[record.status],
            redrives=record.redrives + 1,
        )
        report["redriven"].append(record.id)
    return report


def sweep_orphans(ctx: Context) -> list[str]:
    """Timer step, in Azure: delete VMs and networks tagged by experiments that are gone or torn down.

    Runs only where ``AZURE_SUBSCRIPTION_ID`` and ``AZURE_RESOURCE_GROUP`` say where experiments live.
    """
    subscription_id, resource_group = env("AZURE_SUBSCRIPTION_ID"), env("AZURE_RESOURCE_GROUP")
    if not subscription_id or not resource_group:
        return []
    live = {record.id for record in _all_experiments(ctx) if not record.torn_down}
    backend = ctx.backend("vmcluster")
    return backend.sweep_orphans(live, resource_group=resource_group, subscription_id=subscription_id)


def _all_experiments(ctx: Context) -> list[ExperimentRecord]:
    records: list[ExperimentRecord] = []
    token: str | None = None
    while True:
        page, token = ctx.store.list_experiments(limit=200, page_token=token)
        records.extend(page)
        if token is None:
            return records
