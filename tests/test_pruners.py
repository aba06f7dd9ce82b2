"""AzureML's early-termination rules as Optuna pruners, on hand-made trial histories."""

from __future__ import annotations

import math
import statistics
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from shared.hpo.pruners import (
    BanditPruner,
    MedianStoppingPruner,
    TruncationSelectionPruner,
    is_evaluation_step,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(direction: str = "maximize") -> optuna.Study:
    return optuna.create_study(direction=direction)


def finished(study: optuna.Study, values: dict[int, float], state: TrialState = TrialState.COMPLETE) -> None:
    """Add a finished trial with these intermediate values (its final value: the last one)."""
    value = values[max(values)] if state is TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, value=value, intermediate_values=values))


def running(study: optuna.Study, values: dict[int, float]) -> FrozenTrial:
    """Start a trial, report ``values`` in step order, return it frozen as the pruner sees it."""
    trial = study.ask()
    for step in sorted(values):
        trial.report(values[step], step)
    return study.trials[trial.number]


# --------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(
    ("interval", "delay", "expected"),
    [
        (1, 0, [1, 2, 3, 4, 5, 6]),
        (2, 0, [2, 4, 6]),
        (1, 3, [3, 4, 5, 6]),  # AzureML: "starting at evaluation interval" delay_evaluation
        (2, 3, [4, 6]),  # multiples of the interval that are >= the delay
        (3, 1, [3, 6]),
    ],
)
def test_evaluation_schedule(interval: int, delay: int, expected: list[int]) -> None:
    assert [s for s in range(1, 7) if is_evaluation_step(s, interval, delay)] == expected


def test_delay_and_interval_skip_evaluation() -> None:
    study = make_study()
    finished(study, {1: 0.9, 2: 0.9, 3: 0.9, 4: 0.9})
    pruner = BanditPruner(slack_amount=0.1, evaluation_interval=2, delay_evaluation=3)
    assert not pruner.prune(study, running(study, {1: 0.1}))  # before the delay
    assert not pruner.prune(study, running(study, {1: 0.1, 2: 0.1}))  # 2 < delay 3
    assert not pruner.prune(study, running(study, {1: 0.1, 2: 0.1, 3: 0.1}))  # 3 is not a multiple of 2
    assert pruner.prune(study, running(study, {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1}))  # first evaluation


def test_no_report_no_prune() -> None:
    study = make_study()
    finished(study, {1: 0.9})
    trial = study.ask()
    assert not BanditPruner(slack_amount=0.1).prune(study, study.trials[trial.number])


@pytest.mark.parametrize(
    "pruner",
    [BanditPruner(slack_factor=0.1), MedianStoppingPruner(), TruncationSelectionPruner(50)],
    ids=["bandit", "median", "truncation"],
)
def test_nan_metric_is_pruned(pruner: optuna.pruners.BasePruner) -> None:
    study = make_study()
    finished(study, {1: 0.5})
    assert pruner.prune(study, running(study, {1: math.nan}))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (BanditPruner, {"slack_factor": 0.1, "slack_amount": 0.1}),
        (BanditPruner, {}),
        (BanditPruner, {"slack_factor": -0.1}),
        (MedianStoppingPruner, {"evaluation_interval": 0}),
        (MedianStoppingPruner, {"delay_evaluation": -1}),
        (TruncationSelectionPruner, {"truncation_percentage": 100}),
    ],
)
def test_invalid_arguments(cls: type, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)


# ----------------------------------------------------------------------------------------- bandit
@pytest.mark.parametrize(("own", "pruned"), [(0.5, False), (0.4999, True)])
def test_bandit_slack_factor_boundary_maximize(own: float, pruned: bool) -> None:
    study = make_study("maximize")
    finished(study, {1: 0.75})  # best at step 1; threshold 0.75 / (1 + 0.5) = 0.5
    assert BanditPruner(slack_factor=0.5).prune(study, running(study, {1: own})) is pruned


