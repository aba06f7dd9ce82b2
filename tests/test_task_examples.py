"""The regression and multiclass examples end to end (``rapids-hpo run`` and the HTTP API), and data the
trials cannot use failing the experiment once, before any trial."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gpu_jobs.data import load_dataset
from gpu_jobs.train import load_model
from tests.test_end_to_end import DEADLINE_S, ROOT, finished, served, submit, wait_for

EXAMPLES = ROOT / "examples"


def rapids_hpo(*args: str, home: Path, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAPIDS_HPO_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    env.pop("AzureWebJobsStorage", None)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_rapids_hpo_run_runs_the_regression_example(tmp_path: Path) -> None:
    result = rapids_hpo("run", str(EXAMPLES / "flights-delay-regression.yaml"), "--poll-seconds", "1", home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED" in result.stdout and "data: regression (dataset.task says regression)" in result.stdout
    assert "best rmse=" in result.stdout and "model.json" in result.stdout


@pytest.mark.slow
def test_the_multiclass_example_through_the_api_gives_a_model_with_a_column_per_class(tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "digits-multiclass.yaml").read_text())
    with served(tmp_path) as client:
        experiment_id = submit(client, document)
        body = wait_for(client, experiment_id, finished)
        assert body["status"] == "COMPLETED", body
        assert body["progress"] == {"done": 6, "total": 6}
        assert body["data_check"]["task"] == "multiclass" and body["data_check"]["classes"] == 10
        trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
        completed = [t for t in trials if t["state"] == "COMPLETED"]
        assert completed and all(t["metrics"]["task"] == "multiclass" for t in completed)
        best = max(completed, key=lambda t: t["value"])  # f1_macro: higher is better
        assert body["best"]["number"] == best["number"] and best["value"] == best["metrics"]["f1_macro"] > 0.8
        page = client.get(f"/api/ui/experiments/{experiment_id}").text
        assert "data: multiclass (inferred: a whole-number target with 10 distinct values), 10 classes" in page
        archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/experiments/{experiment_id}/model").content))
        archive.extractall(tmp_path / "model")
    model = load_model(tmp_path / "model")
    rows = load_dataset("builtin://digits", "digit", engine="cpu").X.head(20)
    proba = model.predict_proba(rows)
    assert proba.shape == (20, 10) and np.allclose(proba.sum(axis=1), 1.0)
    truth = load_dataset("builtin://digits", "digit", engine="cpu").y.head(20).to_numpy()
    assert np.mean(model.predict(rows) == truth) > 0.8  # labels restored, not codes (here they coincide)


@pytest.mark.slow
def test_data_the_trials_cannot_use_fails_the_experiment_once_before_any_trial(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "cities.csv"
    pd.DataFrame({"x": rng.normal(size=60), "city": rng.choice(["Oslo", "Lima", "Pune"], 60)}).to_csv(path)
    document = yaml.safe_load((EXAMPLES / "flights-delay-regression.yaml").read_text())
    document["dataset"] = {"uri": str(path), "target": "city"}  # auto: three cities are classes, not a quantity
    (tmp_path / "home").mkdir()
    with served(tmp_path / "home") as client:
        experiment_id = submit(client, document)  # rmse fits some task: only the data can tell it does not
        body = wait_for(client, experiment_id, finished)
        trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
    assert body["status"] == "FAILED" and trials == [] and body["progress"]["done"] == 0 and body["data_check"] is None
    assert body["error"] == (
        "data check failed: objective.primary_metric: rmse is not a multiclass metric; a multiclass task reports: "
        "accuracy, log_loss, f1_macro, roc_auc_ovr (the task was inferred: a categorical target with 3 distinct values)"
    )
    assert not any(city in body["error"] for city in ("Oslo", "Lima", "Pune"))


@pytest.mark.slow  # `rapids-hpo plan` as processes (~30 s under load)
def test_plan_shows_the_task_and_why(tmp_path: Path) -> None:
    path = tmp_path / "fares.csv"
    pd.DataFrame({"km": np.arange(40.0), "fare": np.arange(40.0) * 2.5 + 0.3}).to_csv(path, index=False)
    document = yaml.safe_load((EXAMPLES / "flights-delay-regression.yaml").read_text())
    document["dataset"] = {"uri": str(path), "target": "fare"}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(document))
    result = rapids_hpo("plan", str(spec_path), home=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "task: regression (inferred: a numeric target with 40 distinct values (not all whole numbers))" in (
        " ".join(result.stdout.split())
    )
    taxi = rapids_hpo("plan", str(EXAMPLES / "nyc-taxi-vmcluster.yaml"), home=tmp_path, timeout=120)
    assert taxi.returncode == 0, taxi.stderr
    assert "task: regression (dataset.task says so); primary metric rmse" in " ".join(taxi.stdout.split())
    digits = rapids_hpo("plan", str(EXAMPLES / "digits-multiclass.yaml"), home=tmp_path, timeout=120)
    assert "task: multiclass (builtin://digits's digit is a multiclass target); primary metric f1_macro" in (
        " ".join(digits.stdout.split())
    )
