"""What a rung costs: the seconds of a step a pruner can stop at, as a share of a full fit of the same trial.

Successive halving saves trial-seconds only if a trial stopped at its first rung costs much less than one that
runs to the end. Per table of ``bench/early_termination.py`` and per random configuration of its search space
(seeded, the same draws as its seed search), one process, one thread, this measures with ``run_trial``:

* ``rows`` (``trial.fidelity: rows``, ``report_every 3``, ``row_factor 3``: steps at 3, 11, 33 and 100 percent of
  each fold's training rows, every step a refit with all the rounds): the seconds between consecutive steps are
  the refit at 11, 33 and 100 percent (with its prediction and scoring). ``rows_11`` and ``rows_33`` are the
  first two against the last;
* ``rounds`` (``report_every 10``): the seconds between round 10 and 20 (ten more rounds, predicted and scored:
  what the first rung at round 10 costs past the trial's start) against the same full refit.

``asha`` is then what one trial costs under successive halving with reduction factor 3 that stops two thirds at
each rung, as a share of a full fit: ``rows_11 + rows_33 / 3 + 1 / 9`` (rows; every step refits) or, by rounds
(rungs at 10, 30, 90; a step only adds rounds), :func:`asha_rounds`. Every figure is a ratio of two timings of
one trial in one process, which the machine's load moves far less than it moves seconds: the reference is the
full fit beside it. The ideal shares (``0.11``, ``0.33``) are what a rung would cost if a fit's seconds were
proportional to its rows.

    python bench/fidelity_cost.py [--draws 5] [--rounds 160] [--flights-rows 3000,10000,30000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from bench.early_termination import spec_for, tables  # noqa: E402
from gpu_jobs.trial import run_trial  # noqa: E402
from shared.hpo.search_space import suggest_params  # noqa: E402

ROW_STEPS = (3, 11, 33, 100)
"""``percent_levels(3, 3)``: the refits whose gaps give the 11, 33 and 100 percent fits."""


def step_times(dataset: dict[str, Any], params: dict[str, Any], **fidelity: Any) -> dict[int, float]:
    """``perf_counter`` at each step a trial of ``params`` on ``dataset`` reports (one thread, 3 folds)."""
    times: dict[int, float] = {}
    run_trial(
        data=dataset["uri"],
        target=dataset["target"],
        max_rows=dataset.get("max_rows"),
        model="xgboost",
        params=params,
        cv_folds=3,
        n_jobs=1,
        on_fold=lambda step, running, mark: times.__setitem__(step, time.perf_counter()),
        **fidelity,
    )
    return times


def costs(dataset: dict[str, Any], params: dict[str, Any]) -> dict[str, float]:
    """One configuration's rung costs as shares of its full refit (see the module's docstring)."""
    rows = step_times(dataset, params, report_every=3, fidelity="rows", row_factor=3)
    assert tuple(rows) == ROW_STEPS, rows
    full = rows[100] - rows[33]
    rounds = step_times(dataset, params, report_every=10)
    rounds_total = int(params["num_boost_round"])
    round_10 = (rounds[20] - rounds[10]) / full
    rows_11, rows_33 = (rows[11] - rows[3]) / full, (rows[33] - rows[11]) / full
    return {
        "rows_11": rows_11,
        "rows_33": rows_33,
        "round_10": round_10,
        "asha_rows": rows_11 + rows_33 / 3 + 1 / 9,
        "asha_rounds": asha_rounds(round_10, rounds_total),
        "full_s": full,
    }


def asha_rounds(round_10: float, total: int, first: int = 10, factor: int = 3) -> float:
    """A trial's expected cost under successive halving by rounds (rungs at ``first * factor**k`` rounds, a
    ``1 / factor`` share going on past each), with ten rounds costing ``round_10`` of a full fit."""
    cost, done, share, rung = 0.0, 0, 1.0, first
    while rung < total:
        cost += share * (rung - done) / 10 * round_10
        done, share, rung = rung, share / factor, rung * factor
    return cost + share * (total - done) / 10 * round_10


def draws(dataset: dict[str, Any], count: int, rounds: int) -> list[dict[str, Any]]:
    """The first ``count`` configurations of the early-termination bench's seed search (random, seed 1)."""
    spec = spec_for(dataset, "random", None, max(count, 2), 1, rounds, 10, "rounds")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    return [suggest_params(study.ask(), spec) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=160)
    parser.add_argument("--flights-rows", default="3000,10000,30000")
    parser.add_argument("--tables", default="flights,digits,breast_cancer")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        datasets: dict[str, dict[str, Any]] = {}
        for name, dataset in tables(Path(folder), 0).items():
            if name not in args.tables.split(","):
                continue
            if name == "flights":
                for rows in args.flights_rows.split(","):
                    datasets[f"flights-{rows}"] = dataset | {"max_rows": int(rows)}
            else:
                datasets[name] = dataset
        print("table           rows_11 rows_33 round_10 | asha: rows rounds | full fit s   (ideal: 0.11 0.33)")
        for name, dataset in datasets.items():
            rows = [costs(dataset, params) for params in draws(dataset, args.draws, args.rounds)]
            med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            spread = {key: (min(r[key] for r in rows), max(r[key] for r in rows)) for key in rows[0]}
            print(
                f"{name:<15} {med['rows_11']:7.2f} {med['rows_33']:7.2f} {med['round_10']:8.3f} |"
                f" {med['asha_rows']:10.2f} {med['asha_rounds']:6.2f} | {med['full_s']:8.2f}"
                f"   rows_11 {spread['rows_11'][0]:.2f}-{spread['rows_11'][1]:.2f},"
                f" rows_33 {spread['rows_33'][0]:.2f}-{spread['rows_33'][1]:.2f}",
                flush=True,
            )
    print(f"# {args.draws} configurations per table, {args.rounds} rounds, 3 folds, 1 thread; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
