"""One HPO trial: stratified K-fold cross-validation of a random forest or XGBoost on either engine.

Python API (what the HPO driver calls): :func:`run_trial`, :func:`load_model`.
CLI: ``python -m gpu_jobs.train --data URI --target COL --model random_forest --n_estimators 200 ...``;
progress goes to stderr, the last stdout line is the metrics as one JSON object; bad input exits with
status 2 and one ``error: <message>`` line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np

from gpu_jobs.data import FeatureEncoding, encode_features, load_dataset
from gpu_jobs.engine import ENGINE_REQUESTS, Engine, get_engine, resolve_engine
from gpu_jobs.errors import UserError
from gpu_jobs.params import HYPERPARAMETERS, METRICS, MODELS, validate_params

FoldCallback = Callable[[int, dict[str, float]], None]
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
FOREST_MISSING_VALUE = -1.0e30
"""Random forests see NaN features as this value on both engines (cuML's forest takes no NaN)."""
MODEL_FILES: dict[str, str] = {"random_forest": "model.joblib", "xgboost": "model.json"}
FEATURES_FILE = "features.json"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"


class Trainer(Protocol):
    """Fits one model on engine arrays and predicts positive-class probabilities."""

    def fit(self, features: Any, labels: Any) -> None: ...

    def predict_positive(self, features: Any) -> Any: ...

    def save(self, directory: Path) -> Path: ...


class RandomForestTrainer:
    """scikit-learn's forest on CPU, cuML's on GPU (built by the engine)."""

    def __init__(self, engine: Engine, params: Mapping[str, float], *, seed: int, n_jobs: int | None) -> None:
        self.engine = engine
        self.params = params
        self.seed = seed
        self.n_jobs = n_jobs
        self.forest: Any = None

    def _without_nan(self, features: Any) -> Any:
        xp = self.engine.array
        if bool(xp.isnan(features).any()):
            return xp.where(xp.isnan(features), xp.float32(FOREST_MISSING_VALUE), features)
        return features

    def fit(self, features: Any, labels: Any) -> None:
        self.forest = self.engine.random_forest(self.params, seed=self.seed, n_jobs=self.n_jobs)
        self.forest.fit(self._without_nan(features), labels)

    def predict_positive(self, features: Any) -> Any:
        return self.engine.array.asarray(self.forest.predict_proba(self._without_nan(features)))[:, 1]

    def save(self, directory: Path) -> Path:
        import joblib

        path = directory / MODEL_FILES["random_forest"]
        joblib.dump(self.engine.portable_forest(self.forest), path, compress=3)
        return path


def xgboost_params(params: Mapping[str, float], *, device: str, seed: int, n_jobs: int | None) -> dict[str, Any]:
    """XGBoost booster parameters from validated hyperparameters (``num_boost_round`` is separate)."""
    booster = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "device": device,
        "eta": float(params["learning_rate"]),
        "max_depth": int(params["max_depth"]),
        "subsample": float(params["subsample"]),
        "colsample_bytree": float(params["colsample_bytree"]),
        "gamma": float(params["gamma"]),
        "lambda": float(params["lambda"]),
        "alpha": float(params["alpha"]),
        "min_child_weight": float(params["min_child_weight"]),
        "max_bin": int(params["max_bin"]),
        "seed": seed,
        "verbosity": 1,
    }
    if n_jobs is not None:
        booster["nthread"] = n_jobs
    return booster


class XGBoostTrainer:
    """``xgboost.train`` with the hist method, on ``cuda`` or ``cpu`` as the engine says."""

    def __init__(self, engine: Engine, params: Mapping[str, float], *, seed: int, n_jobs: int | None) -> None:
        self.engine = engine
        self.params = params
        self.n_jobs = n_jobs
        self.booster_params = xgboost_params(params, device=engine.xgboost_device, seed=seed, n_jobs=n_jobs)
        self.booster: Any = None

    def fit(self, features: Any, labels: Any) -> None:
        import xgboost

        matrix = xgboost.QuantileDMatrix(
            features, label=labels, max_bin=int(self.params["max_bin"]), nthread=self.n_jobs
        )
        self.booster = xgboost.train(self.booster_params, matrix, num_boost_round=int(self.params["num_boost_round"]))

    def predict_positive(self, features: Any) -> Any:
        return self.engine.array.asarray(self.booster.inplace_predict(features))

    def save(self, directory: Path) -> Path:
        path = directory / MODEL_FILES["xgboost"]
        self.booster.save_model(path)
        return path


