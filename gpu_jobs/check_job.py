"""``python -m gpu_jobs.check_job``: the data check as a command of its own, for computes that run commands
rather than Dask tasks (an AzureML command job, before the sweep is submitted).

It takes the trial's own flags (the same parser as :mod:`gpu_jobs.train`; hyperparameters are ignored),
runs :func:`gpu_jobs.data_check.check_data` and writes its verdict to ``<output>/data_check.json``:
``{"status": "passed", "check": {...}}`` or ``{"status": "failed", "reason": "..."}``. Data the trials
cannot use is a verdict, not a crash: the command exits 0 either way, so the job's status says whether the
check *ran* and the file says what it found. Anything else (a lost mount, a defect) exits non-zero with its
traceback in the job's logs, and writes no verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_jobs.data_check import check_data
from gpu_jobs.errors import UserError
from gpu_jobs.train import build_parser

VERDICT_FILE = "data_check.json"


def verdict(args: argparse.Namespace) -> dict[str, Any]:
    """The check's verdict for the parsed trial flags (JSON-able)."""
    features = None if args.features is None else [n for n in args.features.split(",") if n]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries that print do not mix into the verdict
            check = check_data(
                data=args.data,
                target=args.target,
                task=args.task,
                model=args.model,
                primary_metric=args.primary_metric,
                cv_folds=args.cv_folds,
                engine=args.engine,
                data_format=args.data_format,
                max_rows=args.max_rows,
                seed=args.seed,
                features=features,
            )
    except UserError as exc:
        return {"status": "failed", "reason": " ".join(str(exc).split())}
    return {"status": "passed", "check": dict(check)}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the verdict to ``--output``/data_check.json (and print it): 0 when a verdict was written, 2 for
    a command line that is not the trial's (the control plane's defect, not the data's)."""
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    try:
        args = build_parser().parse_args(argv)
        if not args.output:
            raise UserError("--output FOLDER is required (where the verdict is written)")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = verdict(args)
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / VERDICT_FILE).write_text(json.dumps(result, sort_keys=True))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
