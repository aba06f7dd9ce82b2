"""Stopping rules for the whole run (target value, no improvement in N trials, Optuna's terminator), on a real
Dask LocalCluster with scripted trials: each stops the run where it should, names itself in the outcome and
the experiment's history, and lets no trial start after it."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster

from shared.backends.outcome import DriverOutcome, outcome_status
from shared.hpo import stopping
from shared.hpo.driver import HpoDriver
from shared.records import TrialRecord, TrialState
from shared.spec import SpecError, load_spec
from shared.store.local import LocalStore
from tests.test_hpo_driver import BASE, make_spec, new_experiment
from tests.trial_functions import scripted_trial


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def sequential(**limits: Any):
    return make_spec(limits={"max_total_trials": 12, "max_concurrent_trials": 1, **limits})


def run(store, client, spec):
    experiment_id = new_experiment(store, spec)
    driver = HpoDriver(spec, experiment_id, store, client, trial_fn=scripted_trial, poll_interval=0.02)
    return driver.run(), store.list_trials(experiment_id)


def test_without_a_rule_the_trial_budget_stops_the_run(store, client):
    outcome, trials = run(store, client, sequential(max_total_trials=3))
    assert outcome.stopped_by == "max_total_trials" and outcome.reason == "trial budget used" and len(trials) == 3


def test_target_value_stops_at_the_first_trial_that_reaches_it(store, client):
    # scripted trials score their max_features; seed 7 draws them in a known order, the same every run
    _, reference = run(store, client, sequential())
    values = [t.value for t in reference]
    target = sorted(values)[-3]  # reached by a trial before the last, not by the first
    first = next(i for i, v in enumerate(values) if v >= target)
    assert 0 < first < len(values) - 1
    outcome, trials = run(store, client, sequential(target_value=target))
    assert len(trials) == first + 1  # sequential: nothing started after the trial that reached it
    assert outcome.status == "COMPLETED" and outcome.stopped_by == "target_value"
    assert f"trial {first}'s accuracy" in outcome.reason and outcome.best.number == first


def test_no_improvement_counts_trials_in_a_row_without_a_better_best(store, client):
    _, reference = run(store, client, sequential())
    best, since, expected = -1.0, 0, None
    for index, trial in enumerate(reference):
        best, since = (trial.value, 0) if trial.value > best else (best, since + 1)
        if since == 2:
            expected = index + 1
            break
    assert expected is not None and expected < len(reference)
    outcome, trials = run(store, client, sequential(no_improvement_trials=2))
    assert len(trials) == expected and outcome.stopped_by == "no_improvement_trials"
    assert outcome.reason.startswith("no improvement in 2 trials since trial")


def test_the_rule_is_in_the_outcome_the_control_plane_reads_and_in_the_history(store, client, tmp_path):
    from tests.control_plane import local_context
    from tests.fakes.scripted import ScriptedBackend
    from tests.test_state_machine import deliver, next_event, submit

    outcome, _ = run(store, client, sequential(no_improvement_trials=2))
    document = {**asdict(outcome), "best": outcome.best.model_dump(mode="json")}  # as run_driver writes it
    parsed = DriverOutcome.model_validate(document)
    assert parsed.stopped_by == "no_improvement_trials"

    class Finished(ScriptedBackend):
        def poll(self, record):  # the driver's outcome, as the local and vmcluster backends read it
            self._call("poll", record)
            return outcome_status(parsed)

    ctx = local_context(tmp_path / "cp")
    ctx.backends["local"] = Finished()
    record = submit(ctx)
    while deliver(ctx, next_event(ctx)) != "finished":
        pass
    history = ctx.store.get_experiment(record.id).history
    assert history[-1].reason == f"run finished: {outcome.reason}"


@pytest.mark.parametrize("rule", ["target_value", "no_improvement_trials", "terminator"])
def test_azureml_refuses_a_rule_its_sweep_lacks(rule):
    document = copy.deepcopy(BASE)
    document["limits"] = {**document["limits"], rule: {"target_value": 0.9, "no_improvement_trials": 3,
                                                       "terminator": {"min_trials": 5}}[rule]}  # fmt: skip
    load_spec(document)  # our driver runs it
    document["compute"] = {"backend": "azureml", "subscription_id": "s", "resource_group": "rg", "workspace": "ws"}
    with pytest.raises(SpecError) as caught:
        load_spec(document)
    (error,) = [e for e in caught.value.errors if e["loc"] == f"limits.{rule}"]
    assert "'local' or 'vmcluster'" in error["msg"]


def test_the_terminator_reads_each_trials_fold_scores_also_after_a_restart(store, client):
    """Optuna's CrossValidationErrorEvaluator reads a completed trial's fold scores from a system attribute;
    the driver sets it when the trial ends and gives it back when a restarted driver rebuilds the study."""
    spec = sequential(max_total_trials=3)
    experiment_id = new_experiment(store, spec)
    driver = HpoDriver(spec, experiment_id, store, client, trial_fn=scripted_trial, poll_interval=0.02)
    driver.stop_rules = stopping.StopRules(spec)
    driver.run()
    live = [t.system_attrs[stopping.CV_SCORES_KEY] for t in driver.study.get_trials()]
    rebuilt = HpoDriver(spec, experiment_id, store, client, trial_fn=scripted_trial)
    rebuilt._resume()
    assert [t.system_attrs[stopping.CV_SCORES_KEY] for t in rebuilt.study.get_trials()] == live
    assert all(len(scores) == 3 for scores in live)
    from optuna.terminator import CrossValidationErrorEvaluator

    error = CrossValidationErrorEvaluator().evaluate(rebuilt.study.get_trials(), rebuilt.study.direction)
    assert error > 0  # scripted folds differ by 0.01: the noise the regret bound is compared with


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_the_terminator_without_torch_fails_the_run_before_any_trial(store, client):
    spec = sequential(terminator={"min_trials": 3})
    experiment_id = new_experiment(store, spec)
    with pytest.raises(RuntimeError, match=r"limits\.terminator needs the Python package"):
        HpoDriver(spec, experiment_id, store, client, trial_fn=scripted_trial).run()
    assert store.list_trials(experiment_id) == []


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the terminator's Gaussian process needs torch")
def test_the_terminator_stops_a_run_that_has_converged(store, client):
    """Every draw scores the same (a one-value space): no regret is left, so it stops at min_trials."""
    spec = make_spec(
        search_space={"max_features": {"type": "choice", "values": [0.5, 0.5000001]},
                      "n_estimators": {"type": "choice", "values": [10]}},
        limits={"max_total_trials": 30, "max_concurrent_trials": 1, "terminator": {"min_trials": 5}},
    )  # fmt: skip
    outcome, trials = run(store, client, spec)
    assert outcome.stopped_by == "terminator" and len(trials) < 30


def test_stopped_by_names_the_limit_when_no_rule_stopped_it():
    records = [TrialRecord(experiment_id="e", number=0, params={}, state=TrialState.COMPLETED, value=0.5)]
    from shared.hpo.outcome import experiment_outcome

    assert experiment_outcome(records, "maximize", "timeout").stopped_by == "timeout"
    assert experiment_outcome(records, "maximize", "budget").stopped_by == "max_cost"
    assert experiment_outcome(records, "maximize", "cancelled").stopped_by == "cancelled"
    rule = stopping.Stop("target_value", "target reached")
    assert experiment_outcome(records, "maximize", "timeout", rule).stopped_by == "timeout"  # the hard stop wins
    assert experiment_outcome(records, "maximize", None, rule).reason == "target reached"


@pytest.mark.parametrize("rule", ["target_value", "no_improvement_trials", "terminator"])
def test_a_rule_on_one_metric_is_refused_with_several_objectives(rule):
    document = copy.deepcopy(BASE)
    document["objective"] = {"primary_metric": "accuracy", "goal": "maximize", "also": [{"metric": "model_size_mb"}]}
    document["limits"] = {**document["limits"], rule: {"target_value": 0.9, "no_improvement_trials": 3,
                                                       "terminator": {"min_trials": 5}}[rule]}  # fmt: skip
    with pytest.raises(SpecError) as caught:
        load_spec(document)
    (error,) = [e for e in caught.value.errors if e["loc"] == f"limits.{rule}"]
    assert "objective.also" in error["msg"]
