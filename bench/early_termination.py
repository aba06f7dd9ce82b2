"""What early termination (and the sampler) saves: the seed's search against AzureML's Bandit and ours.

Three tables: the flights example (``builtin://nycflights13``, a row sample) and two that scikit-learn ships
(``builtin://digits``, ten classes; breast cancer, binary, written to a CSV here). XGBoost reports every
``--report-every`` boosting rounds (``trial.report_every``: the folds train in lockstep), so a pruner may
stop a configuration after a few rounds. Each method runs through ``HpoDriver`` on one Dask LocalCluster
(2 workers, 2 trials at a time), five seeds per table:

* ``seed``: random sampling, no policy (HPO-RAPIDS as published);
* ``bandit``: random sampling + AzureML's Bandit (slack_factor 0.1, from the second step);
* ``asha``: multivariate TPE + successive halving (ASHA, reduction factor 3, first rung after
  ``--report-every`` rounds: the policy's default);
* ``hyperband``: multivariate TPE + Hyperband (reduction factor 3, brackets whose first rungs are at
  ``--report-every``, 3 x and 9 x that many rounds, up to a trial's rounds);
* ``asha-rows``, ``hyperband-rows``: the same with ``trial.fidelity: rows``: every step trains all the
  rounds on 11, 33, then 100 percent of each fold's training rows (the rungs), which ranks trials by where
  they end where a rung in rounds ranks them by how fast they learn (``gpu_jobs/steps.py``);
* ``asha-rows-s4``: ``asha-rows`` whose TPE steers after 4 random trials
  (``sampling_algorithm.startup_trials``), not Optuna's 10, most of the seed's twelve.

Trial-seconds are the trials' own wall time on the workers (what GPUs would bill). Per run: trial-seconds
until a trial first reaches the seed search's final best (trials in the order they ended), total
trial-seconds, and the best metric within the seed's total trial-seconds (``ours`` runs ``--extra`` times
the trials so that it can spend the same budget). ``--methods samplers`` compares samplers without a
policy instead (random, tpe, cmaes, qmc).

    python bench/early_termination.py [--seeds 5] [--trials 6] [--rounds 40] [--report-every 10] [--methods pruners]
        [--only asha,hyperband]  # the seed's search and these only

Last lines: per method, the medians over tables and seeds of ``time_to_seed_best_ratio`` (against the
seed's own time to its best; a run that never reaches it counts as never) and ``total_ratio``, the same two in
boosting rounds trained (``rounds_*``: free of the machine's load, which moves trial-seconds of runs minutes
apart; a round on a share of the rows counts as that share of a round), the time ratio to come within the
seeds' spread of the seed's best (``within_spread``), and per table the final bests and the best at the seed's
budget. Per table and seed, ``rank agreement``: the Spearman
correlation of the seed's trials' accuracy at each round with their final accuracy (``shared.hpo.rung_check``),
where a rung there can go by.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distributed import Client, LocalCluster  # noqa: E402

from shared.hpo.driver import HpoDriver  # noqa: E402
from shared.hpo.rung_check import rank_agreement  # noqa: E402
from shared.records import ExperimentRecord, TrialRecord, TrialState  # noqa: E402
from shared.spec import load_spec  # noqa: E402
from shared.store.local import LocalStore  # noqa: E402

SPACE = {
    "learning_rate": {"type": "loguniform", "min_value": -4.6, "max_value": -0.7},  # 0.01 .. 0.5
    "max_depth": {"type": "randint", "upper": 8},
    "subsample": {"type": "uniform", "min_value": 0.5, "max_value": 1.0},
    "colsample_bytree": {"type": "uniform", "min_value": 0.4, "max_value": 1.0},
    "min_child_weight": {"type": "uniform", "min_value": 0.0, "max_value": 8.0},
}
ASHA = {"type": "successive_halving", "reduction_factor": 3}
HYPERBAND = {"type": "hyperband", "reduction_factor": 3}
PRUNER_METHODS: dict[str, tuple[str | dict[str, Any], dict[str, Any] | None, int, str]] = {
    "seed": ("random", None, 1, "rounds"),
    "bandit": ("random", {"type": "bandit", "slack_factor": 0.1, "delay_evaluation": 2}, 1, "rounds"),
    "asha": ("tpe", ASHA, 2, "rounds"),
    "hyperband": ("tpe", HYPERBAND, 2, "rounds"),
    "asha-rows": ("tpe", ASHA, 2, "rows"),
    "hyperband-rows": ("tpe", HYPERBAND, 2, "rows"),
    "asha-rows-s4": ({"type": "tpe", "startup_trials": 4}, ASHA, 2, "rows"),
}
"""method -> (sampler type or section, policy, trials multiplier: ``--extra`` where above 1,
``trial.fidelity``). The rung policies keep their defaults: the first rung at the first step a trial reports
(``--report-every`` rounds, or :data:`ROWS_FIRST` percent of the rows), Hyperband's largest resource a trial's
rounds (or all the rows)."""
ROWS_FIRST = 10
"""``report_every`` under ``fidelity: rows``: with reduction factor 3 the levels are 11, 33 and 100 percent."""
SAMPLER_METHODS: dict[str, tuple[str | dict[str, Any], dict[str, Any] | None, int, str]] = {
    name: (name, None, 1, "rounds") for name in ("random", "tpe", "cmaes", "qmc")
}


def tables(folder: Path, flights_rows: int) -> dict[str, dict[str, Any]]:
    from sklearn.datasets import load_breast_cancer

    cancer = folder / "breast_cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(cancer, index=False)
    return {
        "flights": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": flights_rows},
        "digits": {"uri": "builtin://digits", "target": "digit"},
        "breast_cancer": {"uri": str(cancer), "target": "target"},
    }


def spec_for(
    dataset: dict,
    sampler: str | dict[str, Any],
    policy: dict | None,
    trials: int,
    seed: int,
    rounds: int,
    every: int,
    fidelity: str,
):
    policy = copy.deepcopy(policy)
    every = ROWS_FIRST if fidelity == "rows" else every
    trial = {"model": "xgboost", "cv_folds": 3, "params": {"num_boost_round": rounds}, "report_every": every}
    return load_spec(
        {
            "name": "bench",
            "dataset": dataset,
            "trial": trial | {"fidelity": fidelity},
            "search_space": SPACE,
            "sampling_algorithm": ({"type": sampler} if isinstance(sampler, str) else sampler) | {"seed": seed},
            "early_termination": policy,
            "limits": {"max_total_trials": trials, "max_concurrent_trials": 2},
            "objective": {"primary_metric": "accuracy", "goal": "maximize"},
        }
    )


def run(spec, client: Client, folder: Path, name: str) -> list[TrialRecord]:
    store = LocalStore(folder / name)
    store.create_experiment(ExperimentRecord(id=name, name="bench", spec=spec.to_document()))
    HpoDriver(spec, name, store, client).run()
    return sorted(store.list_trials(name), key=lambda t: t.ended_at or t.started_at)


def figures(trials: list[TrialRecord], target: float, budget: float) -> dict[str, Any]:
    """Trial-seconds (and boosting rounds) until a trial reaches ``target``, in all, and the best within
    ``budget`` trial-seconds; ``curve``: after each trial, the seconds and rounds spent so far and its value."""
    spent, rounds, reached, reached_rounds, best_in_budget = 0.0, 0.0, math.inf, math.inf, -math.inf
    curve: list[tuple[float, float, float | None]] = []
    for trial in trials:
        spent += trial.duration_s or 0.0
        rounds += trained_rounds(trial)
        done = trial.state is TrialState.COMPLETED and trial.value is not None
        curve.append((spent, rounds, trial.value if done else None))
        if not done:
            continue
        assert trial.value is not None
        if trial.value >= target - 1e-12 and reached == math.inf:
            reached, reached_rounds = spent, rounds
        if spent <= budget + 1e-9:
            best_in_budget = max(best_in_budget, trial.value)
    best = max((t.value for t in trials if t.state is TrialState.COMPLETED and t.value is not None), default=-math.inf)
    pruned = sum(t.state is TrialState.PRUNED for t in trials)
    return {"to_best": reached, "total": spent, "best": best, "best_at_budget": best_in_budget, "pruned": pruned,
            "trials": len(trials), "rounds_to_best": reached_rounds, "rounds": rounds, "curve": curve}  # fmt: skip


def trained_rounds(trial: TrialRecord) -> float:
    """The rounds each fold of ``trial`` trained: its last step (a stopped trial's too); in percent of the rows
    (``fidelity: rows``) all its rounds at every step it reached, each counted at its share of the rows."""
    if trial.step_unit == "percent":
        return float(trial.params.get("num_boost_round") or 0) * sum(trial.intermediate) / 100
    return max(trial.intermediate, default=0)


def compared(runs: dict[str, list[TrialRecord]], baseline: str, table: str) -> dict[str, dict[str, Any]]:
    """Each method's :func:`figures` against the ``baseline`` run of the same table and seed: the seed's best
    as the target, its total trial-seconds as the budget, and the baseline's own figures beside them."""
    base = figures(runs[baseline], math.inf, math.inf)
    base_reached = figures(runs[baseline], base["best"], math.inf)
    beside = {"base_to_best": base_reached["to_best"], "base_rounds_to_best": base_reached["rounds_to_best"],
              "base_total": base["total"], "base_best": base["best"], "base_rounds": base["rounds"],
              "base_curve": base["curve"], "table": table}  # fmt: skip
    return {name: figures(trials, base["best"], base["total"]) | beside for name, trials in runs.items()}


def reached_within(curve: list[tuple[float, float, float | None]], target: float) -> tuple[float, float]:
    """The seconds and rounds spent when a trial of ``curve`` (:func:`figures`) first reached ``target``."""
    reached = ((s, r) for s, r, value in curve if value is not None and value >= target - 1e-12)
    return next(reached, (math.inf, math.inf))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--flights-rows", type=int, default=3000)
    parser.add_argument("--methods", choices=("pruners", "samplers"), default="pruners")
    parser.add_argument("--tables", default="flights,digits,breast_cancer")
    parser.add_argument("--extra", type=int, default=2, help="TPE + ASHA runs this many times the trials")
    parser.add_argument("--only", help="run only these methods (comma-separated; the baseline always runs)")
    parser.add_argument("--from-log", type=Path, help="summarize the rows an earlier run printed, run nothing")
    args = parser.parse_args()
    if args.from_log:
        summarize(from_log(args.from_log))
        return
    methods = PRUNER_METHODS if args.methods == "pruners" else SAMPLER_METHODS
    baseline = next(iter(methods))
    if args.only:
        unknown = set(args.only.split(",")) - set(methods)
        if unknown:
            parser.error(f"--only: unknown methods {sorted(unknown)}; expected some of {list(methods)}")
        methods = {name: m for name, m in methods.items() if name == baseline or name in args.only.split(",")}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        for table, dataset in tables(Path(folder), args.flights_rows).items():
            if table not in args.tables.split(","):
                continue
            for seed in range(1, args.seeds + 1):
                runs = {}
                for name, (sampler, policy, multiplier, fidelity) in methods.items():
                    count = args.trials * (args.extra if multiplier > 1 else 1)
                    spec = spec_for(dataset, sampler, policy, count, seed, args.rounds, args.report_every, fidelity)
                    runs[name] = run(spec, client, Path(folder), f"{table}-{seed}-{name}")
                agreement = rank_agreement(runs[baseline])  # what a rung at each step can go by
                print(f"{table:<13} seed={seed} rank agreement at rounds " + " ".join(
                    f"{step}:{rho:+.2f}" for step, rho in agreement.items()), flush=True)  # fmt: skip
                for name, row in compared(runs, baseline, table).items():
                    results[name].append(row)
                    print(
                        f"{table:<13} seed={seed} {name:<7} best={row['best']:.4f}"
                        f" at_budget={row['best_at_budget']:.4f} to_seed_best={row['to_best']:7.1f}s"
                        f" total={row['total']:7.1f}s"
                        f" pruned={row['pruned']:.0f}/{row['trials']:.0f}"
                        f" rounds_to_seed_best={row['rounds_to_best']:.0f} rounds={row['rounds']:.0f}",
                        flush=True,
                    )
        print(
            f"# {args.seeds} seeds x {len(args.tables.split(','))} tables, {args.trials} trials (x{args.extra} ours), "
            f"xgboost {args.rounds} rounds reported every {args.report_every}; {time.perf_counter() - started:.0f} s"
        )
        summarize(results)  # before the cluster closes (a loaded machine may time its close out)


ROW = re.compile(
    r"^(?P<table>\S+)\s+seed=(?P<seed>\d+) (?P<name>\S+)\s+best=(?P<best>\S+) at_budget=(?P<at>\S+)"
    r" to_seed_best=\s*(?P<to>\S+)s total=\s*(?P<total>\S+)s pruned=(?P<pruned>\d+)/(?P<trials>\d+)"
    r"(?: rounds_to_seed_best=(?P<rto>\S+) rounds=(?P<rounds>\d+))?$"
)


def from_log(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows a run printed (``--from-log``: its figures again, without running it)."""
    rows = [m.groupdict() for line in path.read_text().splitlines() if (m := ROW.match(line))]
    results: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        base = next(r for r in rows if (r["table"], r["seed"]) == (row["table"], row["seed"]))  # the first method
        rounds = {"rounds_to_best": float(row["rto"] or "nan"), "rounds": float(row["rounds"] or "nan"),
                  "base_rounds_to_best": float(base["rto"] or "nan"),
                  "base_rounds": float(base["rounds"] or "nan")}  # fmt: skip
        results.setdefault(row["name"], []).append(
            {"table": row["table"], "best": float(row["best"]), "best_at_budget": float(row["at"]),
             "to_best": float(row["to"]), "total": float(row["total"]), "base_to_best": float(base["to"]),
             "base_total": float(base["total"]), "base_best": float(base["best"]), **rounds}
        )  # fmt: skip
    return results


def summarize(results: dict[str, list[dict[str, Any]]]) -> None:
    """The medians of the ratios against the seed's search, and the bests per table.

    ``rounds``: the same ratios in boosting rounds trained (what a stopped trial saves, whatever the machine's
    load; trial-seconds of two runs minutes apart on a shared machine differ by the load). ``within spread``:
    the trial-seconds until a trial comes within the seeds' spread (per table) of the seed's best, against the
    seed's own time to that value: the seed's best is a maximum over noisy CV scores, and a search whose
    configurations are as good may miss that maximum by less than the noise (rows read back from a log lack it).
    """
    spread = {t: statistics.pstdev(r["base_best"] for r in rows if r["table"] == t)
              for rows in results.values() for t in {r["table"] for r in rows}}  # fmt: skip
    for name, rows in results.items():
        ratio_to_best = statistics.median(r["to_best"] / r["base_to_best"] for r in rows)
        total_ratio = statistics.median(r["total"] / r["base_total"] for r in rows)
        rounds_to_best = statistics.median(r["rounds_to_best"] / r["base_rounds_to_best"] for r in rows)
        rounds_ratio = statistics.median(r["rounds"] / r["base_rounds"] for r in rows)
        reached = sum(math.isfinite(r["to_best"]) for r in rows)
        line = (
            f"{name:<7} time_to_seed_best_ratio={ratio_to_best:.3f} total_ratio={total_ratio:.3f}"
            f" reached={reached}/{len(rows)} rounds_to_seed_best_ratio={rounds_to_best:.3f}"
            f" rounds_ratio={rounds_ratio:.3f}"
        )
        if all("curve" in r for r in rows):
            near = [
                (reached_within(r["curve"], goal)[0], reached_within(r["base_curve"], goal)[0])
                for r in rows
                for goal in [r["base_best"] - spread[r["table"]]]
            ]
            line += (
                f" within_spread: time_ratio={statistics.median(ours / theirs for ours, theirs in near):.3f}"
                f" reached={sum(math.isfinite(ours) for ours, _ in near)}/{len(rows)}"
            )
        print(line)
        for table in dict.fromkeys(r["table"] for r in rows):
            mine = [r for r in rows if r["table"] == table]
            bases = [r["base_best"] for r in mine]
            print(
                f"  {table:<13} final best {statistics.fmean(r['best'] for r in mine):.4f} vs seed "
                f"{statistics.fmean(bases):.4f} (seed spread {statistics.pstdev(bases):.4f}); at equal budget "
                f"{statistics.fmean(r['best_at_budget'] for r in mine):.4f}"
            )


if __name__ == "__main__":
    main()
