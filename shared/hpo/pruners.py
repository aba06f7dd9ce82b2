"""AzureML's early-termination policies as Optuna pruners.

Optuna has no Bandit or truncation-selection pruner, and its ``MedianPruner`` compares a trial with the
median of the *completed* trials' values at one step after a number of startup trials, which is not
AzureML's median stopping. These classes implement AzureML's rules as documented for
``azure.ai.ml.sweep`` / HyperDrive (the "how to tune hyperparameters" guide and the policy classes):

- **Steps.** Each ``trial.report(value, step)`` is one *interval*; our trials report the running mean of
  the primary metric after each CV fold, with ``step`` the 1-based fold. AzureML: "the policy applies every
  multiple of ``evaluation_interval`` that is greater than or equal to ``delay_evaluation``" (with
  ``evaluation_interval=1, delay_evaluation=5`` it is "applied at every interval starting at evaluation
  interval 5"). So a policy is evaluated at step ``N`` iff ``N % evaluation_interval == 0`` and
  ``N >= delay_evaluation``; ``delay_evaluation=2`` first evaluates at step 2, not 3.
- **Fair comparison.** "When evaluating a run at interval N, its performance is only compared with the
  performance of other runs up to interval N, even if they reported metrics for intervals greater than N."
  The other trials taking part are those (complete, pruned or running; failed ones never) that reported
  a finite value at step ``N``, and only their values at steps ``<= N`` are used.
- **Direction.** Every rule follows ``study.direction``. A trial whose own values are all NaN is pruned
  (a NaN metric is never within any slack); other trials' NaN values are ignored.

Rules in detail are on each class. Details AzureML leaves open are decided here and documented there.
Optuna's own pruners (successive halving, Hyperband, patient, threshold) are used as they are
(:mod:`shared.spec.search_table`); this module adds only the adapters they need here: Wilcoxon over the
folds' own scores (:class:`FoldWilcoxonPruner`) and a threshold beside another policy (:class:`AnyOfPruner`).
"""

from __future__ import annotations

import bisect
import copy
import math
import statistics
import warnings
from collections.abc import Iterable

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

_PARTICIPANT_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def is_evaluation_step(step: int, evaluation_interval: int, delay_evaluation: int) -> bool:
    """AzureML's schedule: every multiple of ``evaluation_interval`` that is ``>= delay_evaluation``."""
    return step >= 1 and step >= delay_evaluation and step % evaluation_interval == 0


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _best(values: Iterable[float], direction: StudyDirection) -> float | None:
    finite = _finite(values)
    if not finite:
        return None
    return max(finite) if direction == StudyDirection.MAXIMIZE else min(finite)


def _worse(a: float, b: float, direction: StudyDirection) -> bool:
    """Whether ``a`` is strictly worse than ``b``."""
    return a < b if direction == StudyDirection.MAXIMIZE else a > b


def _values_up_to(trial: FrozenTrial, step: int) -> list[float]:
    return _finite(v for s, v in trial.intermediate_values.items() if s <= step)


class _AzureMLPolicy(BasePruner):
    """The evaluation schedule and the choice of trials to compare with, shared by the three policies.

    Each policy compares a trial with one number per other trial at the step (its value there, or its running
    average). A finished trial never changes, so its numbers are computed once, when the policy first sees it
    finished, and kept sorted per evaluation step; only the trials still open are read again at each
    decision. A decision therefore costs the trials in flight and a look-up, not a pass over the whole study
    (which made the driver's per-trial cost grow with the trial count), and equals the plain rule's
    (``tests/test_pruners.py`` checks the two against each other on random histories)."""

    def __init__(self, evaluation_interval: int = 1, delay_evaluation: int = 0) -> None:
        if evaluation_interval < 1:
            raise ValueError(f"evaluation_interval must be >= 1, got {evaluation_interval}")
        if delay_evaluation < 0:
            raise ValueError(f"delay_evaluation must be >= 0, got {delay_evaluation}")
        self.evaluation_interval = evaluation_interval
        self.delay_evaluation = delay_evaluation
        self._finished = _FinishedTrials()

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not is_evaluation_step(step, self.evaluation_interval, self.delay_evaluation):
            return False
        return self._stop(study, trial, step)

    def _stop(self, study: optuna.study.Study, trial: FrozenTrial, step: int) -> bool:
        raise NotImplementedError

    def _summary(self, trial: FrozenTrial, step: int) -> float:
        """The number this policy compares another trial by at ``step`` (which it reported, finite)."""
        return trial.intermediate_values[step]

    def _others(self, study: optuna.study.Study, trial: FrozenTrial, step: int) -> tuple[list[float], list[float]]:
        """The other trials' numbers at ``step``: the finished ones' (sorted) and the open ones'."""
        open_trials = self._finished.refresh(study, self)
        if trial.number in self._finished.numbers:  # asked about a finished trial: leave it out by hand
            others = [self._summary(t, step) for t in self._others_at(study, trial, step)]
            return sorted(others), []
        running = [
            self._summary(other, step)
            for other in open_trials
            if other.number != trial.number
            and other.state is TrialState.RUNNING
            and math.isfinite(other.intermediate_values.get(step, math.nan))
        ]
        return self._finished.by_step.get(step, []), running

    @staticmethod
    def _others_at(study: optuna.study.Study, trial: FrozenTrial, step: int) -> list[FrozenTrial]:
        """The other trials that reported a finite value at ``step``."""
        return [
            other
            for other in study.get_trials(deepcopy=False, states=_PARTICIPANT_STATES)
            if other.number != trial.number
            and step in other.intermediate_values
            and math.isfinite(other.intermediate_values[step])
        ]


