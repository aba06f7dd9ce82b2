"""One very large experiment: 10,000 no-work trials (``bench/noop_trial.py``: 3 folds each, 2 at a time)
through the HPO driver on a Dask LocalCluster and the local store, then what reading it costs.

Prints:
- the driver's ms per trial beside Optuna's distributed recipe on the same trials (two processes on one
  ``JournalStorage`` file, ``bench/hpo_overhead.py``), and per 1,000-trial slice (flat, or growing with N);
- the store's size on disk;
- through ``rapids-hpo serve --no-workers`` on that store: ``GET /experiments/{id}``, ``GET /trials``
  (first page, and every page at the largest size), ``GET /study`` (the same), the dashboard's page and
  ``rapids-hpo watch`` (one frame of the ended experiment): each with its latency and payload size.

    python bench/large_experiment.py [--trials 10000] [--skip-journal]
    python bench/large_experiment.py --reads-only   # the reads alone, on trial records written directly
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_procs import wait_ready  # noqa: E402
from bench.hpo_overhead import journal_noop, noop_spec, ours_noop  # noqa: E402
from shared.records import ExperimentStatus, best_of, updated  # noqa: E402
from shared.store.local import LocalStore  # noqa: E402
from tests.azurite import _free_port  # noqa: E402

KEY = "large-experiment-key"
EXPERIMENT = "exp-noop"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(client: httpx.Client, url: str, repeat: int = 5, **params: object) -> tuple[float, int, httpx.Response]:
    """Median latency (ms) of ``repeat`` GETs, the body's size, the last response."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url, params=params)
        times.append(1000 * (time.perf_counter() - start))
        response.raise_for_status()
    return statistics.median(times), len(response.content), response


def every_page(client: httpx.Client, url: str, limit: int) -> tuple[float, int, int]:
    """Time (ms), bytes and requests to read every page of ``url`` at ``limit`` per page."""
    start, size, requests, after = time.perf_counter(), 0, 0, -1
    while True:
        response = client.get(url, params={"after": after, "limit": limit})
        response.raise_for_status()
        size, requests = size + len(response.content), requests + 1
        following = response.headers.get("X-Next-After")
        if following is None:
            return 1000 * (time.perf_counter() - start), size, requests
        after = int(following)


def slices(store: LocalStore, size: int = 1000) -> list[float]:
    """Trials per second within each slice of ``size`` trials, by their recorded end times."""
    ends = sorted(t.ended_at for t in store.list_trials(EXPERIMENT) if t.ended_at is not None)
    rates = []
    for first in range(0, len(ends) - size + 1, size):
        span = (ends[first + size - 1] - ends[first]).total_seconds()
        rates.append(size / span if span > 0 else float("inf"))
    return rates


def write_trials(folder: Path, spec: object) -> None:
    """The experiment and its trials as the driver leaves them (ended, 3 folds each), written directly."""
    from datetime import timedelta

    from bench.noop_trial import fold_value
    from shared.records import ExperimentRecord, FoldResult, TrialRecord, TrialState, utcnow

    store = LocalStore(folder)
    record = ExperimentRecord(id=EXPERIMENT, name="noop", spec=spec.to_document())  # type: ignore[attr-defined]
    record = store.create_experiment(record)
    start = utcnow()
    trials = []
    for number in range(spec.limits.max_total_trials):  # type: ignore[attr-defined]
        params = {"max_features": 0.2 + (number % 80) / 100, "n_estimators": 20}
        values = [fold_value(params, step) for step in (1, 2, 3)]
        means = {step: sum(values[:step]) / step for step in (1, 2, 3)}
        folds = [FoldResult(step=step, scores={"accuracy": values[step - 1]}) for step in (1, 2, 3)]
        at = start + timedelta(milliseconds=20 * number)
        trials.append(
            TrialRecord(
                experiment_id=EXPERIMENT, number=number, params=params, sampler_params=params,
                state=TrialState.COMPLETED, value=means[3], intermediate=means, folds=folds,
                metrics={"accuracy": means[3]}, started_at=at, ended_at=at, duration_s=0.01,
            )
        )  # fmt: skip
    for trial in trials:
        store.put_trial(trial)
    best = best_of(trials, "maximize")
    store.update_experiment(
        updated(record, status=ExperimentStatus.COMPLETED, trials_done=len(trials), trials_total=len(trials), best=best)
    )


