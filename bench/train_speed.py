"""Training and prediction speed (rows/s) of both models on the flights data, per engine.

Uses the same trainers as the HPO trials (``gpu_jobs.trainers.make_trainer``): one fit on all rows, then one
prediction of all rows, per model and engine. Runs the CPU engine always and the GPU engine when this
machine has one (then prints the GPU/CPU speed-up). Then whole trials (``gpu_jobs.train.run_trial``,
``--cv_folds`` folds, one at a time): trials per hour per engine and model, beside the seed's recorded
HPO-RAPIDS run and the CPU trial measured for docs (both in the reference figures below).

    python bench/train_speed.py                 # the full 327,346 labelled flights
    python bench/train_speed.py --max_rows 50000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI, load_dataset
from gpu_jobs.engine import get_engine, probe_gpus, resolve_engine
from gpu_jobs.errors import UserError
from gpu_jobs.params import MODELS, validate_params
from gpu_jobs.train import run_trial
from gpu_jobs.trainers import make_trainer, model_features

REFERENCE_TRIALS_PER_HOUR = {
    "seed HPO-RAPIDS (V100, 20M airline rows, RF, 5 trials in ~35 min)": 5 / (35 / 60),
    "RF 100 trees depth 12, 3-fold, 327k flights rows, 2 CPU cores (63 s a trial)": 3600 / 63,
}
"""Trials per hour others (and an earlier measurement here) recorded: /work/shared/reference.md."""


@dataclass(frozen=True)
class Measurement:
    engine: str
    model: str
    rows: int
    fit_seconds: float
    predict_seconds: float

    @property
    def fit_rows_per_second(self) -> float:
        return self.rows / self.fit_seconds

    @property
    def predict_rows_per_second(self) -> float:
        return self.rows / self.predict_seconds


def measure(engine_name: str, model: str, params: dict[str, float], args: argparse.Namespace) -> Measurement:
    engine = get_engine(engine_name)  # type: ignore[arg-type]
    dataset = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=args.max_rows, seed=0, engine=engine_name)
    features = engine.to_array(dataset.X, np.float32)
    features = model_features(model, engine, features, has_missing=dataset.info.missing_feature_values > 0)
    labels = engine.to_array(dataset.y, np.int32)
    trainer = make_trainer(model, engine, validate_params(model, params), seed=0, n_jobs=args.n_jobs)
    engine.synchronize()
    tick = time.perf_counter()
    trainer.fit(features, labels)
    engine.synchronize()
    fit_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    trainer.predict_positive(features)
    engine.synchronize()
    predict_seconds = time.perf_counter() - tick
    return Measurement(engine_name, model, dataset.info.rows, fit_seconds, predict_seconds)


def trials_per_hour(engine_name: str, model: str, params: dict[str, float], args: argparse.Namespace) -> float:
    """One whole trial (data cached by the fit measurement before), timed end to end."""
    tick = time.perf_counter()
    run_trial(
        data=FLIGHTS_URI,
        target=FLIGHTS_TARGET,
        model=model,
        params=params,
        cv_folds=args.cv_folds,
        engine=engine_name,
        max_rows=args.max_rows,
        n_jobs=args.n_jobs,
    )
    return 3600 / (time.perf_counter() - tick)


def engines_to_run() -> list[str]:
    try:
        return ["cpu", resolve_engine("gpu")]
    except UserError as exc:
        print(f"GPU engine not available ({exc}); measuring the CPU engine only", file=sys.stderr)
        return ["cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_rows", type=int, default=None, help="a seeded sample instead of all rows")
    parser.add_argument("--n_jobs", type=int, default=os.cpu_count(), help="CPU threads (default: all)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--n_estimators", type=int, default=100)
    parser.add_argument("--rf_max_depth", type=int, default=12)
    parser.add_argument("--num_boost_round", type=int, default=100)
    parser.add_argument("--xgb_max_depth", type=int, default=8)
    parser.add_argument("--cv_folds", type=int, default=3, help="folds of the trials-per-hour measurement")
    args = parser.parse_args()
    configurations = {
        "random_forest": {
            "n_estimators": args.n_estimators,
            "max_depth": args.rf_max_depth,
            "max_features": 0.5,
        },
        "xgboost": {"num_boost_round": args.num_boost_round, "max_depth": args.xgb_max_depth},
    }
    configurations = {model: configurations[model] for model in args.models}
    results: list[Measurement] = []
    for engine_name in engines_to_run():
        for model, params in configurations.items():
            results.append(measure(engine_name, model, params, args))
            print(f"measured {engine_name} {model}", file=sys.stderr)

    gpus = probe_gpus()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, n_jobs={args.n_jobs}; "
          f"GPUs: {gpus.count} ({gpus.detail})")  # fmt: skip
    for model, params in configurations.items():
        print(f"# {model}: {params}")
    header = (
        f"{'engine':<7} {'model':<14} {'rows':>8} {'fit s':>8} {'fit rows/s':>12} {'pred s':>8} {'pred rows/s':>12}"
    )
    print(header)
    print("-" * len(header))
    for m in results:
        print(
            f"{m.engine:<7} {m.model:<14} {m.rows:>8} {m.fit_seconds:>8.2f} {m.fit_rows_per_second:>12,.0f} "
            f"{m.predict_seconds:>8.3f} {m.predict_rows_per_second:>12,.0f}"
        )
    print(f"\ntrials per hour, one at a time ({args.cv_folds}-fold cross-validation, the configurations above):")
    for engine_name in dict.fromkeys(m.engine for m in results):
        for model, params in configurations.items():
            rate = trials_per_hour(engine_name, model, params, args)
            print(f"  ours      {engine_name:<4} {model:<14} {rate:>10,.0f}")
    for label, rate in REFERENCE_TRIALS_PER_HOUR.items():
        print(f"  reference {label}: {rate:,.0f}")
    by_key = {(m.engine, m.model): m for m in results}
    for model in configurations:
        if ("gpu", model) in by_key:
            gpu, cpu = by_key["gpu", model], by_key["cpu", model]
            print(
                f"GPU/CPU speed-up {model}: fit {cpu.fit_seconds / gpu.fit_seconds:.1f}x, "
                f"predict {cpu.predict_seconds / gpu.predict_seconds:.1f}x"
            )


if __name__ == "__main__":
    main()