def make_trainer(model: str, engine: Engine, params: Mapping[str, float], *, seed: int, n_jobs: int | None) -> Trainer:
    """A fresh, unfitted trainer for ``model`` on ``engine``."""
    trainers: dict[str, type[RandomForestTrainer] | type[XGBoostTrainer]] = {
        "random_forest": RandomForestTrainer,
        "xgboost": XGBoostTrainer,
    }
    return trainers[model](engine, params, seed=seed, n_jobs=n_jobs)


@dataclass(frozen=True)
class TrialRequest:
    """The checked arguments of one trial (shared by the single-node and distributed paths)."""

    model: str
    params: dict[str, float | int]
    cv_folds: int
    primary_metric: str
    engine_request: str


def check_request(
    *, model: str, params: Mapping[str, float], cv_folds: int, primary_metric: str, engine: str
) -> TrialRequest:
    """Validate everything that needs no data; :class:`UserError` naming the first problem."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")
    try:
        checked = validate_params(model, dict(params))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or cv_folds < 2:
        raise UserError(f"cv_folds must be an integer >= 2, got {cv_folds!r}")
    if primary_metric not in METRICS:
        raise UserError(f"unknown primary metric {primary_metric!r}: expected one of {', '.join(METRICS)}")
    if engine not in ENGINE_REQUESTS:
        raise UserError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINE_REQUESTS)}")
    return TrialRequest(model, checked, cv_folds, primary_metric, engine)


def running_means(fold_scores: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean of each metric over the folds scored so far."""
    return {name: float(np.mean(scores)) for name, scores in fold_scores.items()}


class _MlflowTracking:
    """Logs the primary metric's running mean per fold (``step``), then final metrics, to MLflow."""

    def __init__(self, mlflow: Any, primary_metric: str, final_step: int) -> None:
        self.mlflow = mlflow
        self.primary_metric = primary_metric
        self.final_step = final_step

    def log_step(self, step: int, running: Mapping[str, float]) -> None:
        self.mlflow.log_metric(self.primary_metric, running[self.primary_metric], step=step)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        # The primary metric's last step already equals its final mean: not logged twice.
        final = {name: float(metrics[name]) for name in METRIC_NAMES if name != self.primary_metric}
        final.update({name: float(metrics[name]) for name in ("fit_seconds", "predict_seconds")})
        self.mlflow.log_metrics(final, step=self.final_step)


class CrossValidation:
    """Fold scores and timings of one trial; reports each fold to MLflow and to the caller's ``on_fold``.

    Shared by :func:`run_trial` and :func:`gpu_jobs.distributed.run_distributed`: they differ only in
    how a fold is trained and predicted.
    """

    def __init__(self, request: TrialRequest, on_fold: FoldCallback | None) -> None:
        self.request = request
        self.on_fold = on_fold
        self.fold_scores: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
        self.fit_seconds = 0.0
        self.predict_seconds = 0.0
        self.stopped_by_caller = False
        self.mlflow: _MlflowTracking | None = None

    def record(self, scores: Mapping[str, float], *, fit_seconds: float, predict_seconds: float) -> None:
        """Add one fold's scores; log the running primary metric; call ``on_fold`` (its errors propagate)."""
        for name in METRIC_NAMES:
            self.fold_scores[name].append(float(scores[name]))
        self.fit_seconds += fit_seconds
        self.predict_seconds += predict_seconds
        step = len(self.fold_scores[METRIC_NAMES[0]])
        running = running_means(self.fold_scores)
        if self.mlflow is not None:
            self.mlflow.log_step(step, running)
        if self.on_fold is not None:
            try:
                self.on_fold(step, dict(running))
            except BaseException:
                self.stopped_by_caller = True
                raise

    def metrics(self, *, engine_name: str, rows: int, rows_dropped: int, n_features: int) -> dict[str, Any]:
        """The result dict (without outputs): fold means, per-fold scores, timings and what ran."""
        return {
            **running_means(self.fold_scores),
            "fold_scores": self.fold_scores,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "rows": rows,
            "rows_dropped_missing_target": rows_dropped,
            "n_features": n_features,
            "engine": engine_name,
            "model": self.request.model,
            "params": self.request.params,
            "primary_metric": self.request.primary_metric,
            "cv_folds": self.request.cv_folds,
            "ignored_params": sorted(ignored_params(self.request.model, engine_name)),
        }

    def finish(self, metrics: Mapping[str, Any]) -> None:
        if self.mlflow is not None:
            self.mlflow.log_final(metrics)


