"""The state machine's hooks: one span per step (a child of the span that sent its message), the status
transitions on it, and the step, queue-lag, experiment and spend metrics. Each is one call in
``shared.handlers``; off, each is one check."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Protocol

from shared.records import CostLedger
from shared.telemetry import api, metrics
from shared.telemetry.logs import experiment_scope

EXPERIMENT_ID = "rapids_hpo.experiment.id"
BACKEND = "rapids_hpo.backend"
STEP = "rapids_hpo.step"
STATUS_FROM = "rapids_hpo.status.from"
STATUS_TO = "rapids_hpo.status.to"
TRIAL_NUMBER = "rapids_hpo.trial.number"
TRIAL_STATE = "rapids_hpo.trial.state"
STATUS = "rapids_hpo.status"
OUTCOME = "rapids_hpo.outcome"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class StepEvent(Protocol):
    """What a step span reads of an ``ExperimentEvent``."""

    @property
    def experiment_id(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def sent_at(self) -> datetime: ...
    @property
    def delay_s(self) -> int: ...


class Step:
    """The running step: :meth:`done` records what it returned (its outcome attribute)."""

    def __init__(self) -> None:
        self.outcome = "error"
        self.backend: str | None = None

    def done(self, outcome: str) -> str:
        self.outcome = outcome
        api.annotate({OUTCOME: outcome})
        return outcome


@contextlib.contextmanager
def step_span(step: str, event: StepEvent) -> Iterator[Step]:
    """Around one state-machine step: a consumer span in the experiment's trace, the queue lag at dequeue
    (message age less its visibility delay) and the step's duration by outcome."""
    current = Step()
    with experiment_scope(event.experiment_id):
        if not api.enabled():
            yield current
            return
        lag = (datetime.now(UTC) - event.sent_at).total_seconds() - event.delay_s
        api.record(metrics.QUEUE_LAG, max(lag, 0.0), {STEP: step})
        started = time.perf_counter()
        attributes = {EXPERIMENT_ID: event.experiment_id, STEP: step, "messaging.system": "azure_storage_queue"}
        try:
            with api.span(f"step {step}", parent=event.traceparent, attributes=attributes, kind="consumer"):
                yield current
        finally:
            api.record(
                metrics.STEP_DURATION,
                time.perf_counter() - started,
                {STEP: step, OUTCOME: current.outcome, BACKEND: current.backend},
            )


def step_record(step: Step, backend: str, status: str) -> None:
    """The step read its experiment: the backend and the status it found go on the span and metrics."""
    step.backend = backend
    api.annotate({BACKEND: backend, STATUS: status})


def transition(experiment_id: str, backend: str, before: str, after: str, cost: CostLedger | None) -> None:
    """A status write: on the current span (attributes and an event), an ended experiment counted, and
    the cost ledger's spend and budget as gauges."""
    if not api.enabled():
        return
    if before != after:
        api.annotate({STATUS_FROM: before, STATUS_TO: after})
        api.add_event("status", {STATUS_FROM: before, STATUS_TO: after})
        if after in TERMINAL:
            api.count(metrics.ENDED, 1, {STATUS: after, BACKEND: backend})
    if cost is not None:
        attributes = {EXPERIMENT_ID: experiment_id, BACKEND: backend}
        api.record(metrics.SPEND, cost.spent_usd, attributes)
        if cost.budget_usd is not None:
            api.record(metrics.BUDGET, cost.budget_usd, attributes)


def submitted(experiment_id: str, backend: str) -> None:
    api.annotate({EXPERIMENT_ID: experiment_id, BACKEND: backend})
    api.count(metrics.SUBMITTED, 1, {BACKEND: backend})


def events_delivered(staged: int = 0, sent: int = 0, failed: int = 0, dropped: int = 0) -> None:
    """The outbox's counts of one stage or flush."""
    api.count(metrics.EVENTS_STAGED, staged)
    api.count(metrics.EVENTS_SENT, sent)
    api.count(metrics.EVENTS_FAILED, failed, {"kind": "failed"})
    api.count(metrics.EVENTS_FAILED, dropped, {"kind": "dropped"})
