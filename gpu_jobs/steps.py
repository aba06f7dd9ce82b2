"""Steps finer than a fold: every fold trained in lockstep, the running metric reported every few rounds or trees.

With ``report_every`` a trial no longer reports once per CV fold. It starts one model per fold, grows them
all together and, after each *step*, scores every fold on its validation rows and reports the running mean
(over folds) of every metric, so a pruner can stop a bad configuration after a few rounds instead of a
whole fold. A step means the same for every trial of an experiment (every fold has the same budget):

=====================  =========  ===========================================================================
model (engine)         unit       step ``s``
=====================  =========  ===========================================================================
XGBoost (either)       ``round``  ``s`` boosting rounds so far: ``report_every``, ``2 x report_every``, ...,
                                  ``num_boost_round`` (the last always reported). XGBoost's own training loop
                                  (``Booster.update`` with its callback container, as ``xgboost.train``
                                  runs it), so early stopping is its ``EarlyStopping`` callback and a fold
                                  that stopped early keeps its score at later steps
forest (scikit-learn)  ``tree``   ``s`` trees so far, grown with ``warm_start`` (the same trees a one-shot
                                  fit of the seed grows)
forest (cuML)          ``percent``  cuML cannot add trees to a fitted forest: the whole forest is refit on
                                  ``s`` percent of each fold's training rows (a seeded, nested sample),
                                  ``s`` halving down from 100: ``ceil(n_estimators / report_every)`` levels,
                                  at most :data:`MAX_FRACTION_LEVELS` (``..., 25, 50, 100``)
either, ``fidelity:    ``percent``  the whole model, with its full budget of rounds or trees, refit on ``s``
rows``                            percent of each fold's training rows (the same nested samples): ``s`` is
                                  ``100 / row_factor**k`` down to ``report_every`` (``percent_levels``),
                                  ``row_factor`` a rung policy's reduction factor, so each step is a rung
=====================  =========  ===========================================================================

Why rows (``trial.fidelity: rows``): a rung in boosting rounds ranks trials by how fast they learn, not by
where they end. On the flights example (accuracy, 160 rounds) the Spearman correlation of 12 random trials'
accuracy at round 10 with their final accuracy was -0.65, -0.32, -0.87, -0.40, -0.65 over seeds 1-5: a slow
learning rate still predicts the majority class there. Trained to the end on 11 percent of the rows the same
trials ranked +0.61, +0.24, +0.91, +0.73, +0.73, on 33 percent +0.93, +0.45, +0.83, +0.82, +0.72. The price:
each step refits from scratch, and on a CPU a round costs more than its share of rows (``bench/fidelity_cost.py``:
11 percent of the rows cost a median 0.49 of a full fit on flights' 3,000 rows, 0.27 on 30,000, not 0.11).

Without ``report_every`` the step is the fold (1, 2, ..., ``cv_folds``): what AzureML's policies evaluate.
Memory: lockstep keeps every fold's model (and XGBoost's matrices) at once, ``cv_folds`` times a fold's.
A trial in steps resumes no fold (its folds end together): a retry trains from the first round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from gpu_jobs.engine import Engine
from gpu_jobs.errors import UserError
from gpu_jobs.params import FIDELITIES, MAX_FRACTION_LEVELS, MAX_REPORT_EVERY, Fidelity, percent_levels

StepUnit = Literal["fold", "round", "tree", "percent"]
STEP_UNITS: tuple[str, ...] = ("fold", "round", "tree", "percent")


@dataclass(frozen=True)
class StepPlan:
    """What a trial reports: the unit and every step, increasing, the last one the whole budget."""

    unit: StepUnit
    steps: tuple[int, ...]


def step_plan(
    model: str,
    params: dict[str, Any],
    engine: Engine,
    report_every: int,
    fidelity: Fidelity = "rounds",
    row_factor: int = 2,
) -> StepPlan:
    """The steps of a ``model`` trial with ``params`` on ``engine`` that reports every ``report_every``
    (with ``fidelity: rows``, at :func:`percent_levels` of ``report_every`` and ``row_factor``)."""
    if fidelity == "rows":
        return StepPlan("percent", percent_levels(report_every, row_factor))
    if model == "xgboost":
        return StepPlan("round", every_until(int(params["num_boost_round"]), report_every))
    trees = int(params["n_estimators"])
    if engine.forest_grows:
        return StepPlan("tree", every_until(trees, report_every))
    levels = min(MAX_FRACTION_LEVELS, math.ceil(trees / report_every))
    return StepPlan("percent", tuple(max(1, round(100 / 2**j)) for j in reversed(range(levels))))


def check_fidelity(fidelity: str, report_every: int | None, row_factor: int) -> Fidelity:
    """``fidelity`` checked against the rest of the request; :class:`UserError` where it cannot apply."""
    if fidelity not in FIDELITIES:
        raise UserError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {fidelity!r}")
    if fidelity == "rows":
        if report_every is None or not 1 <= report_every <= 100:
            raise UserError(
                f"fidelity rows steps through percent of the rows: report_every in [1, 100], got {report_every!r}"
            )
        if isinstance(row_factor, bool) or not isinstance(row_factor, int) or not 2 <= row_factor <= 100:
            raise UserError(f"row_factor must be an integer in [2, 100], got {row_factor!r}")
    return "rows" if fidelity == "rows" else "rounds"


def every_until(total: int, every: int) -> tuple[int, ...]:
    """``every, 2 x every, ...`` below ``total``, then ``total``."""
    return (*range(every, total, every), total)


def check_report_every(report_every: int | None) -> int | None:
    """``report_every`` checked (None, or an integer in ``[1, MAX_REPORT_EVERY]``); :class:`UserError` else."""
    if report_every is None:
        return None
    if isinstance(report_every, bool) or not isinstance(report_every, int) or not 1 <= report_every <= MAX_REPORT_EVERY:
        raise UserError(f"report_every must be an integer in [1, {MAX_REPORT_EVERY}], got {report_every!r}")
    return report_every


class GrowingTrainer(Protocol):
    """A trainer grown step by step (``gpu_jobs.trainers``): ``start``, ``grow`` to each step, ``finish``."""

    def start(self, features: Any, labels: Any, unit: StepUnit) -> None: ...

    def grow(self, step: int) -> bool:
        """Train up to ``step`` (of the plan's unit); False when it trained nothing (stopped early)."""
        ...

    def predict(self, features: Any) -> Any: ...

    def finish(self) -> None:
        """After the last step: leave the model as a one-shot fit leaves it (XGBoost: up to its best round)."""
        ...


@dataclass
class _Fold:
    split: str
    valid: Any
    trainer: GrowingTrainer
    scores: dict[str, float]
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    predicted_rows: int = 0


StepReporter = Callable[[int, dict[str, float], bool], None]
"""``report(step, running_means, last)``: anything it raises stops the trial at once."""
FoldScorer = Callable[[Any, Any], dict[str, float]]
"""``score(valid_index, prediction) -> every metric of the task`` for one fold."""


def lockstep(
    plan: StepPlan,
    splits: Sequence[tuple[str, Any, Any]],
    fit_fold: Callable[[Any], GrowingTrainer],
    predict_rows: Callable[[Any], Any],
    score: FoldScorer,
    synchronize: Callable[[], None],
    report: StepReporter,
) -> list[_Fold]:
    """Grow one trainer per fold through ``plan``, reporting the running means after every step.

    ``fit_fold(train_index)`` returns a started trainer; ``predict_rows(valid_index)`` the rows to predict.
    Returns the folds (split, final scores, timings); a fold that trained nothing at a step keeps its scores.
    """
    folds: list[_Fold] = []
    for split, train_index, valid_index in splits:
        synchronize()
        tick = time.perf_counter()
        trainer = fit_fold(train_index)
        synchronize()
        folds.append(_Fold(split, valid_index, trainer, {}, fit_seconds=time.perf_counter() - tick))
    for position, step in enumerate(plan.steps):
        last = position == len(plan.steps) - 1
        for fold in folds:
            synchronize()
            tick = time.perf_counter()
            grew = fold.trainer.grow(step)
            if last:
                fold.trainer.finish()
            synchronize()
            fitted = time.perf_counter()
            fold.fit_seconds += fitted - tick
            if grew or last or not fold.scores:
                prediction = fold.trainer.predict(predict_rows(fold.valid))
                synchronize()
                fold.predict_seconds += time.perf_counter() - fitted
                fold.predicted_rows += len(fold.valid)
                fold.scores = score(fold.valid, prediction)
        running = {name: float(np.mean([fold.scores[name] for fold in folds])) for name in folds[0].scores}
        report(step, running, last)
    return folds


def fraction_rows(engine: Engine, train_index: Any, percent: int, seed: int) -> Any:
    """The first ``percent`` percent of ``train_index`` in a seeded order (so a larger step's rows hold a
    smaller one's), at least one row, sorted, on the engine: the same rows on both engines."""
    host = np.asarray(engine.to_host(train_index))
    order = np.random.default_rng(seed).permutation(len(host))
    keep = max(1, math.ceil(len(host) * percent / 100))
    return engine.array.asarray(np.sort(host[order[:keep]]))