@contextlib.contextmanager
def cross_validation(
    request: TrialRequest, *, engine_name: str, seed: int, on_fold: FoldCallback | None
) -> Iterator[CrossValidation]:
    """A :class:`CrossValidation`, with MLflow logging when ``MLFLOW_TRACKING_URI`` is set.

    A run is started unless one is active (``MLFLOW_RUN_ID``, e.g. an AzureML job's run, is attached to,
    not ended). Params are logged up front so pruned trials keep them; a run started here ends KILLED
    when the caller stopped the trial through ``on_fold``, FAILED on any other error.
    """
    folds = CrossValidation(request, on_fold)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        yield folds
        return
    import mlflow

    started_here = mlflow.active_run() is None
    if started_here:
        mlflow.start_run()
    end_run = started_here and not os.environ.get("MLFLOW_RUN_ID")
    status = "FINISHED"
    try:
        logged = {"model": request.model, "engine": engine_name, "cv_folds": request.cv_folds, "seed": seed}
        mlflow.log_params({**request.params, **logged})
        folds.mlflow = _MlflowTracking(mlflow, request.primary_metric, request.cv_folds)
        yield folds
    except BaseException:
        status = "KILLED" if folds.stopped_by_caller else "FAILED"
        raise
    finally:
        if end_run:
            mlflow.end_run(status=status)


def refit_and_save(trainer: Trainer, features: Any, labels: Any, output: str | Path) -> dict[str, Any]:
    """Fit ``trainer`` on all rows and save the model in ``output``; returns ``refit_seconds`` and
    ``model_path`` for the metrics."""
    directory = Path(output)
    directory.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    trainer.fit(features, labels)
    refit_seconds = time.perf_counter() - tick
    return {"refit_seconds": refit_seconds, "model_path": str(trainer.save(directory))}


