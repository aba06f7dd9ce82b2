"""The records the store keeps and the events the queues carry (plain pydantic models), typed all the way
down: an experiment's spec is an :class:`~shared.spec.ExperimentSpec`, its transitions :class:`Transition`,
its cost a :class:`CostLedger`, a driver's outcome a :class:`RunOutcome`.

A stored record is read with the spec's *shape* rules only (``ExperimentSpec.model_validate``): the rules
that depend on the world now (the size catalogue's retirements and prices, hosted mode) are admission rules,
checked once at the edge (:func:`shared.spec.admit`), never again on what is stored, so a size the catalogue
retires mid-run leaves a running experiment readable."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from shared.bounded import MAX_ENTRIES, FiniteFloat, Metrics, Name, Params, ShortStr, Text
from shared.compute_report import ComputeReport
from shared.spec.experiment import ExperimentSpec
from shared.telemetry.traceparent import parse_traceparent

TraceParent = Annotated[str | None, BeforeValidator(parse_traceparent)]
"""A W3C traceparent, or None: a malformed or hostile value is dropped, never an error (shared.telemetry)."""


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
    CANCELLED = "CANCELLED"
    """Stopped because its experiment was cancelled: no fault of the trial, and no result."""

    @property
    def finished(self) -> bool:
        return self is not TrialState.RUNNING


class Record(BaseModel):
    """Base of what the store keeps: no NaN or infinity in any float field (JSON has none, the SVG axes and
    the cost ledger cannot use one). Write paths validate whole records (:func:`validated`)."""

    model_config = ConfigDict(allow_inf_nan=False)


MAX_FOLDS = 100
"""Folds a trial may report (the spec allows far fewer)."""
MAX_STEPS = 10_000
"""Intermediate values a trial may report, and the largest step (``num_boost_round``'s bound)."""
StepUnit = Literal["fold", "round", "tree", "percent"]
"""What a trial's step counts (``gpu_jobs.steps.STEP_UNITS``)."""


class FoldResult(Record):
    """One cross-validation fold a trial finished: a retry of the trial takes it instead of training it."""

    step: int = Field(ge=1, le=MAX_FOLDS, description="the 1-based fold")
    scores: dict[Name, FiniteFloat] = Field(
        max_length=64, description="the fold's own score of each metric (not running means)"
    )
    fit_seconds: float = Field(default=0.0, ge=0.0, le=1e9, description="by the worker's clock")
    predict_seconds: float = Field(default=0.0, ge=0.0, le=1e9)
    split: ShortStr = Field(default="", description="fingerprint of the fold's validation rows")
    attempt: int = Field(default=1, ge=1, le=1000, description="the attempt that trained it")


class TrialRecord(Record):
    """One trial as it ran: what was tried, what came out, and how it ended. Every field is bounded (the
    compute writes these): finite numbers, short names, clipped text, at most :data:`shared.bounded.MAX_ENTRIES`
    params and metrics."""

    experiment_id: str = Field(max_length=200)
    number: int = Field(ge=0, le=10**10 - 1, description="0-based trial number within the experiment")
    params: Params = Field(description="the hyperparameters the trial trained with")
    sampler_params: Params = Field(
        default_factory=dict, description="the values Optuna's sampler chose (to rebuild the study on resume)"
    )
    state: TrialState
    attempt: int = Field(default=1, ge=1, le=1000, description="2 when a trial interrupted by a crash is retried")
    intermediate: dict[Annotated[int, Field(ge=0, le=MAX_STEPS)], FiniteFloat] = Field(
        default_factory=dict, max_length=MAX_STEPS, description="step -> primary metric"
    )
    step_unit: StepUnit = Field(
        default="fold",
        description="what a step of `intermediate` counts: folds, or with trial.report_every boosting rounds, "
        "trees or percent of the rows, all folds in lockstep (gpu_jobs/steps.py)",
    )
    folds: list[FoldResult] = Field(
        default_factory=list,
        max_length=MAX_FOLDS,
        description="the folds finished so far, in order (written as they are reported)",
    )
    resumed_folds: int = Field(
        default=0, ge=0, le=MAX_FOLDS, description="leading folds this attempt took from an earlier one"
    )
    optuna_attrs: dict[Name, FiniteFloat] = Field(
        default_factory=dict,
        max_length=MAX_ENTRIES,
        description="Optuna's per-trial system attributes that are numbers (successive halving's rungs, the grid "
        "sampler's grid id), given back to the study a restarted driver rebuilds so that it decides as before",
    )
    metrics: Metrics = Field(default_factory=dict)
    value: float | None = Field(default=None, description="final primary metric")
    error: Text | None = None
    engine: ShortStr | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    duration_s: float | None = Field(default=None, ge=0.0, le=1e9)
    model_uri: ShortStr | None = Field(default=None, description="where this trial's saved model lives")
    feasible: bool | None = Field(
        default=None, description="whether it met objective.constraints (None: none set, or it did not complete)"
    )
    objective_key: list[FiniteFloat] = Field(
        default_factory=list,
        max_length=3,
        description="objective.also's values, each signed so lower is better: they break ties on the primary "
        "metric, in order, so the best model is always on the Pareto front",
    )

    @field_validator("metrics")
    @classmethod
    def _fold_scores(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        """``fold_scores`` (what the charts draw) is number lists by metric, never anything else."""
        if not isinstance(metrics.get("fold_scores", {}), dict):
            raise ValueError("fold_scores must map each metric to its per-fold scores")
        return metrics


MAX_WARM_TRIALS = 100
"""Trials a warm start carries over (the referenced experiment's best): bounds the record that holds them."""


class WarmTrial(Record):
    """One completed trial of the experiment a warm start reads (``spec.warm_start``)."""

    number: int = Field(ge=0, le=10**10 - 1)
    params: Params
    sampler_params: Params = Field(default_factory=dict)
    value: FiniteFloat


class WarmStartSeed(Record):
    """What a warm start takes from a finished experiment, read at submit by the control plane (the compute
    may read only its own experiment): its best completed trials, best first, and whether its search
    space, model and objective equal this spec's (then they seed the sampler; else the best are run first)."""

    experiment: Name
    same_space: bool
    goal: Literal["maximize", "minimize"]
    trials: list[WarmTrial] = Field(default_factory=list, max_length=MAX_WARM_TRIALS)


class RegisteredModel(BaseModel):
    """The best model as registered in the AzureML workspace (``output.register_model``)."""

    name: str
    version: str
    id: str | None = None


class BestTrial(Record):
    number: int = Field(ge=0)
    value: float
    params: Params
    metrics: Metrics = Field(default_factory=dict)
    model_uri: ShortStr | None = None


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
    compute by ``gpu_jobs.data_check``): the task and why, and the table's size (bounded: the compute wrote it)."""

    task: ShortStr
    task_reason: Text
    classes: int = Field(default=0, ge=0, le=10**9, description="target classes (0 for a regression)")
    rows: int = Field(ge=0, le=10**15)
    rows_dropped_missing_target: int = Field(default=0, ge=0, le=10**15)
    features: int = Field(ge=0, le=10**9)

    def describe(self) -> str:
        """One line: ``regression (inferred: ...), 40000 rows, 13 features``."""
        classes = f", {self.classes} classes" if self.classes else ""
        return f"{self.task} ({self.task_reason}){classes}, {self.rows} rows, {self.features} features"


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


class Transition(Record):
    """One status change of an experiment (``ExperimentRecord.history``; the n-th is event ``{id}/status/{n}``)."""

    at: datetime
    status: ExperimentStatus
    reason: Text = ""


class CostLedger(Record):
    """What an experiment has cost so far (``ExperimentRecord.cost``; :mod:`shared.cost.ledger` computes it); USD."""

    spent_usd: float = Field(default=0.0, ge=0.0)
    budget_usd: float | None = None
    basis: Text = ""
    trials_usd: float = 0.0
    head_usd: float = Field(default=0.0, description="nodes billed beside the trial nodes (a scheduler VM)")
    idle_usd: float = Field(default=0.0, description="billed node time no trial used")
    per_trial_usd: dict[int, float] = Field(default_factory=dict)
    node_seconds: float = 0.0
    as_of: datetime | None = None
    stopped: ShortStr | None = Field(default=None, description='"budget reached" when the budget ended the run')

    @property
    def exhausted(self) -> bool:
        return self.budget_usd is not None and self.spent_usd >= self.budget_usd

    def public(self) -> dict[str, float | str | None]:
        """The API's and the events' ``cost`` object: ``{spent_usd, budget_usd, basis}``."""
        return {"spent_usd": round(self.spent_usd, 4), "budget_usd": self.budget_usd, "basis": self.basis}


class RunOutcome(BaseModel):
    """``driver/outcome.json``: how the HPO driver's run ended (``shared.hpo.outcome.ExperimentOutcome``
    writes it on the compute). The compute wrote it, so every field is bounded; ``RunStatus.outcome``."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    status: Literal["COMPLETED", "FAILED", "CANCELLED"]
    reason: Text = ""
    trials_done: int = Field(default=0, ge=0, le=10**6)
    best: BestTrial | None = None
    error: Text | None = None
    counts: dict[Name, int] = Field(default_factory=dict, max_length=16)
    stopped_by: Name | None = Field(default=None, description="the limit or stopping rule that ended the run")


class ExperimentRecord(Record):
    """An experiment's status document. ``version`` is the optimistic-concurrency token."""

    id: str
    name: str
    status: ExperimentStatus = ExperimentStatus.SUBMITTED
    spec: ExperimentSpec | None = Field(
        description="the admitted spec (shape-checked when read back); None only for a request refused at intake"
    )
    backend: str = "local"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_progress_at: datetime = Field(default_factory=utcnow)
    trials_total: int = 0
    trials_done: int = 0
    best: BestTrial | None = None
    error: Text | None = Field(default=None, description="why it failed, clipped to shared.bounded.MAX_TEXT")
    idempotency_key: str | None = None
    submitted_by: SubmittedBy | None = Field(default=None, description="the caller who submitted it (shared.auth)")
    backend_state: dict[str, Any] = Field(default_factory=dict, description="the backend's handles")
    event_seq: int = Field(default=0, description="fencing token: only the event carrying it may act")
    redrives: int = Field(default=0, description="times the sweep re-drove this experiment")
    torn_down: bool = False
    status_emitted: bool = Field(default=False, description="the experiment-status message was sent")
    history: list[Transition] = Field(default_factory=list, description="transitions, oldest first")
    event_log: EventLog = Field(default_factory=EventLog, description="Event Grid announcements and outbox")
    cost: CostLedger | None = Field(default=None, description="the cost ledger, None when unpriced")
    registered_model: RegisteredModel | None = Field(default=None, description="output.register_model's result")
    no_model: Text | None = Field(
        default=None, description="why an experiment that ended (a cancelled one) has no model, clipped"
    )
    cancel_deadline: datetime | None = Field(
        default=None, description="set when the run was asked to stop: until then a cancel waits for its model"
    )
    compute: ComputeReport = Field(default_factory=ComputeReport, description="from the backend's handle")
    traceparent: TraceParent = Field(default=None, description="the experiment's trace (W3C), from its submit")
    warm_start: WarmStartSeed | None = Field(default=None, description="spec.warm_start's trials, read at submit")
    version: str = ""

    @field_validator("spec", mode="before")
    @classmethod
    def _refused_spec(cls, value: Any) -> Any:
        """``{}`` is how earlier versions stored the spec of a request refused at intake: no spec."""
        return None if value == {} else value

    @property
    def objective(self) -> tuple[str, str]:
        """``(primary_metric, goal)``: what ``best.value`` measures and which way is better."""
        if self.spec is None:
            return "accuracy", "maximize"
        return self.spec.objective.primary_metric, self.spec.objective.goal

    @property
    def goal(self) -> str:
        """``maximize`` or ``minimize``: which way ``best.value`` is better."""
        return self.objective[1]

    @property
    def searched(self) -> list[str]:
        """The hyperparameters the spec searches, in its order (none without a spec)."""
        return list(self.spec.search_space) if self.spec is not None else []

    @property
    def run_spec(self) -> ExperimentSpec:
        """The spec of an experiment past intake (every one that runs has one); ``ValueError`` otherwise."""
        if self.spec is None:
            raise ValueError(f"experiment {self.id} was refused at intake: it has no spec to run")
        return self.spec


@dataclass(frozen=True)
class UnreadableRecord:
    """A stored experiment record that no longer validates (written before a bound existed, or edited in
    the store): listings carry it in its place, so one bad record harms only itself."""

    id: str
    reason: str

    @classmethod
    def of(cls, experiment_id: str, exc: Exception) -> UnreadableRecord:
        """Why ``exc`` (a validation error) made the record unreadable, without echoing stored values."""
        if isinstance(exc, ValidationError):
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "record"
            return cls(experiment_id, f"stored record does not validate ({where}: {first['msg']})"[:300])
        return cls(experiment_id, f"stored record is unreadable ({type(exc).__name__})")


R = TypeVar("R", bound=BaseModel)


def validated(record: R) -> R:
    """``record`` validated whole as its type (nested models included), so a write path that built it with
    ``model_copy(update=...)`` (which validates nothing) stores only what reads back. Raises
    ``pydantic.ValidationError``."""
    return type(record).model_validate(record.model_dump(warnings=False))


def updated(record: R, **changes: Any) -> R:
    """``record`` with ``changes``, validated: the checked spelling of ``model_copy(update=...)``."""
    return validated(record.model_copy(update=changes))


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
    delay_s: int = Field(default=0, ge=0, le=7 * 86400, description="the visibility delay it was sent with")
    traceparent: TraceParent = Field(default=None, description="the sending step's span: the next step's parent")


def best_of(records: Iterable[TrialRecord], goal: str) -> BestTrial | None:
    """The best COMPLETED trial among ``records`` for ``goal``: "the best model". Ties on the value are broken
    by ``objective_key`` (the other objectives, in order), then the lower number, so with several objectives
    the best is always on the Pareto front; an infeasible trial (it broke ``objective.constraints``) never is."""
    completed = [
        (r.value, r)
        for r in records
        if r.state is TrialState.COMPLETED and r.value is not None and r.feasible is not False
    ]
    if not completed:
        return None
    sign = -1.0 if goal == "maximize" else 1.0
    value, best = min(completed, key=lambda pair: (sign * pair[0], *pair[1].objective_key, pair[1].number))
    return BestTrial(
        number=best.number,
        value=value,
        params=best.params,
        metrics=best.metrics,
        model_uri=best.model_uri,
    )