class _FinishedTrials:
    """A policy's numbers for the study's finished trials (complete or pruned), sorted per evaluation step,
    and the trials not finished yet, read again at each decision. Kept for one study (another resets it)."""

    def __init__(self) -> None:
        self.study: tuple[int, int] | None = None
        self.seen = 0
        """Trials numbered below this have been looked at."""
        self.open: dict[int, int] = {}
        """number -> trial id of the trials not finished when last read."""
        self.numbers: set[int] = set()
        self.by_step: dict[int, list[float]] = {}

    def refresh(self, study: optuna.study.Study, policy: _AzureMLPolicy) -> list[FrozenTrial]:
        """Take in the trials that finished since the last call; return the open ones as they are now."""
        storage, study_id = study._storage, study._study_id
        if self.study != (id(storage), study_id):
            self.__init__()  # type: ignore[misc]
            self.study = (id(storage), study_id)
        while True:
            try:
                self.open[self.seen] = storage.get_trial_id_from_study_id_trial_number(study_id, self.seen)
            except KeyError:
                break
            self.seen += 1
        still_open: list[FrozenTrial] = []
        for number, trial_id in list(self.open.items()):
            trial = storage.get_trial(trial_id)
            if not trial.state.is_finished():
                still_open.append(trial)
                continue
            del self.open[number]
            if trial.state in _PARTICIPANT_STATES:
                self._add(trial, policy)
        return still_open

    def _add(self, trial: FrozenTrial, policy: _AzureMLPolicy) -> None:
        self.numbers.add(trial.number)
        for step, value in trial.intermediate_values.items():
            evaluated = is_evaluation_step(step, policy.evaluation_interval, policy.delay_evaluation)
            if evaluated and value is not None and math.isfinite(value):
                bisect.insort(self.by_step.setdefault(step, []), policy._summary(trial, step))


