"""A trial's final message carries how it ended, so the driver need not fetch the task's result (issue 29).
What it says is parsed bounded, and taken only from the worker the trial runs on (the scheduler stamps
each worker's events with its address): a forged or malformed one leaves the trial to its future's result."""

from __future__ import annotations

import math
from typing import Any

import pytest
from distributed import Client, get_client, get_worker

from shared.bounded import MAX_TEXT
from shared.hpo.driver import HpoDriver
from shared.hpo.reports import BadReport, TrialReport, parse_report
from shared.hpo.trial_task import FOLDS, FOLDS_METADATA, TrialTask, folds_metadata_key, run_trial_task
from shared.records import TrialState
from shared.store.local import LocalStore
from tests.test_hpo_driver import make_spec, new_experiment
from tests.trial_functions import scripted_trial

FINAL = {"number": 3, "attempt": 1, "final": True}


def test_a_final_result_parses_bounded_and_a_bad_one_names_its_trial() -> None:
    told = {
        "state": "COMPLETED",
        "metrics": {"accuracy": 0.5, "engine": "sklearn"},
        "started_at": "2026-12-04T21:00:00",
    }
    report = parse_report({**FINAL, "result": told})
    assert isinstance(report, TrialReport) and report.result is not None and report.result.metrics["accuracy"] == 0.5
    long_error = parse_report({**FINAL, "result": {"state": "FAILED", "error": "x" * 10 * MAX_TEXT}})
    assert isinstance(long_error, TrialReport) and long_error.result is not None
    assert long_error.result.error is not None and len(long_error.result.error) <= MAX_TEXT
    for result in (
        {"state": "RUNNING"},  # a trial does not end running
        {"state": "COMPLETED", "metrics": {"accuracy": math.nan}},
        {"state": "COMPLETED", "duration_s": -1.0},
        {"state": "COMPLETED", "surprise": 1},
    ):
        bad = parse_report({**FINAL, "result": result})
        assert isinstance(bad, BadReport) and (bad.number, bad.attempt) == (3, 1), result
    assert isinstance(
        parse_report({"number": 3, "attempt": 1, "started": True, "result": {"state": "FAILED"}}), BadReport
    )


def _trial_channel() -> tuple[str, int, int]:
    experiment, number, attempt = str(get_worker().get_current_task()).removeprefix("trial-").rsplit("-", 2)
    return f"rapids-hpo-{experiment}", int(number), int(attempt)


def forging_trial(**kwargs: Any) -> dict[str, Any]:
    """Before its real end, claims a perfect one: through a client (no worker's stamp) and, malformed,
    through its own worker's stream."""
    channel, number, attempt = _trial_channel()
    claim = {"number": number, "attempt": attempt, "final": True}
    get_client().log_event(channel, {**claim, "result": {"state": "COMPLETED", "metrics": {"accuracy": 0.999}}})
    get_worker().log_event(channel, {**claim, "result": {"state": "COMPLETED", "metrics": {"accuracy": "x" * 10**6}}})
    return scripted_trial(**kwargs)


@pytest.mark.parametrize("trial_fn", [scripted_trial, forging_trial])
def test_each_trial_ends_with_what_it_returned_whatever_else_claims_its_end(
    store: LocalStore, dask_client: Client, trial_fn: Any
) -> None:
    spec = make_spec(limits={"max_total_trials": 4, "max_concurrent_trials": 2})
    experiment_id = new_experiment(store, spec)
    outcome = HpoDriver(spec, experiment_id, store, dask_client, trial_fn=trial_fn).run()
    trials = store.list_trials(experiment_id)
    assert outcome.trials_done == 4 and [t.state for t in trials] == [TrialState.COMPLETED] * 4
    assert all(t.value == pytest.approx(t.params["max_features"]) for t in trials)  # not 0.999
    assert all(t.engine == "scripted" and len(t.intermediate) == 3 for t in trials)


def test_a_trial_publishes_each_fold_it_goes_on_from_and_not_its_last(dask_client: Client) -> None:
    """What a rerun of the task resumes from (the scheduler's metadata): every fold but the last, under its
    index. The last is not published: the trial's work is over after it, and its publication was a scheduler
    call per trial (issue 29); a worker lost in that instant costs that one fold's rerun."""
    task = TrialTask(
        experiment_id="exp-publish",
        number=0,
        attempt=1,
        params={"max_features": 0.5, "n_estimators": 1},
        data="unused",
        target="unused",
        data_format=None,
        max_rows=None,
        model="random_forest",
        cv_folds=4,
        seed=0,
        engine="scripted",
        primary_metric="accuracy",
        trial_timeout=None,
        n_jobs=1,
        channel="rapids-hpo-exp-publish",
        awaits_decisions=False,
    )
    result = dask_client.submit(run_trial_task, task, scripted_trial, pure=False).result()
    assert result.state is TrialState.COMPLETED
    key = folds_metadata_key(task.channel, task.number, task.attempt)
    published = dask_client.get_metadata([*key, FOLDS], default={})
    dask_client.set_metadata([FOLDS_METADATA, task.channel], {})
    assert sorted(published) == ["0", "1", "2"]  # the folds of steps 1-3, each under its index
    assert [published[str(i)]["split"] for i in range(3)] == ["scripted-1", "scripted-2", "scripted-3"]
