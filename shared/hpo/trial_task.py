"""One trial on a worker: run ``gpu_jobs.train.run_trial``, report each fold to the driver and wait for its
pruning decision, and classify how the trial ended (never raising for trial failures).

A trial runs inside a long-lived slot task (:mod:`shared.hpo.slots`), which takes trial after trial from the
driver; this module is what the slot does with one of them.

Round trips (issue 29): a trial talks to the driver on its slot's line (:mod:`shared.hpo.lines`), a direct
connection, so reporting waits for nothing. A trial waits for an answer only at a step the driver may prune
at (the decision); the last step is never pruned, so it is not waited for, and without a policy none is.

Resume: a trial starts from the folds it is given (``TrialTask.completed_folds``). The driver gives a retry
the folds its reports showed the trial went on from: after a driver restart, what the store holds; after a
lost worker, what the driver itself received. A fold is reported before the trial waits for its decision and
kept only once the trial goes on from it, so a resumed trial is never spared a pruning decision a full run
would get.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.records import TrialState, utcnow

log = logging.getLogger(__name__)

TrialFunction = Callable[..., dict[str, Any]]
"""Signature of ``gpu_jobs.train.run_trial`` (keyword-only arguments, returns the metrics)."""

REPORT_TIMEOUT_S = 120.0
"""How long a trial waits for a pruning decision before carrying on (the driver may be gone)."""


class TrialPrunedSignal(Exception):
    """Raised inside a trial's fold callback when the driver decides to prune it."""


class TrialTimeoutSignal(Exception):
    """Raised inside a trial's fold callback when the trial has used up its ``trial_timeout``."""


@dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to run one trial (picklable)."""

    experiment_id: str
    number: int
    attempt: int
    params: dict[str, Any]
    data: str
    target: str
    data_format: str | None
    max_rows: int | None
    model: str
    cv_folds: int
    seed: int
    engine: str
    primary_metric: str
    trial_timeout: float | None
    n_jobs: int | None
    awaits_decisions: bool = True
    """False when no early-termination policy is set: fold reports are then recorded, not answered."""
    completed_folds: tuple[dict[str, Any], ...] = ()
    """The folds an interrupted attempt finished, in order (``FoldRecord`` dicts): not trained again."""
    task: str = "auto"
    """``dataset.task``: binary, multiclass, regression, or auto (inferred from the target)."""
    features: tuple[str, ...] | None = None
    """``dataset.features``: the feature columns, or None for every column but the target."""
    report_every: int | None = None
    """``trial.report_every``: steps of rounds or trees, folds in lockstep (``gpu_jobs.steps``); None: folds."""
    measure: bool = False
    """Measure the model's size and prediction time (an objective or constraint names them)."""
    fidelity: str = "rounds"
    """``trial.fidelity``: what a step grows (``gpu_jobs.steps``): rounds or trees, or rows (a refit each step)."""
    row_factor: int = 2
    """Under ``fidelity: rows``, how many times more rows each step refits on (``shared.spec.pruning.row_factor``)."""


def is_last_step(unit: str, step: int, cv_folds: int, last: bool) -> bool:
    """Whether ``step`` ends the trial's work: no policy prunes it, so the trial does not wait for a decision
    (a fold step by the spec's ``cv_folds``, a step inside the folds by the trial's word)."""
    return step >= cv_folds if unit == "fold" else last


class TrialLine(Protocol):
    """What a trial talks to the driver through: its slot's line (:class:`shared.hpo.lines.SlotLine`)."""

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the driver; never waits."""

    def decision(self, number: int, attempt: int, step: int, timeout: float) -> bool:
        """The driver's answer to the step report just sent: prune or not (not, after ``timeout`` seconds)."""


@dataclass(frozen=True)
class TrialResult:
    """How one trial ended, as its worker saw it (times by the worker's clock)."""

    state: TrialState
    """COMPLETED, PRUNED, TIMED_OUT or FAILED."""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    step: int = 0
    """The last fold reported."""
    duration_s: float = 0.0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    resumed_folds: int = 0
    """Leading folds taken from an earlier run of the trial instead of trained."""


def fold_seconds(folds: Iterable[Mapping[str, Any]]) -> float:
    """The worker time ``folds`` took (fit and predict): what a resumed fold counts against ``trial_timeout``."""
    return sum(float(f.get("fit_seconds", 0.0)) + float(f.get("predict_seconds", 0.0)) for f in folds)


def _default_trial_function() -> TrialFunction:
    from gpu_jobs.train import run_trial

    return run_trial