@pytest.mark.parametrize(("own", "pruned"), [(0.5, False), (0.4999, True)])
def test_bandit_slack_amount_boundary_maximize(own: float, pruned: bool) -> None:
    study = make_study("maximize")
    finished(study, {1: 0.75})  # threshold 0.75 - 0.25 = 0.5
    finished(study, {1: 0.6})
    assert BanditPruner(slack_amount=0.25).prune(study, running(study, {1: own})) is pruned


@pytest.mark.parametrize(("own", "pruned"), [(0.75, False), (0.7501, True)])
def test_bandit_slack_factor_boundary_minimize(own: float, pruned: bool) -> None:
    study = make_study("minimize")
    finished(study, {1: 0.5})  # best (lowest); threshold 0.5 * (1 + 0.5) = 0.75
    finished(study, {1: 0.9})
    assert BanditPruner(slack_factor=0.5).prune(study, running(study, {1: own})) is pruned


@pytest.mark.parametrize(("own", "pruned"), [(0.75, False), (0.7501, True)])
def test_bandit_slack_amount_boundary_minimize(own: float, pruned: bool) -> None:
    study = make_study("minimize")
    finished(study, {1: 0.5})  # threshold 0.5 + 0.25
    assert BanditPruner(slack_amount=0.25).prune(study, running(study, {1: own})) is pruned


@pytest.mark.parametrize(("own", "pruned"), [(0.41, False), (0.39, True)])
def test_bandit_compares_with_the_others_at_the_same_step(own: float, pruned: bool) -> None:
    study = make_study()
    finished(study, {1: 0.9, 2: 0.6, 3: 0.95})  # at step 2 the best value is 0.6: threshold 0.4
    assert BanditPruner(slack_factor=0.5).prune(study, running(study, {1: 0.3, 2: own})) is pruned


def test_bandit_uses_the_trials_best_value_so_far() -> None:
    study = make_study()
    finished(study, {1: 0.8, 2: 0.8})
    # at step 2 the trial reports 0.3, but its best so far (0.8) is within the slack
    assert not BanditPruner(slack_factor=0.5).prune(study, running(study, {1: 0.8, 2: 0.3}))


def test_bandit_counts_running_and_pruned_trials_but_not_failed_ones() -> None:
    study = make_study()
    finished(study, {1: 0.99}, state=TrialState.FAIL)
    pruner = BanditPruner(slack_amount=0.1)
    running(study, {1: 0.6})
    assert not pruner.prune(study, running(study, {1: 0.55}))  # only the running 0.6 counts
    finished(study, {1: 0.7}, state=TrialState.PRUNED)
    assert pruner.prune(study, running(study, {1: 0.55}))  # the pruned trial's 0.7 counts


def test_bandit_without_others_at_that_step_does_not_prune() -> None:
    study = make_study()
    finished(study, {1: 0.9})  # never reached step 2
    assert not BanditPruner(slack_factor=0.01).prune(study, running(study, {1: 0.9, 2: 0.1}))
    assert not BanditPruner(slack_factor=0.01).prune(make_study(), running(make_study(), {1: 0.1}))


# ------------------------------------------------------------------------------- median stopping
def median_history(study: optuna.Study) -> None:
    finished(study, {1: 0.5, 2: 0.7, 3: 0.0})  # running average at step 2: 0.6 (step 3 not counted)
    finished(study, {1: 0.9, 2: 0.7})  # running average at step 2: 0.8
    finished(study, {1: 0.1})  # did not reach step 2: left out


@pytest.mark.parametrize(("own", "pruned"), [(0.7, False), (0.6999, True)])
def test_median_boundary_and_tie(own: float, pruned: bool) -> None:
    study = make_study()
    median_history(study)  # median of the running averages [0.6, 0.8] = 0.7; a tie is kept
    assert MedianStoppingPruner().prune(study, running(study, {1: own - 0.2, 2: own})) is pruned


def test_median_uses_the_trials_best_value_so_far() -> None:
    study = make_study()
    median_history(study)
    assert not MedianStoppingPruner().prune(study, running(study, {1: 0.75, 2: 0.2}))


