"""Overhead of the HPO engine: the same trials through our Dask driver and through a bare Optuna loop.

(a) ours: ``HpoDriver`` on a Dask ``LocalCluster`` (2 workers x 1 thread), trials recorded in a
    ``LocalStore``, fold reports answered by the driver (the full path, pruner included);
(b) bare: ``optuna`` ``study.optimize(n_jobs=2)`` calling ``gpu_jobs.train.run_trial`` directly.
Same spec (examples/flights-rf.yaml without its early-termination policy), sampler, seed, data and
trial count. The cluster's start-up is printed apart (a one-off per
experiment); each worker's first data load is counted in (a), the bare loop's in (b).

    python bench/hpo_overhead.py [--trials 10] [--max-rows 40000]

Last line: ``overhead_ratio=<ours/bare>``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from gpu_jobs.train import run_trial  # noqa: E402
from shared.hpo.driver import HpoDriver  # noqa: E402
from shared.hpo.search_space import make_sampler, suggest_params  # noqa: E402
from shared.records import ExperimentRecord  # noqa: E402
from shared.spec import load_spec  # noqa: E402
from shared.store.local import LocalStore  # noqa: E402


def bench_spec(trials: int, max_rows: int, workers: int):
    document = load_spec(ROOT / "examples" / "flights-rf.yaml").to_document()
    document = copy.deepcopy(document)
    document["dataset"]["max_rows"] = max_rows
    document["early_termination"] = None
    document["limits"].update({"max_total_trials": trials, "max_concurrent_trials": workers})
    return load_spec(document)


def ours(spec, workers: int) -> tuple[float, float, list[float]]:
    with tempfile.TemporaryDirectory() as folder:
        store = LocalStore(Path(folder))
        store.create_experiment(ExperimentRecord(id="exp-bench", name=spec.name, spec=spec.to_document()))
        start = time.perf_counter()
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
            ) as cluster,
            Client(cluster) as client,
        ):
            ready = time.perf_counter()
            HpoDriver(spec, "exp-bench", store, client).run()
            done = time.perf_counter()
        values = [t.value for t in store.list_trials("exp-bench")]
    return ready - start, done - ready, values


def bare(spec, workers: int) -> tuple[float, list[float]]:
    study = optuna.create_study(direction=spec.objective.goal, sampler=make_sampler(spec))

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, spec)
        metrics = run_trial(
            data=spec.dataset.uri,
            target=spec.dataset.target,
            model=spec.trial.model,
            params=params,
            cv_folds=spec.trial.cv_folds,
            seed=spec.sampling_algorithm.seed or 0,
            engine=spec.trial.engine,
            max_rows=spec.dataset.max_rows,
            primary_metric=spec.objective.primary_metric,
            n_jobs=1,
        )
        return metrics[spec.objective.primary_metric]

    start = time.perf_counter()
    study.optimize(objective, n_trials=spec.limits.max_total_trials, n_jobs=workers)
    return time.perf_counter() - start, [t.value for t in study.trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--max-rows", type=int, default=40000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = bench_spec(args.trials, args.max_rows, args.workers)
    bare_s, bare_values = bare(spec, args.workers)
    startup_s, ours_s, our_values = ours(spec, args.workers)
    print(f"trials={args.trials} rows={args.max_rows} workers={args.workers}")
    print(f"bare optuna loop (n_jobs={args.workers}):   {bare_s:8.2f} s   best={max(bare_values):.4f}")
    print(f"ours (HpoDriver on LocalCluster):  {ours_s:8.2f} s   best={max(our_values):.4f}")
    print(f"cluster start-up (once per experiment, not in the ratio): {startup_s:.2f} s")
    print(f"overhead_ratio={ours_s / bare_s:.3f}")


if __name__ == "__main__":
    main()