def run_trial(
    *,
    data: str,
    target: str,
    model: str,
    params: dict[str, float],
    cv_folds: int = 5,
    seed: int = 0,
    engine: str = "auto",
    output: str | Path | None = None,
    data_format: str | None = None,
    max_rows: int | None = None,
    primary_metric: str = "accuracy",
    n_jobs: int | None = None,
    on_fold: FoldCallback | None = None,
) -> dict[str, Any]:
    """Cross-validate ``model`` with ``params`` on ``data`` and return its metrics.

    Stratified K-fold (shuffled with ``seed``); after each fold ``on_fold(step, running_means)`` is called
    (1-based step; running means of accuracy, roc_auc, log_loss) and anything it raises propagates at
    once: that is how a caller prunes or times out a trial. With ``output``, the model is refit on all rows
    and saved there with ``metrics.json``, ``params.json`` and ``features.json`` (see :func:`load_model`).
    ``n_jobs`` is passed to the libraries. ``None`` inside a Dask worker means that worker's thread count
    (so concurrent trials do not oversubscribe the cores: XGBoost's OpenMP threads then spin against each
    other, measured 14x slower here); elsewhere the library default (scikit-learn 1 thread, XGBoost all).
    """
    started = time.perf_counter()
    if n_jobs is None:
        n_jobs = dask_worker_threads()
    request = check_request(model=model, params=params, cv_folds=cv_folds, primary_metric=primary_metric, engine=engine)
    engine_name = resolve_engine(engine)
    toolkit = get_engine(engine_name)
    dataset = load_dataset(data, target, data_format=data_format, max_rows=max_rows, seed=seed, engine=engine_name)
    info = dataset.info
    require_enough_rows(info.minority_class_rows, cv_folds)
    features = toolkit.to_array(dataset.X, np.float32)
    labels = toolkit.to_array(dataset.y, np.int32)
    splitter = toolkit.stratified_kfold(n_splits=cv_folds, shuffle=True, random_state=seed)
    with cross_validation(request, engine_name=engine_name, seed=seed, on_fold=on_fold) as folds:
        for train_index, valid_index in splitter.split(features, labels):
            trainer = make_trainer(model, toolkit, request.params, seed=seed, n_jobs=n_jobs)
            tick = time.perf_counter()
            trainer.fit(features[train_index], labels[train_index])
            toolkit.synchronize()
            fitted = time.perf_counter()
            proba = trainer.predict_positive(features[valid_index])
            toolkit.synchronize()
            predicted = time.perf_counter()
            folds.record(
                toolkit.score(labels[valid_index], proba),
                fit_seconds=fitted - tick,
                predict_seconds=predicted - fitted,
            )
        metrics = folds.metrics(
            engine_name=engine_name,
            rows=info.rows,
            rows_dropped=info.rows_dropped_missing_target,
            n_features=len(info.feature_names),
        )
        metrics["n_jobs"] = n_jobs
        if output is not None:
            final = make_trainer(model, toolkit, request.params, seed=seed, n_jobs=n_jobs)
            metrics.update(refit_and_save(final, features, labels, output))
        metrics["total_seconds"] = time.perf_counter() - started
        if output is not None:
            write_trial_files(
                Path(output),
                metrics=metrics,
                trial={
                    **trial_record(request, data=data, target=target, seed=seed, max_rows=max_rows),
                    "engine": engine_name,
                },
                encoding=info.encoding,
                target_classes=info.target_classes,
            )
        folds.finish(metrics)
    return metrics