@pytest.mark.parametrize(("own", "pruned"), [(0.5, False), (0.49, True)])
def test_median_of_an_odd_count(own: float, pruned: bool) -> None:
    study = make_study()
    for value in (0.2, 0.5, 0.9):
        finished(study, {1: value})
    assert MedianStoppingPruner().prune(study, running(study, {1: own})) is pruned


def test_median_counts_running_trials() -> None:
    study = make_study()
    finished(study, {1: 0.2})
    running(study, {1: 0.8})  # median of [0.2, 0.8] = 0.5
    assert MedianStoppingPruner().prune(study, running(study, {1: 0.45}))


@pytest.mark.parametrize(("own", "pruned"), [(0.5, False), (0.51, True)])
def test_median_minimize(own: float, pruned: bool) -> None:
    study = make_study("minimize")
    finished(study, {1: 0.3, 2: 0.5})  # running average 0.4
    finished(study, {1: 0.5, 2: 0.7})  # 0.6; median 0.5
    assert MedianStoppingPruner().prune(study, running(study, {1: 0.9, 2: own})) is pruned


def test_median_respects_the_delay() -> None:
    study = make_study()
    finished(study, {1: 0.9, 2: 0.9})
    pruner = MedianStoppingPruner(delay_evaluation=2)
    assert not pruner.prune(study, running(study, {1: 0.1}))
    assert pruner.prune(study, running(study, {1: 0.1, 2: 0.1}))


def test_median_without_others_does_not_prune() -> None:
    study = make_study()
    assert not MedianStoppingPruner().prune(study, running(study, {1: 0.0}))


# --------------------------------------------------------------------------- truncation selection
def truncation_study(values: list[float], direction: str = "maximize") -> optuna.Study:
    study = make_study(direction)
    for value in values:
        finished(study, {1: value})
    return study


@pytest.mark.parametrize(
    ("others", "own", "pruned"), [([0.6, 0.7, 0.8, 0.9], 0.5, True), ([0.5, 0.7, 0.8, 0.9], 0.6, False)]
)
def test_truncation_cuts_the_worst_of_five_at_20_percent(others: list[float], own: float, pruned: bool) -> None:
    study = truncation_study(others)  # floor(5 * 20 / 100) = 1: only the worst is cut
    assert TruncationSelectionPruner(20).prune(study, running(study, {1: own})) is pruned


@pytest.mark.parametrize(("percentage", "pruned"), [(20, False), (25, True)])
def test_truncation_rounds_down(percentage: int, pruned: bool) -> None:
    study = truncation_study([0.6, 0.7, 0.8])  # 4 trials: floor(0.8) = 0 cut at 20%, floor(1.0) = 1 at 25%
    assert TruncationSelectionPruner(percentage).prune(study, running(study, {1: 0.1})) is pruned


def test_truncation_keeps_ties_at_the_boundary() -> None:
    study = truncation_study([0.5, 0.7, 0.8, 0.9])
    assert not TruncationSelectionPruner(20).prune(study, running(study, {1: 0.5}))


