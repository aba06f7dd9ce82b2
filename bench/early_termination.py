"""What early termination saves: the seed's search against ours at the same trial budget.

seed: random sampling, no early-termination policy (HPO-RAPIDS as published);
ours: bayesian sampling (TPE) + an early-termination policy (bandit by default, or median_stopping).
Both run through ``HpoDriver`` on the same Dask LocalCluster, data, search space and trial count.
Trial-seconds = the sum of every trial's wall time (what a cluster of GPUs would bill).

    python bench/early_termination.py [--trials 20] [--max-rows 40000] [--policy bandit|median_stopping]

Last line: ``compute_saved=<1 - ours/seed>``; the best metrics are printed above it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distributed import Client, LocalCluster  # noqa: E402

from shared.hpo.driver import HpoDriver  # noqa: E402
from shared.records import ExperimentRecord, TrialState  # noqa: E402
from shared.spec import load_spec  # noqa: E402
from shared.store.local import LocalStore  # noqa: E402

POLICIES = {
    "bandit": {"type": "bandit", "slack_factor": 0.01, "evaluation_interval": 1, "delay_evaluation": 1},
    "median_stopping": {"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 1},
}


def experiment(base: dict, *, sampling: dict, policy: dict | None, trials: int, rows: int, folds: int):
    document = copy.deepcopy(base)
    document["dataset"]["max_rows"] = rows
    document["trial"]["cv_folds"] = folds
    document["sampling_algorithm"] = sampling
    document["early_termination"] = policy
    document["limits"].update({"max_total_trials": trials, "max_concurrent_trials": 2})
    return load_spec(document)


def run(spec, client: Client, folder: Path, name: str) -> dict:
    store = LocalStore(folder / name)
    store.create_experiment(ExperimentRecord(id=f"exp-{name}", name=name, spec=spec.to_document()))
    outcome = HpoDriver(spec, f"exp-{name}", store, client).run()
    trials = store.list_trials(f"exp-{name}")
    return {
        "best": outcome.best.value if outcome.best else float("nan"),
        "trial_seconds": sum(t.duration_s or 0.0 for t in trials),
        "pruned": sum(1 for t in trials if t.state is TrialState.PRUNED),
        "trials": len(trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-rows", type=int, default=40000)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--policy", choices=sorted(POLICIES), default="bandit")
    args = parser.parse_args()
    base = load_spec(ROOT / "examples" / "flights-rf.yaml").to_document()
    seed_spec = experiment(
        base,
        sampling={"type": "random", "seed": 42},
        policy=None,
        trials=args.trials,
        rows=args.max_rows,
        folds=args.folds,
    )
    our_spec = experiment(
        base,
        sampling={"type": "bayesian", "seed": 42},
        policy=POLICIES[args.policy],
        trials=args.trials,
        rows=args.max_rows,
        folds=args.folds,
    )
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        seed = run(seed_spec, client, Path(folder), "seed")
        ours = run(our_spec, client, Path(folder), "ours")
    print(f"trials={args.trials} rows={args.max_rows} folds={args.folds} policy={args.policy}")
    for label, result in (("seed (random, no policy)", seed), (f"ours (bayesian + {args.policy})", ours)):
        print(
            f"{label:<34} best accuracy={result['best']:.4f}  trial-seconds={result['trial_seconds']:8.1f}"
            f"  pruned={result['pruned']}/{result['trials']}"
        )
    print(f"best_metric_gap={ours['best'] - seed['best']:+.4f}")
    print(f"compute_saved={1 - ours['trial_seconds'] / seed['trial_seconds']:.3f}")


if __name__ == "__main__":
    main()
