"""The records the store keeps and the events the queues carry (plain pydantic models)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExperimentStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({ExperimentStatus.COMPLETED, ExperimentStatus.FAILED, ExperimentStatus.CANCELLED})


class TrialState(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    PRUNED = "PRUNED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def finished(self) -> bool:
        return self is not TrialState.RUNNING


class FoldResult(BaseModel):
    """One cross-validation fold a trial finished: a retry of the trial takes it instead of training it."""

    step: int = Field(ge=1, description="the 1-based fold")
    scores: dict[str, float] = Field(description="the fold's own score of each metric (not running means)")
    fit_seconds: float = Field(default=0.0, ge=0.0, description="by the worker's clock")
    predict_seconds: float = Field(default=0.0, ge=0.0)
    split: str = Field(default="", description="fingerprint of the fold's validation rows")
    attempt: int = Field(default=1, ge=1, description="the attempt that trained it")


class TrialRecord(BaseModel):
    """One trial as it ran: what was tried, what came out, and how it ended."""

    experiment_id: str
    number: int = Field(ge=0, description="0-based trial number within the experiment")
    params: dict[str, Any] = Field(description="the hyperparameters the trial trained with")
    sampler_params: dict[str, Any] = Field(
        default_factory=dict, description="the values Optuna's sampler chose (to rebuild the study on resume)"
    )
    state: TrialState
    attempt: int = Field(default=1, ge=1, description="2 when a trial interrupted by a crash is retried")
    intermediate: dict[int, float] = Field(default_factory=dict, description="step -> primary metric")
    folds: list[FoldResult] = Field(
        default_factory=list, description="the folds finished so far, in order (written as they are reported)"
    )
    resumed_folds: int = Field(
        default=0, ge=0, description="leading folds this attempt took from an earlier one instead of training"
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    value: float | None = Field(default=None, description="final primary metric")
    error: str | None = None
    engine: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    duration_s: float | None = None
    model_uri: str | None = Field(default=None, description="where this trial's saved model lives")


class RegisteredModel(BaseModel):
    """The best model as registered in the AzureML workspace (``output.register_model``)."""

    name: str
    version: str
    id: str | None = None


class BestTrial(BaseModel):
    number: int
    value: float
    params: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    model_uri: str | None = None


class EventLog(BaseModel):
    """What the control plane announced on Event Grid for one experiment (``shared.events``).

    ``pending`` is the outbox: CloudEvents (structured JSON) staged in the same write as the transition
    they describe, removed once the topic accepted them, re-sent by the sweep while the topic is down.
    """

    pending: list[dict[str, Any]] = Field(default_factory=list, description="staged CloudEvents, oldest first")
    sent: int = Field(default=0, description="events the topic accepted")
    failures: int = Field(default=0, description="publish attempts that failed, retries included")
    dropped: int = Field(default=0, description="events given up: rejected by the topic or over the outbox cap")
    last_error: str | None = None
    trials: str = Field(default="", description="numbers of the trials announced, as ranges: '0-4,7'")
    retried: dict[str, int] = Field(default_factory=dict, description="trial number -> attempt announced, if > 1")
    best_number: int | None = Field(default=None, description="the best trial last announced")
    best_value: float | None = None
    behind: bool = Field(default=False, description="finished trials wait for room in the outbox")


class DataCheckReport(BaseModel):
    """What the driver's data check learned before any trial (``driver/data_check.json``, written on the
    compute by ``gpu_jobs.data_check``): the task and why, and the table's size."""

    task: str
    task_reason: str
    classes: int = Field(default=0, description="target classes (0 for a regression)")
    rows: int
    rows_dropped_missing_target: int = 0
    features: int

    def describe(self) -> str:
        """One line: ``regression (inferred: ...), 40000 rows, 13 features``."""
        classes = f", {self.classes} classes" if self.classes else ""
        return f"{self.task} ({self.task_reason}){classes}, {self.rows} rows, {self.features} features"


class ComputeReport(BaseModel):
    """What the compute went through, as its backend's handle tells it (the API's ``compute``, ``status``)."""

    driver_restarts: int = Field(default=0, ge=0, description="times the HPO driver was started again after dying")
    evictions: int = Field(default=0, ge=0, description="worker VMs lost (Spot evictions) and replaced")
    heartbeat_at: datetime | None = Field(default=None, description="the driver's last sign of life on the compute")
    link: str | None = Field(default=None, description="the run in Azure's own UI (the AzureML studio job page)")

    def summary(self, now: datetime | None = None, *, link: bool = True) -> str:
        """``2 workers evicted (replaced), driver restarted 1x, heartbeat 12 s ago, https://...``; "" when
        there is nothing to say (``status``, ``watch``, the dashboard)."""
        parts = []
        if self.evictions:
            parts.append(f"{self.evictions} workers evicted (replaced)")
        if self.driver_restarts:
            parts.append(f"driver restarted {self.driver_restarts}x")
        if self.heartbeat_at:
            seconds = max(((now or utcnow()) - self.heartbeat_at).total_seconds(), 0.0)
            parts.append(f"heartbeat {seconds:.0f} s ago")
        if link and self.link:
            parts.append(self.link)
        return ", ".join(parts)