class BanditPruner(_AzureMLPolicy):
    """AzureML's Bandit policy: stop a trial that is not within the slack of the best trial.

    At an evaluation step ``N`` the trial's *best* value reported up to ``N`` (AzureML: "any jobs whose
    best metric at interval 10 is less than 0.8/(1+slack_factor)") is compared with the best value another
    trial reported *at* ``N`` ("the best performing job at interval 10 reported 0.8"). Maximize: prune if
    ``best_own < reference / (1 + slack_factor)`` or ``best_own < reference - slack_amount``. Minimize
    (AzureML documents only maximize; this mirrors it): prune if ``best_own > reference * (1 + slack_factor)``
    or ``best_own > reference + slack_amount``. Values exactly on the boundary are kept. With no other
    trial at step ``N`` nothing is pruned. ``slack_factor`` is a ratio and assumes a positive metric
    (``gpu_jobs.metrics.POSITIVE_METRICS``; the spec refuses it for ``r2``); use ``slack_amount`` otherwise.
    """

    def __init__(
        self,
        slack_factor: float | None = None,
        slack_amount: float | None = None,
        evaluation_interval: int = 1,
        delay_evaluation: int = 0,
    ) -> None:
        super().__init__(evaluation_interval, delay_evaluation)
        if (slack_factor is None) == (slack_amount is None):
            raise ValueError("BanditPruner needs exactly one of slack_factor or slack_amount")
        for name, value in (("slack_factor", slack_factor), ("slack_amount", slack_amount)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.slack_factor = slack_factor
        self.slack_amount = slack_amount

    def threshold(self, reference: float, direction: StudyDirection) -> float:
        """The worst value still kept, given the best trial's value ``reference``."""
        maximize = direction == StudyDirection.MAXIMIZE
        if self.slack_factor is not None:
            return reference / (1 + self.slack_factor) if maximize else reference * (1 + self.slack_factor)
        assert self.slack_amount is not None
        return reference - self.slack_amount if maximize else reference + self.slack_amount

    def _stop(self, study: optuna.study.Study, trial: FrozenTrial, step: int) -> bool:
        direction = study.direction
        own = _best(_values_up_to(trial, step), direction)
        if own is None:
            return True
        finished, running = self._others(study, trial, step)
        reference = _best(running + finished[:1] + finished[-1:], direction)  # a sorted list's best is an end
        if reference is None:
            return False
        return _worse(own, self.threshold(reference, direction), direction)


class MedianStoppingPruner(_AzureMLPolicy):
    """AzureML's median stopping: stop a trial whose best value is worse than the median running average.

    AzureML: "a run will be canceled at interval N if its best primary metric reported up to interval N is
    worse than the median of the running averages for intervals 1:N across all runs". Here: the trial's
    best value over steps ``<= N`` against the median (``statistics.median``: the mean of the two middle
    values for an even count) of the *other* trials' running averages, each the mean of that trial's values
    at steps ``<= N``, over the trials that reached step ``N``. The trial itself is left out of the median
    (as in Google Vizier's rule, which AzureML cites). "Worse" is strict: a tie with the median is kept.
    No other trial at step ``N``: nothing is pruned. Unlike Optuna's ``MedianPruner`` there are no startup
    trials: ``delay_evaluation`` is the only warm-up, as on AzureML.
    """

    def _summary(self, trial: FrozenTrial, step: int) -> float:
        return statistics.fmean(_values_up_to(trial, step))

    def _stop(self, study: optuna.study.Study, trial: FrozenTrial, step: int) -> bool:
        direction = study.direction
        own = _best(_values_up_to(trial, step), direction)
        if own is None:
            return True
        finished, running = self._others(study, trial, step)
        if not finished and not running:
            return False
        return _worse(own, statistics.median(finished + running), direction)


class TruncationSelectionPruner(_AzureMLPolicy):
    """AzureML's truncation selection: stop the trials in the lowest ``truncation_percentage`` percent.

    AzureML: "a job terminates at interval 5 if its performance at interval 5 is in the lowest 20% of
    performance of all jobs at interval 5". Here the population is every trial that reported step ``N``,
    this one included, ranked by its value *at* ``N``. AzureML does not document the rounding: we cut
    ``k = floor(n * truncation_percentage / 100)`` trials (5 trials at 20%: the worst 1; 4 trials at 20%:
    none), and a trial is in the cut iff at least ``n - k`` trials are strictly better than it, so trials
    tied at the boundary are all kept. AzureML's ``exclude_finished_jobs`` option is not offered: finished
    trials always take part (AzureML's default).
    """

    def __init__(self, truncation_percentage: int, evaluation_interval: int = 1, delay_evaluation: int = 0) -> None:
        super().__init__(evaluation_interval, delay_evaluation)
        if not 1 <= truncation_percentage <= 99:
            raise ValueError(f"truncation_percentage must be in [1, 99], got {truncation_percentage}")
        self.truncation_percentage = truncation_percentage

    def _stop(self, study: optuna.study.Study, trial: FrozenTrial, step: int) -> bool:
        direction = study.direction
        own = trial.intermediate_values.get(step)
        if own is None or not math.isfinite(own):
            return True
        finished, running = self._others(study, trial, step)
        n = 1 + len(finished) + len(running)
        cut = n * self.truncation_percentage // 100
        if cut == 0:
            return False
        if direction == StudyDirection.MAXIMIZE:  # the finished ones better than own: a sorted list's end
            better_finished = len(finished) - bisect.bisect_right(finished, own)
        else:
            better_finished = bisect.bisect_left(finished, own)
        better = better_finished + sum(1 for value in running if _worse(own, value, direction))
        return better >= n - cut


def fold_scores(running_means: dict[int, float]) -> dict[int, float]:
    """Each fold's own score from the running means a trial reports after folds 1, 2, ... (fold ``k`` is
    ``k * mean_k - (k - 1) * mean_(k-1)``); only the leading folds without a gap."""
    scores: dict[int, float] = {}
    previous = 0.0
    for step in range(1, len(running_means) + 1):
        if step not in running_means:
            break
        mean = running_means[step]
        scores[step] = step * mean - (step - 1) * previous
        previous = mean
    return scores


class _FoldView:
    """A study seen by Optuna's ``WilcoxonPruner``: its best trial with per-fold scores, not running means."""

    def __init__(self, study: optuna.study.Study) -> None:
        self._study = study
        self.direction = study.direction

    @property
    def best_trial(self) -> FrozenTrial:
        best = self._study.best_trial
        return _with_values(best, fold_scores(best.intermediate_values))


def _with_values(trial: FrozenTrial, values: dict[int, float]) -> FrozenTrial:
    view = copy.copy(trial)
    view.intermediate_values = values  # a shallow copy: the stored trial is untouched
    return view


class FoldWilcoxonPruner(BasePruner):
    """Optuna's ``WilcoxonPruner`` over CV folds: our trials report the running mean after each fold, and the
    signed-rank test pairs each fold's own score with the best trial's score on the same fold (the folds are
    the same split for every trial: one seed), so both are turned back into per-fold scores first."""

    def __init__(self, p_threshold: float = 0.1, n_startup_steps: int = 2) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._wilcoxon = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=n_startup_steps)

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        own = fold_scores(trial.intermediate_values)
        if not own:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the best trial has no intermediate values" and the like
            return bool(self._wilcoxon.prune(_FoldView(study), _with_values(trial, own)))  # type: ignore[arg-type]


class AnyOfPruner(BasePruner):
    """Prunes when any of its pruners does (a threshold beside another policy); asks each in order."""

    def __init__(self, *pruners: BasePruner) -> None:
        self.pruners = pruners

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        return any(pruner.prune(study, trial) for pruner in self.pruners)