def fit_final_model(
    *,
    data: str,
    target: str,
    model: str,
    params: dict[str, float],
    output: str | Path,
    seed: int = 0,
    engine: str = "auto",
    data_format: str | None = None,
    max_rows: int | None = None,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Fit ``model`` with ``params`` on all rows, no cross-validation (the HPO driver's refit of the best
    trial), and save it in ``output`` as :func:`run_trial` does; returns what it wrote to metrics.json."""
    started = time.perf_counter()
    if n_jobs is None:
        n_jobs = dask_worker_threads()
    request = check_request(model=model, params=params, cv_folds=2, primary_metric="accuracy", engine=engine)
    engine_name = resolve_engine(engine)
    toolkit = get_engine(engine_name)
    dataset = load_dataset(data, target, data_format=data_format, max_rows=max_rows, seed=seed, engine=engine_name)
    info = dataset.info
    if info.minority_class_rows == 0:
        raise UserError(f"target column {target!r} holds one class only in the rows used: nothing to learn")
    trainer = make_trainer(model, toolkit, request.params, seed=seed, n_jobs=n_jobs)
    features = toolkit.to_array(dataset.X, np.float32)
    labels = toolkit.to_array(dataset.y, np.int32)
    metrics: dict[str, Any] = {
        "rows": info.rows,
        "rows_dropped_missing_target": info.rows_dropped_missing_target,
        "n_features": len(info.feature_names),
        "engine": engine_name,
        "model": model,
        "params": request.params,
        "ignored_params": sorted(ignored_params(model, engine_name)),
        "n_jobs": n_jobs,
        **refit_and_save(trainer, features, labels, output),
    }
    metrics["total_seconds"] = time.perf_counter() - started
    trial = {
        "data": data,
        "target": target,
        "model": model,
        "params": request.params,
        "seed": seed,
        "max_rows": max_rows,
        "engine": engine_name,
    }
    write_trial_files(
        Path(output), metrics=metrics, trial=trial, encoding=info.encoding, target_classes=info.target_classes
    )
    return metrics


def require_enough_rows(minority_class_rows: int, cv_folds: int) -> None:
    """Every fold needs both classes: :class:`UserError` when the rarer class has fewer rows than folds."""
    if minority_class_rows < cv_folds:
        raise UserError(
            f"the rarer target class has only {minority_class_rows} row(s): too few for "
            f"{cv_folds}-fold cross-validation (use more rows or fewer folds)"
        )


def trial_record(request: TrialRequest, *, data: str, target: str, seed: int, max_rows: int | None) -> dict[str, Any]:
    """What ``params.json`` records about a trial (enough to run it again)."""
    return {
        "data": data,
        "target": target,
        "model": request.model,
        "params": request.params,
        "cv_folds": request.cv_folds,
        "seed": seed,
        "max_rows": max_rows,
        "primary_metric": request.primary_metric,
    }


def dask_worker_threads() -> int | None:
    """The thread count of the Dask worker running this code, or None outside a worker."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def ignored_params(model: str, engine_name: str) -> set[str]:
    """Hyperparameters of ``model`` that the engine's library has no use for (``n_bins`` on CPU forests)."""
    if model == "random_forest" and engine_name == "cpu":
        return set(get_engine("cpu").random_forest_ignored_params) & set(HYPERPARAMETERS[model])
    return set()


def write_trial_files(
    directory: Path,
    *,
    metrics: Mapping[str, Any],
    trial: Mapping[str, Any],
    encoding: FeatureEncoding,
    target_classes: Sequence[str],
) -> None:
    """Write ``metrics.json``, ``params.json`` and ``features.json`` (read by :func:`load_model`)."""
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (directory / PARAMS_FILE).write_text(json.dumps(trial, indent=2, sort_keys=True) + "\n")
    features = {
        **encoding.to_json(),
        "model": trial["model"],
        "target": trial["target"],
        "target_classes": list(target_classes),
        "forest_missing_value": FOREST_MISSING_VALUE,
    }
    (directory / FEATURES_FILE).write_text(json.dumps(features, indent=2) + "\n")


@dataclass(frozen=True)
class SavedModel:
    """A trained model loaded back from a trial's output folder; needs no GPU."""

    model: str
    estimator: Any
    """A scikit-learn forest or an ``xgboost.Booster``."""
    encoding: FeatureEncoding
    target_classes: tuple[str, str]
    forest_missing_value: float = FOREST_MISSING_VALUE

    def predict_proba(self, frame: Any) -> np.ndarray:
        """``(n, 2)`` probabilities of the classes ``target_classes`` for a pandas frame.

        Raw columns (strings, datetimes) are encoded as in training; numeric columns are used as given.
        """
        features = encode_features(frame, self.encoding).to_numpy(dtype=np.float32)
        if self.model == "random_forest":
            features = np.where(np.isnan(features), np.float32(self.forest_missing_value), features)
            positive = self.estimator.predict_proba(features)[:, 1]
        else:
            positive = np.asarray(self.estimator.inplace_predict(features))
        return np.column_stack([1.0 - positive, positive])


def load_model(path: str | Path) -> SavedModel:
    """Load the model a trial saved: ``path`` is its output folder or the model file inside it."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    features_file = directory / FEATURES_FILE
    if not features_file.exists():
        raise UserError(f"no {FEATURES_FILE} in {directory}: not a trial output folder")
    described = json.loads(features_file.read_text())
    model = described["model"]
    model_file = directory / MODEL_FILES[model] if path.is_dir() else path
    if not model_file.exists():
        raise UserError(f"model file not found: {model_file}")
    if model == "random_forest":
        import joblib

        estimator: Any = joblib.load(model_file)
    else:
        import xgboost

        estimator = xgboost.Booster()
        estimator.load_model(model_file)
    return SavedModel(
        model=model,
        estimator=estimator,
        encoding=FeatureEncoding.from_json(described),
        target_classes=tuple(described["target_classes"]),  # type: ignore[arg-type]
        forest_missing_value=float(described.get("forest_missing_value", FOREST_MISSING_VALUE)),
    )


# ----------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one ``error: ...`` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _hyperparameter_flags() -> dict[str, set[str]]:
    """Every hyperparameter name -> the models that have it."""
    owners: dict[str, set[str]] = {}
    for model, table in HYPERPARAMETERS.items():
        for name in table:
            owners.setdefault(name, set()).add(model)
    return owners


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m gpu_jobs.train",
        description="Cross-validate one random forest or XGBoost configuration (one HPO trial).",
    )
    parser.add_argument("--data", required=True, help="builtin://nycflights13, a path, abfs:// or https:// URL")
    parser.add_argument("--target", required=True, help="the binary target column")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--cv_folds", type=int, default=5)
    parser.add_argument("--output", default=None, help="folder for the refit model and metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="auto", choices=ENGINE_REQUESTS)
    parser.add_argument("--data_format", default=None, choices=("parquet", "csv"))
    parser.add_argument("--max_rows", type=int, default=None, help="train on a seeded random sample")
    parser.add_argument("--primary_metric", default="accuracy", choices=tuple(METRICS))
    parser.add_argument("--n_jobs", type=int, default=None, help="CPU threads for the model library")
    parser.add_argument("--distributed", action="store_true", help="train on a Dask cluster")
    parser.add_argument("--scheduler", default=None, help="Dask scheduler address (with --distributed)")
    group = parser.add_argument_group("hyperparameters (each belongs to the model(s) named)")
    for name, models in _hyperparameter_flags().items():
        spec = next(HYPERPARAMETERS[m][name] for m in MODELS if m in models)
        group.add_argument(
            f"--{name}",
            dest=f"hp_{name}",
            type=_number,
            default=None,
            metavar=spec.kind.upper(),
            help=f"{spec.help}; {spec.describe_range()} ({', '.join(sorted(models))})",
        )
    return parser


def _params_from_args(args: argparse.Namespace) -> dict[str, float]:
    given = {name: getattr(args, f"hp_{name}") for name in _hyperparameter_flags()}
    given = {name: value for name, value in given.items() if value is not None}
    foreign = sorted(set(given) - set(HYPERPARAMETERS[args.model]))
    if foreign:
        raise UserError(
            f"--{foreign[0]} is not a {args.model} hyperparameter; {args.model} takes: "
            + ", ".join(f"--{name}" for name in HYPERPARAMETERS[args.model])
        )
    return given


def _print_progress(total: int, primary_metric: str) -> FoldCallback:
    def report(step: int, running: dict[str, float]) -> None:
        scores = " ".join(f"{name}={value:.4f}" for name, value in running.items())
        print(f"fold {step}/{total}: running mean {scores} (primary: {primary_metric})", file=sys.stderr)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    # Azure SDK credential chains log every failed attempt; the CLI reports the outcome as one line.
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    try:
        args = build_parser().parse_args(argv)
        params = _params_from_args(args)
        if args.scheduler and not args.distributed:
            raise UserError("--scheduler needs --distributed")
        arguments: dict[str, Any] = {
            "data": args.data,
            "target": args.target,
            "model": args.model,
            "params": params,
            "cv_folds": args.cv_folds,
            "seed": args.seed,
            "engine": args.engine,
            "output": args.output,
            "data_format": args.data_format,
            "max_rows": args.max_rows,
            "primary_metric": args.primary_metric,
            "n_jobs": args.n_jobs,
            "on_fold": _print_progress(args.cv_folds, args.primary_metric),
        }
        # Libraries that print go to stderr: stdout carries only the final JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            if args.distributed:
                from gpu_jobs.distributed import run_distributed

                scheduler = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
                if not scheduler:
                    raise UserError("--distributed needs --scheduler ADDRESS (or DASK_SCHEDULER_ADDRESS)")
                metrics = run_distributed(scheduler=scheduler, **arguments)
            else:
                metrics = run_trial(**arguments)
            for name in sorted(set(metrics["ignored_params"]) & set(params)):
                print(f"note: --{name} is ignored by the {metrics['engine']} engine's {args.model}")
    except UserError as exc:
        one_line = " ".join(str(exc).split())
        print(f"error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