class SubmittedBy(BaseModel):
    """Who submitted an experiment, as the API authenticated them (``shared.auth``).

    ``user`` and ``service`` (a managed identity or another app) are Entra ID principals: ``object_id`` and
    ``tenant_id`` identify them, and ownership compares exactly those two. ``function_key`` (a holder of the
    shared key) and ``queue`` (a spec from the request queue, whose sender storage does not authenticate)
    name no one: such experiments belong to no caller, and only an admin may cancel them or download their
    model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["user", "service", "function_key", "queue"]
    object_id: str | None = Field(default=None, max_length=64, description="Entra object id (oid)")
    tenant_id: str | None = Field(default=None, max_length=64, description="Entra tenant id (tid)")
    name: str | None = Field(default=None, max_length=256, description="display name or sign-in name, if known")
    app_id: str | None = Field(default=None, max_length=64, description="a service's application (client) id")

    @property
    def label(self) -> str:
        """In words, for the dashboard and the CLI: ``Ada Lovelace``, ``service <app id>``, ``queue ...``."""
        if self.kind == "user":
            return self.name or f"user {self.object_id}"
        if self.kind == "service":
            return f"service {self.app_id or self.object_id}"
        return self.name or self.kind

    def same_principal(self, other: SubmittedBy) -> bool:
        """Both name one Entra principal (object and tenant ids; names can change and repeat)."""
        return (
            self.kind in {"user", "service"}
            and self.object_id is not None
            and self.tenant_id is not None
            and (self.object_id, self.tenant_id) == (other.object_id, other.tenant_id)
        )


class ExperimentRecord(BaseModel):
    """An experiment's status document. ``version`` is the optimistic-concurrency token."""

    id: str
    name: str
    status: ExperimentStatus = ExperimentStatus.SUBMITTED
    spec: dict[str, Any]
    backend: str = "local"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_progress_at: datetime = Field(default_factory=utcnow)
    trials_total: int = 0
    trials_done: int = 0
    best: BestTrial | None = None
    error: str | None = None
    idempotency_key: str | None = None
    submitted_by: SubmittedBy | None = Field(default=None, description="the caller who submitted it (shared.auth)")
    backend_state: dict[str, Any] = Field(default_factory=dict, description="the backend's handles")
    event_seq: int = Field(default=0, description="fencing token: only the event carrying it may act")
    redrives: int = Field(default=0, description="times the sweep re-drove this experiment")
    torn_down: bool = False
    status_emitted: bool = Field(default=False, description="the experiment-status message was sent")
    history: list[dict[str, Any]] = Field(default_factory=list, description="transitions, oldest first")
    event_log: EventLog = Field(default_factory=EventLog, description="Event Grid announcements and outbox")
    cost: dict[str, Any] | None = Field(
        default=None, description="the cost ledger (shared.cost.ledger.CostLedger), None when unpriced"
    )
    registered_model: RegisteredModel | None = Field(default=None, description="output.register_model's result")
    compute: ComputeReport = Field(default_factory=ComputeReport, description="from the backend's handle")
    version: str = ""


class EventType(StrEnum):
    PROVISION = "provision"
    SUBMIT_RUN = "submit_run"
    POLL = "poll"
    FINALIZE = "finalize"
    CANCEL = "cancel"
    TEARDOWN = "teardown"


class ExperimentEvent(BaseModel):
    """A message on the ``experiment-events`` queue: "move experiment X along from status S"."""

    type: EventType
    experiment_id: str
    seq: int = Field(default=0, description="the record's event_seq when this event was sent")
    sent_at: datetime = Field(default_factory=utcnow)


def best_of(records: Iterable[TrialRecord], goal: str) -> BestTrial | None:
    """The best COMPLETED trial among ``records`` for ``goal`` (ties: the lower number)."""
    completed = [(r.value, r) for r in records if r.state is TrialState.COMPLETED and r.value is not None]
    if not completed:
        return None
    sign = -1.0 if goal == "maximize" else 1.0
    value, best = min(completed, key=lambda pair: (sign * pair[0], pair[1].number))
    return BestTrial(
        number=best.number,
        value=value,
        params=best.params,
        metrics=best.metrics,
        model_uri=best.model_uri,
    )
