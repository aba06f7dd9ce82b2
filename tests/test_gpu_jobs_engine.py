"""Engine selection: the real probes on this machine, and the decision table with patched probes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from gpu_jobs import engine as engine_module
from gpu_jobs.engine import GpuProbe, get_engine, probe_gpus, probe_rapids, resolve_engine
from gpu_jobs.errors import UserError

HAS_GPU = probe_gpus().count > 0


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the no-GPU behaviour cannot be observed")
def test_this_machine_without_gpu_runs_cpu_and_refuses_gpu() -> None:
    assert probe_gpus().count == 0
    assert resolve_engine("auto") == "cpu"
    assert resolve_engine("cpu") == "cpu"
    with pytest.raises(UserError) as error:
        resolve_engine("gpu")
    message = str(error.value)
    assert "--engine gpu needs an NVIDIA GPU" in message
    # cudf/cuml are not installed here: the message says so too
    assert "cudf (not installed)" in message and "cuml (not installed)" in message


def test_unknown_engine_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown engine 'tpu'"):
        resolve_engine("tpu")


@pytest.mark.parametrize(
    ("requested", "gpus", "rapids_problems", "expected"),
    [
        ("auto", 1, (), "gpu"),
        ("gpu", 2, (), "gpu"),
        ("auto", 0, (), "cpu"),
        ("auto", 1, ("cuml (not installed)",), UserError),  # a GPU host: GPU or a clear failure, never CPUs
        ("cpu", 1, (), "cpu"),
        ("gpu", 0, (), UserError),
        ("gpu", 1, ("cudf (import failed: RuntimeError: CUDA driver too old)",), UserError),
    ],
)
def test_decision_table(
    monkeypatch: pytest.MonkeyPatch,
    requested: str,
    gpus: int,
    rapids_problems: tuple[str, ...],
    expected: str | type[Exception],
) -> None:
    monkeypatch.setattr(engine_module, "probe_gpus", lambda: GpuProbe(gpus, "patched probe"))
    monkeypatch.setattr(engine_module, "probe_rapids", lambda import_modules=True: rapids_problems)
    if isinstance(expected, str):
        assert resolve_engine(requested) == expected
    else:
        with pytest.raises(expected) as error:
            resolve_engine(requested)
        message = str(error.value)
        if gpus == 0:
            assert "an NVIDIA GPU (none visible: patched probe)" in message
        if requested == "auto":
            assert "engine auto found patched probe and so means gpu" in message and "--engine cpu" in message
        for problem in rapids_problems:
            assert problem in message


def test_cpu_never_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> GpuProbe:
        raise AssertionError("cpu must not probe for GPUs")

    monkeypatch.setattr(engine_module, "probe_gpus", boom)
    assert resolve_engine("cpu") == "cpu"


def test_cuda_visible_devices_empty_hides_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    probe = probe_gpus.__wrapped__()
    assert probe.count == 0
    assert "CUDA_VISIBLE_DEVICES" in probe.detail


@pytest.mark.skipif(HAS_GPU, reason="a real GPU would answer before the fake nvidia-smi")
def test_nvidia_smi_listing_is_counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n"
        "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    probe = probe_gpus.__wrapped__()
    assert probe.count == 2
    assert "nvidia-smi" in probe.detail


def test_rapids_probe_reports_missing_modules_without_importing() -> None:
    problems = probe_rapids.__wrapped__(import_modules=False)
    try:
        import cudf  # noqa: F401

        has_cudf = True
    except ImportError:
        has_cudf = False
    assert ("cudf (not installed)" in problems) == (not has_cudf)


def test_cpu_engine_namespace_has_the_shared_shape() -> None:
    cpu = get_engine("cpu")
    assert cpu.name == "cpu" and cpu.xgboost_device == "cpu"
    assert cpu.frame.__name__ == "pandas" and cpu.array is np
    assert cpu.random_forest_ignored_params == frozenset({"n_bins"})
    params = {"n_estimators": 7, "max_depth": 3, "max_features": 0.5, "min_samples_leaf": 2, "n_bins": 32}
    forest = cpu.random_forest(params, seed=11, n_jobs=1, task="binary")
    assert type(forest).__name__ == "RandomForestClassifier"
    assert type(cpu.random_forest(params, seed=11, n_jobs=1, task="regression")).__name__ == "RandomForestRegressor"
    assert forest.get_params()["n_estimators"] == 7
    assert forest.get_params()["random_state"] == 11
    assert forest.get_params()["max_features"] == 0.5


def test_score_matches_hand_computed_metrics() -> None:
    cpu = get_engine("cpu")
    y = np.array([0, 0, 1, 1], dtype=np.int32)
    proba = np.array([0.1, 0.6, 0.4, 0.9], dtype=np.float32)
    scores = cpu.score("binary", y, proba)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["roc_auc"] == pytest.approx(0.75)
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.4, 0.9]))
    assert scores["log_loss"] == pytest.approx(expected_log_loss, rel=1e-6)


def test_score_clips_certain_wrong_predictions_instead_of_infinite_log_loss() -> None:
    scores = get_engine("cpu").score("binary", np.array([0, 1], dtype=np.int32), np.array([1.0, 0.0], dtype=np.float32))
    assert np.isfinite(scores["log_loss"])
    assert scores["log_loss"] == pytest.approx(-np.log(1e-15), rel=1e-4)