@pytest.mark.parametrize(("own", "pruned"), [(0.45, True), (0.65, False)])  # 5th / 6th worst of 10
def test_truncation_larger_cut(own: float, pruned: bool) -> None:
    study = truncation_study([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert TruncationSelectionPruner(50).prune(study, running(study, {1: own})) is pruned  # cut 5 of 10


@pytest.mark.parametrize(("own", "pruned"), [(0.5, True), (0.35, False)])
def test_truncation_minimize(own: float, pruned: bool) -> None:
    study = truncation_study([0.1, 0.2, 0.3, 0.4], direction="minimize")
    assert TruncationSelectionPruner(20).prune(study, running(study, {1: own})) is pruned


def test_truncation_ranks_by_the_value_at_the_step() -> None:
    study = make_study()
    for values in ({1: 0.1, 2: 0.6}, {1: 0.1, 2: 0.7}, {1: 0.1, 2: 0.8}, {1: 0.1, 2: 0.9}):
        finished(study, values)
    # best so far (0.95 at step 1) would rank first; the value at step 2 ranks last
    assert TruncationSelectionPruner(20).prune(study, running(study, {1: 0.95, 2: 0.5}))


def test_truncation_alone_does_not_prune() -> None:
    study = make_study()
    assert not TruncationSelectionPruner(99).prune(study, running(study, {1: 0.0}))


# ------------------------------------------------------------------------------------ through Optuna
def test_should_prune_goes_through_the_pruner() -> None:
    study = optuna.create_study(direction="maximize", pruner=BanditPruner(slack_factor=0.1))
    finished(study, {1: 0.9})
    good, bad = study.ask(), study.ask()
    good.report(0.85, 1)
    bad.report(0.5, 1)
    assert not good.should_prune()
    assert bad.should_prune()


# ------------------------------------------------------------------------- Optuna's pruners, adapted
def test_fold_scores_invert_the_running_means_a_trial_reports() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from shared.hpo.pruners import fold_scores

    @given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20))
    def check(scores: list[float]) -> None:
        means = {k: sum(scores[:k]) / k for k in range(1, len(scores) + 1)}
        assert list(fold_scores(means).values()) == pytest.approx(scores, abs=1e-9)

    check()
    assert fold_scores({1: 0.5, 3: 0.7}) == {1: 0.5}  # a gap ends the folds it can recover


def _means(scores: list[float]) -> dict[int, float]:
    return {k: sum(scores[:k]) / k for k in range(1, len(scores) + 1)}


def test_wilcoxon_pairs_each_fold_with_the_best_trials_same_fold() -> None:
    """The best trial's folds vary a lot (hard and easy folds); a trial worse by 0.01 on every fold is
    stopped, though its running means stay above the best's on the early steps; one better on some folds
    is not. Running means (not fold scores) would pair the wrong quantities."""
    from shared.hpo.pruners import FoldWilcoxonPruner

    best = [0.95, 0.70, 0.90, 0.60, 0.85, 0.80]
    study = make_study()
    finished(study, _means(best))
    pruner = FoldWilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    worse = [v - 0.01 for v in best]
    decisions = [pruner.prune(study, running(study, _means(worse[:k]))) for k in range(1, 6)]
    assert decisions[-1] and not decisions[0]
    mixed = [v + (0.02 if i % 2 else -0.01) for i, v in enumerate(best)]
    assert not any(pruner.prune(study, running(study, _means(mixed[:k]))) for k in range(1, 6))


def test_successive_halving_keeps_the_best_third_at_each_rung() -> None:
    from optuna.pruners import SuccessiveHalvingPruner

    study = make_study()
    pruner = SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    for value in (0.9, 0.8, 0.7):  # three trials reach rung 0 (step 1) in turn
        trial = running(study, {1: value})
        pruned = pruner.prune(study, trial)
        assert pruned is (value != 0.9)
        assert study._storage.get_trial(trial._trial_id).system_attrs["completed_rung_0"] == value


def test_threshold_beside_another_policy_stops_what_either_stops() -> None:
    from optuna.pruners import ThresholdPruner

    from shared.hpo.pruners import AnyOfPruner

    study = make_study()
    finished(study, {1: 0.9, 2: 0.9})
    both = AnyOfPruner(ThresholdPruner(lower=0.5), BanditPruner(slack_amount=0.1))
    assert both.prune(study, running(study, {1: 0.4}))  # under the threshold
    assert both.prune(study, running(study, {1: 0.7}))  # outside Bandit's slack
    assert not both.prune(study, running(study, {1: 0.85}))


