"""The messages a trial task sends its driver (on its slot's line, :mod:`shared.hpo.lines`), parsed strictly
and bounded.

A trial runs user code and libraries on a worker; what it sends is read as data, never trusted: one
pydantic model per message, unknown keys refused, numbers bounded (a step up to
:data:`shared.records.MAX_STEPS`, a trial number as the store's). A message counts only for the trial its
slot holds, so one that does not parse, or names another trial, harms only that trial: the driver answers
"stop" (at the step it names, if any) and records the trial FAILED with the reason; a final message that
does not parse ends it FAILED at once (``tests/test_hpo_steps.py``, ``tests/test_trial_messages.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.bounded import MAX_NAME, Metrics, Text, clip
from shared.records import MAX_STEPS, StepUnit


class ReportedResult(BaseModel):
    """How the trial ended, in its ``final`` message (``trial_task.TrialResult`` through JSON), bounded as the
    record it becomes: the driver takes it instead of fetching the task's result (one round trip less)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["COMPLETED", "PRUNED", "TIMED_OUT", "FAILED"]
    metrics: Metrics = Field(default_factory=dict)
    error: Text | None = None
    step: int = Field(default=0, ge=0, le=MAX_STEPS)
    duration_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    resumed_folds: int = Field(default=0, ge=0, le=MAX_STEPS)


class TrialReport(BaseModel):
    """One message: ``started`` (with its worker), ``final`` (with how it ended), or a step report (``step``
    and ``value``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    number: int = Field(ge=0, le=10**10 - 1)
    attempt: int = Field(ge=1, le=1000)
    started: Literal[True] | None = None
    worker: str | None = Field(default=None, max_length=MAX_NAME)
    final: Literal[True] | None = None
    step: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    value: float | None = Field(default=None, description="NaN: the trial's metric was not a number")
    unit: StepUnit = "fold"
    last: bool = False
    """Its last step: the work is done (a step report only)."""
    fold: dict[str, Any] | None = Field(default=None, max_length=16)
    """The fold just finished (``gpu_jobs.cross_validation.FoldRecord``), checked as a ``FoldResult`` later."""
    result: ReportedResult | None = None
    """A final message's: how the trial ended (absent: the trial ends FAILED, saying so)."""

    @model_validator(mode="after")
    def _one_kind(self) -> TrialReport:
        kinds = [self.started is not None, self.final is not None, self.step is not None]
        if sum(kinds) != 1:
            raise ValueError("a report is exactly one of started, final or a step")
        if self.step is not None and self.value is None:
            raise ValueError("a step report carries its value")
        if self.step is None and (self.value is not None or self.fold is not None or self.last):
            raise ValueError("value, fold and last belong to a step report")
        if self.result is not None and self.final is None:
            raise ValueError("a result belongs to a final report")
        if self.unit == "fold" and self.step is not None and self.last:
            raise ValueError("a fold report's last step is the spec's cv_folds, not the trial's word")
        return self


class BadReport(BaseModel):
    """A message that did not parse, with what still names its trial (if anything) and why."""

    number: int | None = None
    attempt: int | None = None
    step: int | None = None
    reason: str


def parse_report(raw: object) -> TrialReport | BadReport:
    """``raw`` as a :class:`TrialReport`, or a :class:`BadReport` naming the trial where it can."""
    try:
        return TrialReport.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "report"
        reason = clip(f"malformed step report from the trial ({where}: {first['msg']})", 512)
    names: dict[str, int] = {}
    if isinstance(raw, dict):
        # the step names the decision the trial waits for: answered (stop) even past MAX_STEPS
        for key, high in (("number", 10**10 - 1), ("attempt", 1000), ("step", 2**63 - 1)):
            value = raw.get(key)
            if type(value) is int and 0 <= value <= high:
                names[key] = value
    return BadReport(reason=reason, **names)


def expected_units(model: str, report_every: int | None, fidelity: str = "rounds") -> tuple[StepUnit, ...]:
    """The step units a trial of ``model`` may report (``gpu_jobs.steps``): folds without
    ``report_every``; percent of the rows under ``trial.fidelity: rows``; else rounds for XGBoost, and trees
    or percent (a cuML forest, which cannot grow) for a forest."""
    if report_every is None:
        return ("fold",)
    if fidelity == "rows":
        return ("percent",)
    return ("round",) if model == "xgboost" else ("tree", "percent")
