"""How long the Function App takes to draw an experiment's page, and how big it is, as trials grow.

Prints, for 100, 1,000 and 5,000 trials (4 searched parameters, 3 folds, a quarter pruned): the time
to render the page (charts as SVG, the trial table) from records already read, and the page's size.
Usage: ``python bench/dashboard_render.py [--trials 100 1000 5000]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.dashboard.pages import experiment_page
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, TrialState

SPACE = {
    "n_estimators": {"type": "choice", "values": [50, 100, 200, 400]},
    "max_depth": {"type": "quniform", "min_value": 4, "max_value": 16, "q": 1},
    "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
    "min_samples_leaf": {"type": "loguniform", "min_value": 0.0, "max_value": 3.0},
}


SPEC = {
    "name": "bench",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
    "trial": {"model": "random_forest"},
    "search_space": SPACE,
    "objective": {"primary_metric": "accuracy", "goal": "maximize"},
}


def records(n: int) -> tuple[ExperimentRecord, list[TrialRecord]]:
    rng = random.Random(n)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    trials = []
    for number in range(n):
        pruned = rng.random() < 0.25
        folds = 2 if pruned else 3
        scores = [rng.uniform(0.82, 0.89) for _ in range(folds)]
        means = {k + 1: sum(scores[: k + 1]) / (k + 1) for k in range(folds)}
        trials.append(
            TrialRecord(
                experiment_id="exp-bench",
                number=number,
                params={
                    "n_estimators": rng.choice([50, 100, 200, 400]),
                    "max_depth": rng.randint(4, 16),
                    "max_features": rng.uniform(0.2, 1.0),
                    "min_samples_leaf": rng.randint(1, 20),
                },
                state=TrialState.PRUNED if pruned else TrialState.COMPLETED,
                intermediate=means,
                metrics={} if pruned else {"fold_scores": {"accuracy": scores}},
                value=None if pruned else means[3],
                engine="cpu",
                started_at=start + timedelta(seconds=number),
                ended_at=start + timedelta(seconds=number + 30),
                duration_s=30.0,
            )
        )
    record = ExperimentRecord(
        id="exp-bench",
        name="bench",
        status=ExperimentStatus.COMPLETED,
        spec=SPEC,
        trials_total=n,
        trials_done=n,
    )
    return record, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    importances = {"evaluator": "FanovaImportanceEvaluator", "trials": 1, "importances": {"max_features": 1.0}}
    for n in args.trials:
        record, trials = records(n)
        times = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            page = experiment_page(record, trials, importances, "key", has_model=True)
            times.append(time.perf_counter() - began)
        per_trial_us = statistics.median(times) / n * 1e6
        print(
            f"trials={n} render_ms={statistics.median(times) * 1000:.1f} page_kib={len(page.encode()) / 1024:.0f} "
            f"us_per_trial={per_trial_us:.0f}"
        )


if __name__ == "__main__":
    main()
