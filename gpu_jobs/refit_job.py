"""``python -m gpu_jobs.refit_job``: refit the best trial's parameters on all rows, once, as a command of its own
(an AzureML command job after the sweep), and save the model where ``--output`` says.

The sweep's trials only score (``gpu_jobs.train`` without ``--output``: no refit, no forest conversion, no
model files); this is the one refit, with the same flags as a trial (hyperparameters included) plus
``--cross_validation``, the JSON of the scores that chose these parameters, kept under ``cross_validation`` in
the model's ``metrics.json`` as the other backends' refit keeps it (``shared.hpo.refit``). Exit 0 with the
model written, 2 for bad input (one ``error:`` line), anything else a traceback in the job's logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_jobs.errors import UserError
from gpu_jobs.model_files import METRICS_FILE
from gpu_jobs.train import _params_from_args, build_parser
from gpu_jobs.trial import fit_final_model


def _cross_validation(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--cross_validation is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError("--cross_validation must be a JSON object")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Refit and save; returns the exit status."""
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    parser = build_parser()
    parser.prog = "python -m gpu_jobs.refit_job"
    parser.add_argument("--cross_validation", default=None, help="JSON: the scores that chose these parameters")
    try:
        args = parser.parse_args(argv)
        if not args.output:
            raise UserError("--output FOLDER is required (where the model is saved)")
        cross_validation = _cross_validation(args.cross_validation)
        with contextlib.redirect_stdout(sys.stderr):
            metrics = fit_final_model(
                data=args.data,
                target=args.target,
                task=args.task,
                model=args.model,
                params=_params_from_args(args),
                output=args.output,
                seed=args.seed,
                engine=args.engine,
                data_format=args.data_format,
                max_rows=args.max_rows,
                n_jobs=args.n_jobs,
                features=None if args.features is None else [n for n in args.features.split(",") if n],
            )
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if cross_validation is not None:
        path = Path(args.output) / METRICS_FILE
        written = json.loads(path.read_text()) if path.is_file() else dict(metrics)
        written["cross_validation"] = cross_validation
        path.write_text(json.dumps(written, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps({"refit_seconds": metrics.get("refit_seconds"), "rows": metrics.get("rows")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