def run_trial_task(task: TrialTask, line: TrialLine, trial_fn: TrialFunction | None = None) -> TrialResult:
    """Run one trial on a Dask worker, talking to the driver through ``line``; never raises for trial-level
    failures."""
    trial_fn = trial_fn or _default_trial_function()
    started = time.monotonic()
    started_at = utcnow()
    last_step = 0
    given = list(task.completed_folds)
    resumed = 0
    earlier_s = 0.0  # the resumed folds' own time, counted against trial_timeout

    def on_fold(step: int, running: dict[str, float], fold: Any = None) -> None:
        nonlocal last_step, resumed, earlier_s
        mark = fold if isinstance(fold, Mapping) and "unit" in fold else None  # a step inside the folds
        if last_step == 0 and mark is None:  # the trial resumed the folds before its first trained one
            resumed = step - 1
            earlier_s = fold_seconds(given[:resumed])
        last_step = step
        value = float(running[task.primary_metric])
        if task.trial_timeout is not None and time.monotonic() - started + earlier_s > task.trial_timeout:
            raise TrialTimeoutSignal(f"trial_timeout of {task.trial_timeout:g} s exceeded after step {step}")
        report: dict[str, Any] = {"number": task.number, "attempt": task.attempt, "step": step, "value": value}
        if mark is not None:
            report.update(unit=str(mark["unit"]), last=bool(mark["last"]))
        elif fold is not None:
            report["fold"] = dict(fold)
        line.send(report)
        last = is_last_step(report.get("unit", "fold"), step, task.cv_folds, bool(report.get("last")))
        if task.awaits_decisions and not last:
            prune = line.decision(task.number, task.attempt, step, REPORT_TIMEOUT_S)
            if prune:
                raise TrialPrunedSignal(f"pruned at step {step}")

    def outcome(state: TrialState, metrics: dict[str, Any] | None = None, error: str | None = None) -> TrialResult:
        metrics = metrics or {}
        return TrialResult(
            state=state,
            metrics=metrics,
            error=error,
            step=last_step,
            duration_s=time.monotonic() - started,
            started_at=started_at,
            ended_at=utcnow(),
            resumed_folds=int(metrics.get("resumed_folds", resumed)),
        )

    line.send({"number": task.number, "attempt": task.attempt, "started": True})
    result = _run_and_classify(task, trial_fn, on_fold, outcome, given)
    line.send({"number": task.number, "attempt": task.attempt, "final": True, "result": _told(result)})
    return result


def _told(result: TrialResult) -> dict[str, Any]:
    """``result`` as the final message carries it (``shared.hpo.reports.ReportedResult``)."""
    told = asdict(result)
    told["state"] = result.state.value
    told["metrics"] = {k: v for k, v in result.metrics.items() if k != "params"}  # the record keeps no params
    for key in ("started_at", "ended_at"):
        told[key] = None if told[key] is None else told[key].isoformat()
    return told


def _run_and_classify(
    task: TrialTask,
    trial_fn: TrialFunction,
    on_fold: Callable[..., None],
    outcome: Callable[..., TrialResult],
    completed_folds: list[dict[str, Any]],
) -> TrialResult:
    resume: dict[str, Any] = {"completed_folds": completed_folds} if completed_folds else {}  # older trial functions
    if task.report_every is not None:
        resume = {"report_every": task.report_every}  # in lockstep no fold ends early: nothing to resume
        if task.fidelity != "rounds":  # told only when not the default: trial functions without it still run
            resume.update(fidelity=task.fidelity, row_factor=task.row_factor)
    if task.measure:
        resume["measure"] = True
    try:
        metrics = trial_fn(
            data=task.data,
            target=task.target,
            model=task.model,
            params=task.params,
            cv_folds=task.cv_folds,
            seed=task.seed,
            engine=task.engine,
            data_format=task.data_format,
            max_rows=task.max_rows,
            primary_metric=task.primary_metric,
            n_jobs=task.n_jobs,
            on_fold=on_fold,
            task=task.task,
            features=task.features,
            **resume,
        )
    except TrialPrunedSignal as exc:
        return outcome(TrialState.PRUNED, error=str(exc))
    except TrialTimeoutSignal as exc:
        return outcome(TrialState.TIMED_OUT, error=str(exc))
    except MemoryError:
        return outcome(TrialState.FAILED, error="out of memory (MemoryError)")
    except Exception as exc:  # a trial's failure is data, not a driver crash
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return outcome(TrialState.FAILED, error=detail)
    return outcome(TrialState.COMPLETED, metrics=metrics)