def serve_and_measure(home: Path) -> None:
    port = _free_port()
    env = {**os.environ, "RAPIDS_HPO_HOME": str(home), "RAPIDS_HPO_FUNCTION_KEY": KEY, "PYTHONPATH": str(ROOT)}
    env["RAPIDS_HPO_STATE_DIR"] = str(home / "state")
    env.pop("AzureWebJobsStorage", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--port", str(port), "--no-workers"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, KEY)
        base = f"/api/experiments/{EXPERIMENT}"
        with httpx.Client(base_url=url, headers={"x-functions-key": KEY}, timeout=300) as client:
            rows = [
                ("GET /experiments/{id}", *timed(client, base)[:2]),
                ("GET /trials (first page, default size)", *timed(client, f"{base}/trials")[:2]),
                ("GET /trials?folds=true (first page)", *timed(client, f"{base}/trials", folds="true")[:2]),
                ("GET /study (first page, default size)", *timed(client, f"{base}/study")[:2]),
                ("GET /ui/experiments/{id} (dashboard)", *timed(client, f"/api/ui/experiments/{EXPERIMENT}", 3)[:2]),
            ]
            for route in ("trials", "study"):
                ms, size, requests = every_page(client, f"{base}/{route}", 1000)
                rows.append((f"every /{route} page, 1000 per page ({requests} requests)", ms, size))
            start = time.perf_counter()
            watch = subprocess.run(
                [sys.executable, "-m", "shared.cli", "watch", EXPERIMENT, "--interval", "0.1"],
                env={**env, "RAPIDS_HPO_API_URL": url, "COLUMNS": "160"},
                cwd=ROOT,
                capture_output=True,
                check=False,
                timeout=600,
            )
            rows.append(
                ("rapids-hpo watch (one frame, process)", 1000 * (time.perf_counter() - start), len(watch.stdout))
            )
        print(f"{'request':<52} {'ms':>9} {'bytes':>11}")
        for name, ms, size in rows:
            print(f"{name:<52} {ms:>9.1f} {size:>11,}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--skip-journal", action="store_true", help="do not run Optuna's recipe beside it")
    parser.add_argument("--reads-only", action="store_true", help="write the trial records directly, time the reads")
    args = parser.parse_args()
    if args.reads_only:
        with tempfile.TemporaryDirectory(prefix="large-") as folder:
            write_trials(Path(folder) / "store", noop_spec(args.trials, pruner=False))
            print(f"trials={args.trials} written directly (3 folds each); store {folder_bytes(Path(folder)):,} bytes")
            serve_and_measure(Path(folder))
        return
    spec = noop_spec(args.trials, pruner=False)
    with tempfile.TemporaryDirectory(prefix="large-") as folder:
        home = Path(folder)
        ours_s, ours_cpu = ours_noop(spec, home / "store")
        store = LocalStore(home / "store")
        print(f"trials={args.trials} (no work, 3 folds, 2 at a time, no pruner)")
        per_trial = 1000 * ours_s / args.trials
        print(
            f"ours (HpoDriver, LocalCluster 2x1, local store): {ours_s:8.1f} s = {per_trial:.1f} ms/trial"
            f" (CPU {1000 * ours_cpu / args.trials:.1f} ms/trial)"
        )
        if not args.skip_journal:
            with tempfile.TemporaryDirectory() as journal_folder:
                journal_s, journal_cpu = journal_noop(spec, Path(journal_folder), pruner=False)
            print(
                f"optuna JournalStorage, 2 processes:             {journal_s:8.1f} s = "
                f"{1000 * journal_s / args.trials:.1f} ms/trial (CPU {1000 * journal_cpu / args.trials:.1f})"
                f"   ratio={ours_s / journal_s:.2f}"
            )
        rates = slices(store)
        print("trials/s per 1000-trial slice:", " ".join(f"{r:.1f}" for r in rates))
        print(f"store on disk: {folder_bytes(home / 'store'):,} bytes")
        trials = store.list_trials(EXPERIMENT)
        record = store.get_experiment(EXPERIMENT)
        best = best_of(trials, "maximize")
        store.update_experiment(
            updated(
                record, status=ExperimentStatus.COMPLETED, trials_done=len(trials), trials_total=len(trials), best=best
            )
        )
        serve_and_measure(home)


if __name__ == "__main__":
    main()