# ------------------------------------------------------------- kept numbers against the plain rules
def _plain_rule(pruner: optuna.pruners.BasePruner, study: optuna.Study, trial: FrozenTrial) -> bool:
    """Each policy's rule as its docstring states it, over every trial of the study (no kept numbers)."""
    step = trial.last_step
    assert isinstance(pruner, BanditPruner | MedianStoppingPruner | TruncationSelectionPruner)
    if step is None or not is_evaluation_step(step, pruner.evaluation_interval, pruner.delay_evaluation):
        return False
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0  # larger is better
    others = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if t.number != trial.number and math.isfinite(t.intermediate_values.get(step, math.nan))
    ]

    def up_to(t: FrozenTrial) -> list[float]:
        return [v for s, v in t.intermediate_values.items() if s <= step and math.isfinite(v)]

    own_values = up_to(trial)
    if isinstance(pruner, TruncationSelectionPruner):
        own = trial.intermediate_values.get(step, math.nan)
        if not math.isfinite(own):
            return True
        population = [own] + [t.intermediate_values[step] for t in others]
        cut = len(population) * pruner.truncation_percentage // 100
        return cut > 0 and sum(sign * v > sign * own for v in population) >= len(population) - cut
    if not own_values:
        return True
    best_own = sign * max(sign * v for v in own_values)
    if not others:
        return False
    if isinstance(pruner, MedianStoppingPruner):
        return sign * best_own < sign * statistics.median(statistics.fmean(up_to(t)) for t in others)
    reference = sign * max(sign * t.intermediate_values[step] for t in others)
    return sign * best_own < sign * pruner.threshold(reference, study.direction)


def test_the_policies_decide_as_their_plain_rules_while_trials_come_and_go() -> None:
    """One policy object through a random history (trials added finished, asked, reporting, ending in any
    state, NaN values, ties): every decision equals the plain rule's over the whole study at that moment."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.sampled_from([0.1, 0.2, 0.5, 0.5, 0.7, 0.9, math.nan]) | st.floats(0.0, 1.0)
    histories = st.dictionaries(st.integers(1, 4), values, min_size=1, max_size=4)
    policies = st.sampled_from(
        [
            lambda i, d: BanditPruner(slack_factor=0.2, evaluation_interval=i, delay_evaluation=d),
            lambda i, d: BanditPruner(slack_amount=0.1, evaluation_interval=i, delay_evaluation=d),
            lambda i, d: MedianStoppingPruner(evaluation_interval=i, delay_evaluation=d),
            lambda i, d: TruncationSelectionPruner(40, evaluation_interval=i, delay_evaluation=d),
        ]
    )

    @given(
        policies,
        st.integers(1, 2),
        st.integers(0, 2),
        st.sampled_from(["maximize", "minimize"]),
        st.data(),
    )
    @settings(max_examples=60, deadline=None)
    @pytest.mark.filterwarnings("ignore:The reported value is ignored")
    def check(make: Any, interval: int, delay: int, direction: str, data: st.DataObject) -> None:
        pruner = make(interval, delay)
        study = make_study(direction)
        open_trials: list[optuna.Trial] = []
        for _ in range(data.draw(st.integers(1, 25))):
            action = data.draw(st.sampled_from(["add", "ask", "report", "end", "decide"]))
            if action == "add":
                state = data.draw(st.sampled_from([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]))
                value = 0.5 if state is TrialState.COMPLETE else None
                study.add_trial(create_trial(state=state, value=value, intermediate_values=data.draw(histories)))
            elif action == "ask":
                open_trials.append(study.ask())
            elif open_trials:
                trial = open_trials[data.draw(st.integers(0, len(open_trials) - 1))]
                if action == "report":  # a step reported twice keeps its first value, as in Optuna
                    trial.report(data.draw(values), data.draw(st.integers(1, 4)))
                elif action == "end":
                    open_trials.remove(trial)
                    state = data.draw(st.sampled_from([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]))
                    study.tell(trial, 0.5 if state is TrialState.COMPLETE else None, state=state)
                else:
                    frozen = study.trials[trial.number]
                    assert pruner.prune(study, frozen) is _plain_rule(pruner, study, frozen)
            for last in study.get_trials(deepcopy=False)[-1:]:  # asked about the latest, finished or not
                assert pruner.prune(study, last) is _plain_rule(pruner, study, last)

    check()
