"""Experiments for the dashboard tests, written into a real store: one finished, one still running.

The trials are made here (seeded draws from the spec's own search space, fold scores that add up to
the recorded running means, pruned trials that stop early) so the tests need no training run.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import optuna

from shared.hpo.search_space import suggest_params
from shared.ports import Store
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, TrialState, best_of
from shared.spec import load_spec
from tests.control_plane import tiny_spec

FOLDS = 3


def _spec(name: str, trials: int) -> dict:
    return load_spec(
        tiny_spec(
            name=name,
            trial={"model": "random_forest", "cv_folds": FOLDS, "params": {"n_bins": 32}},
            search_space={
                "n_estimators": {"type": "choice", "values": [50, 100, 200]},
                "max_depth": {"type": "quniform", "min_value": 4, "max_value": 16, "q": 1},
                "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
                "min_samples_leaf": {"type": "loguniform", "min_value": 0.0, "max_value": 3.0},
            },
            limits={"max_total_trials": trials, "max_concurrent_trials": 2},
            early_termination={"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 1},
        )
    ).to_document()


def make_experiment(
    store: Store, experiment_id: str, *, trials: int, running: int = 0, status: ExperimentStatus
) -> ExperimentRecord:
    """An experiment with ``trials`` finished trials (some pruned, one failed) and ``running`` running ones."""
    document = _spec(experiment_id.replace("exp-", "flights-"), trials + running)
    spec = load_spec(document)
    rng = random.Random(experiment_id)
    sampler = optuna.samplers.RandomSampler(seed=7)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    start = datetime.now(UTC) - timedelta(seconds=40 * trials + 20)
    records: list[TrialRecord] = []
    for number in range(trials + running):
        trial = study.ask()
        params = suggest_params(trial, spec)
        quality = 0.80 + 0.06 * params["max_features"] + 0.002 * params["max_depth"] + 0.002 * number
        state = TrialState.COMPLETED
        if number == 3:
            state = TrialState.FAILED
        elif number in (2, 5, 7):
            state = TrialState.PRUNED
        if number >= trials:
            state = TrialState.RUNNING
        folds_run = {TrialState.PRUNED: 2, TrialState.FAILED: 1, TrialState.RUNNING: 1}.get(state, FOLDS)
        scores = [
            quality + rng.uniform(-0.01, 0.01) - (0.03 if state is TrialState.PRUNED else 0) for _ in range(folds_run)
        ]
        means = {k + 1: sum(scores[: k + 1]) / (k + 1) for k in range(len(scores))}
        began = start + timedelta(seconds=40 * number)
        finished = state is not TrialState.RUNNING
        value = means[FOLDS] if state is TrialState.COMPLETED else None
        record = TrialRecord(
            experiment_id=experiment_id,
            number=number,
            params=params,
            sampler_params=dict(trial.params),
            state=state,
            attempt=2 if number == 4 else 1,
            intermediate=means if state is not TrialState.FAILED else {},
            metrics={"accuracy": value, "fold_scores": {"accuracy": scores}, "engine": "sklearn"} if value else {},
            value=value,
            error="worker lost while running the trial: KilledWorker" if state is TrialState.FAILED else None,
            engine="sklearn" if finished else None,
            started_at=began,
            ended_at=began + timedelta(seconds=35) if finished else None,
            duration_s=35.0 if finished else None,
        )
        store.put_trial(record)
        records.append(record)
    done = [r for r in records if r.state.finished]
    per_trial = {r.number: round((r.duration_s or 0.0) * 0.75 / 3600, 5) for r in done}  # made-up $0.75/h
    cost = {
        "spent_usd": round(sum(per_trial.values()) * 1.2, 4),
        "budget_usd": 1.0,
        "basis": "test figures (not a price)",
        "per_trial_usd": per_trial,
    }
    record = ExperimentRecord(
        id=experiment_id,
        name=document["name"],
        status=status,
        spec=document,
        backend="local",
        created_at=start - timedelta(seconds=20),
        started_at=start,
        ended_at=start + timedelta(seconds=40 * trials) if status.terminal else None,
        trials_total=trials + running,
        trials_done=len(done),
        best=best_of(records, "maximize"),
        cost=cost,
    )
    return store.create_experiment(record)
