"""``rapids-hpo plan`` expects a run time from trials measured here (issue 30): the newest finished run of
the same workload, or it says it has none; the limits' range stays beside it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shared.cost.measured import expected_line, last_run
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, TrialState
from shared.spec import load_spec
from shared.store.local import LocalStore
from tests.test_task_examples import EXAMPLES, rapids_hpo

SPEC = EXAMPLES / "flights-rf.yaml"
ENDED = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def finished_run(store: LocalStore, experiment_id: str, document: dict, durations: list[float], **more) -> None:
    store.create_experiment(
        ExperimentRecord(
            id=experiment_id,
            name="flights-rf",
            status=more.get("status", ExperimentStatus.COMPLETED),
            spec=load_spec(document).to_document(),
            ended_at=ENDED,
        )
    )
    for number, seconds in enumerate(durations):
        state = TrialState.PRUNED if number == 0 else TrialState.COMPLETED  # a pruned trial's time is not a trial's
        store.put_trial(
            TrialRecord(
                experiment_id=experiment_id, number=number, params={}, state=state, value=0.8, duration_s=seconds
            )
        )


def test_the_newest_finished_run_of_the_same_workload_gives_the_figure(tmp_path):
    store = LocalStore(tmp_path / "store")
    document = yaml.safe_load(SPEC.read_text())
    spec = load_spec(document)
    assert last_run(store, spec) is None
    assert "no run of this data and model has finished here" in expected_line(spec, None)
    finished_run(store, "exp-20261204100000-aaaaaa", document, [1.0, 40.0, 60.0])
    other_model = {**document, "trial": {**document["trial"], "model": "xgboost", "params": {}}, "search_space": {
        "max_depth": {"type": "choice", "values": [3, 4]}}}  # fmt: skip
    finished_run(store, "exp-20261204110000-bbbbbb", other_model, [1.0, 500.0])
    other_rows = {**document, "dataset": {**document["dataset"], "max_rows": 1000}}
    finished_run(store, "exp-20261204110500-cccccc", other_rows, [1.0, 5.0])
    failed = "exp-20261204111000-dddddd"
    finished_run(store, failed, document, [1.0, 900.0], status=ExperimentStatus.FAILED)
    measured = last_run(store, spec)
    assert measured is not None and measured.experiment_id == "exp-20261204100000-aaaaaa"
    assert measured.trials == 2 and measured.mean_s == 50.0  # the pruned trial left out
    line = expected_line(spec, measured)
    assert line.startswith("~4.2 min: 5 waves of 2 trials x 50 s, the mean of the 2 completed trials")
    assert "exp-20261204100000-aaaaaa, ended 2026-12-04 12:00 UTC" in line
    other_space = {**document, "search_space": {"max_depth": {"type": "choice", "values": [5, 6]}}}
    assert last_run(store, load_spec(other_space)) == measured  # the search may differ: the line says so


@pytest.mark.slow  # three `rapids-hpo plan` processes (~35 s under load); last_run's figures are the in-process tests
def test_plan_prints_what_it_expects_beside_the_range(tmp_path: Path):
    home = tmp_path / "home"
    finished_run(LocalStore(home / "store"), "exp-20261204100000-aaaaaa", yaml.safe_load(SPEC.read_text()), [1, 12, 12])
    result = rapids_hpo("plan", str(SPEC), home=home, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "runs      0.19-0.42 h of wall time" in result.stdout
    assert "expects   ~1.0 min: 5 waves of 2 trials x 12 s" in result.stdout
    as_yaml = yaml.safe_load(rapids_hpo("plan", str(SPEC), "-o", "yaml", home=home, timeout=120).stdout)
    assert as_yaml["plan"]["expected_wall_time"].startswith("~1.0 min")
    assert "node_hours" not in as_yaml["dry_run"] and as_yaml["dry_run"]["billed_node_hours"] == 0.0
    fresh = rapids_hpo("plan", str(SPEC), home=tmp_path / "elsewhere", timeout=120)
    assert "expects   no run of this data and model has finished here" in fresh.stdout
    assert not (tmp_path / "elsewhere").exists()  # plan creates no store


# ----------------------------------------------------------------------------- rungs (issue 25)
ROUNDS = {"report_every": 10, "params": {"num_boost_round": 60}}
"""Fixed rounds: the flights example searches them, which the test drops."""


def stepped_run(store: LocalStore, experiment_id: str, document: dict, curves: list[dict[int, float]]) -> None:
    """A finished run whose completed trials reported these running values (the last one their value)."""
    finished_run(store, experiment_id, document, [])
    for number, curve in enumerate(curves):
        done = TrialState.COMPLETED
        store.put_trial(TrialRecord(experiment_id=experiment_id, number=number, params={}, state=done,
                                    intermediate=curve, step_unit="round", value=curve[max(curve)]))  # fmt: skip


def slow_starters(n: int = 8) -> list[dict[int, float]]:
    """Trial k ends at 0.80 + k/100; until round 20 the ranks are reversed (the slow learners look worst), from
    round 30 on they are the end's."""
    return [{10: 0.9 - k / 100, 20: 0.85 - k / 200, 30: 0.7 + k / 100, 40: 0.75 + k / 100, 50: 0.78 + k / 100,
             60: 0.80 + k / 100} for k in range(n)]  # fmt: skip


def test_rank_agreement_finds_the_step_from_which_trials_rank_as_at_their_end() -> None:
    from shared.hpo.rung_check import agreeing_from, rank_agreement, spearman

    trials = [TrialRecord(experiment_id="x", number=k, params={}, state=TrialState.COMPLETED, intermediate=curve,
                          step_unit="round", value=curve[60]) for k, curve in enumerate(slow_starters())]  # fmt: skip
    agreement = rank_agreement(trials)
    assert sorted(agreement) == [10, 20, 30, 40, 50]  # the last step is the end itself
    assert agreement[10] == pytest.approx(-1.0) and agreement[30] == pytest.approx(1.0)
    assert agreeing_from(agreement) == 30
    assert agreeing_from({10: 0.9, 20: -0.2, 30: 0.6}) == 30  # a later disagreement resets it
    assert agreeing_from({10: 0.9, 20: 0.4}) is None
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)  # ties share their mean rank
    assert rank_agreement(trials[:5]) == {}  # too few trials to say


def test_plan_says_when_a_first_rung_comes_before_the_ranks_agree(tmp_path: Path) -> None:
    from shared.hpo.rung_check import rung_advice

    store = LocalStore(tmp_path / "store")
    document = yaml.safe_load((EXAMPLES / "flights-xgb.yaml").read_text())
    document["trial"] = {**document["trial"], **ROUNDS}
    document["search_space"].pop("num_boost_round", None)
    halving = {**document, "early_termination": {"type": "successive_halving"}}
    assert rung_advice(load_spec(halving), store) is None  # no run of this workload yet
    stepped_run(store, "exp-20261204100000-aaaaaa", document, slow_starters())
    advice = rung_advice(load_spec(halving), store)
    assert advice is not None and "from step 30" in advice and "first rung is step 10: it would stop" in advice
    assert "or trial.fidelity: rows" in advice  # the other way out, where early rounds rank unlike the end
    later = {**document, "early_termination": {"type": "successive_halving", "min_resource": 30}}
    assert "first rung is step 30: it comes after that" in (rung_advice(load_spec(later), store) or "")
    other_metric = {**halving, "objective": {**document["objective"], "primary_metric": "accuracy", "goal": "maximize"}}
    assert rung_advice(load_spec(other_metric), store) is None  # ranks by another metric say nothing
    assert rung_advice(load_spec({**document, "early_termination": None}), store) is None
