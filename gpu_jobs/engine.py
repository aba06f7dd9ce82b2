"""Which engine runs a trial (cuDF/cuML on an NVIDIA GPU, or pandas/scikit-learn on CPUs) and its toolkit.

``resolve_engine`` decides; ``get_engine`` returns an :class:`Engine`, one small namespace per engine with
the same shape (dataframe library, array library, random-forest factories, XGBoost device, K-fold
splitters), so the training code is written once and never asks "am I on a GPU?". Metrics are not the
engine's: both score on the host with :mod:`gpu_jobs.metrics`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from gpu_jobs.device_memory import setup_device_memory
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import Task, score

EngineName = Literal["gpu", "cpu"]
ENGINE_REQUESTS: tuple[str, ...] = ("auto", "gpu", "cpu")
RAPIDS_MODULES: tuple[str, ...] = ("cudf", "cuml")


@dataclass(frozen=True)
class GpuProbe:
    """How many NVIDIA GPUs this process can use, and how that was found out (or why none)."""

    count: int
    detail: str


@functools.cache
def probe_gpus() -> GpuProbe:
    """Count the NVIDIA GPUs visible to this process (CuPy, then NVML, then ``nvidia-smi``); never raises."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in {"", "-1", "none", "NoDevFiles"}:
        return GpuProbe(0, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    reasons: list[str] = []
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            count = int(cupy.cuda.runtime.getDeviceCount())
            if count:
                return GpuProbe(count, f"{count} device(s) reported by the CUDA runtime")
            reasons.append("the CUDA runtime reports 0 devices")
        except Exception as exc:  # no driver, no device, broken install: all mean "no usable GPU"
            reasons.append(f"CUDA runtime: {type(exc).__name__}: {exc}")
    if importlib.util.find_spec("pynvml") is not None:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                count = int(pynvml.nvmlDeviceGetCount())
            finally:
                pynvml.nvmlShutdown()
            if count:
                return GpuProbe(count, f"{count} device(s) reported by NVML")
            reasons.append("NVML reports 0 devices")
        except Exception as exc:
            reasons.append(f"NVML: {type(exc).__name__}: {exc}")
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        reasons.append("nvidia-smi not found (no NVIDIA driver)")
    else:
        try:
            listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
            count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
            if count:
                return GpuProbe(count, f"{count} device(s) listed by nvidia-smi")
            reasons.append("nvidia-smi lists no GPU")
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"nvidia-smi failed: {exc}")
    return GpuProbe(0, "; ".join(reasons))


@functools.cache
def probe_rapids(import_modules: bool = True) -> tuple[str, ...]:
    """Return the RAPIDS modules (cudf, cuml) that cannot be used, each with the reason; empty = all good.

    With ``import_modules=False`` only checks that they are installed (importing cuDF costs seconds and
    may fail without a GPU; a quick check is enough for an error message).
    """
    problems: list[str] = []
    for name in RAPIDS_MODULES:
        if importlib.util.find_spec(name) is None:
            problems.append(f"{name} (not installed)")
            continue
        if import_modules:
            try:
                importlib.import_module(name)
            except Exception as exc:
                problems.append(f"{name} (import failed: {type(exc).__name__}: {exc})")
    return tuple(problems)


def resolve_engine(requested: str = "auto") -> EngineName:
    """Pick the engine for this host (probing its GPUs and RAPIDS): see :func:`decide_engine`."""
    if requested not in ENGINE_REQUESTS:
        raise UserError(f"unknown engine {requested!r}: expected one of {', '.join(ENGINE_REQUESTS)}")
    if requested == "cpu":
        return "cpu"
    gpus = probe_gpus()
    rapids = probe_rapids(import_modules=gpus.count > 0)
    return decide_engine(requested, gpus, rapids)


def decide_engine(requested: str, gpus: GpuProbe, rapids_problems: tuple[str, ...]) -> EngineName:
    """``cpu`` is CPUs. ``gpu`` needs a visible NVIDIA GPU and usable cuDF + cuML. ``auto`` is ``cpu`` on a
    host without a GPU and ``gpu`` on one with: a GPU that was paid for trains or the trial fails saying
    what is missing (RAPIDS absent or broken), never runs silently on CPUs. Raises :class:`UserError`."""
    if requested not in ENGINE_REQUESTS:
        raise UserError(f"unknown engine {requested!r}: expected one of {', '.join(ENGINE_REQUESTS)}")
    if requested == "cpu" or (requested == "auto" and gpus.count == 0):
        return "cpu"
    if gpus.count > 0 and not rapids_problems:
        return "gpu"
    missing: list[str] = []
    if gpus.count == 0:
        missing.append(f"an NVIDIA GPU (none visible: {gpus.detail})")
    if rapids_problems:
        missing.append(f"RAPIDS cuDF and cuML ({'; '.join(rapids_problems)})")
    if requested == "auto":
        raise UserError(
            f"engine auto found {gpus.detail} and so means gpu, which needs {' and '.join(missing)}; "
            "use an image with RAPIDS, or --engine cpu to train on this GPU host's CPUs on purpose"
        )
    raise UserError(f"--engine gpu needs {' and '.join(missing)}; use --engine auto or cpu to run on CPUs")


@dataclass(frozen=True)
class Engine:
    """Everything training needs from one engine, with the same call shapes on both."""

    name: EngineName
    frame: ModuleType
    """Dataframe library: ``cudf`` or ``pandas``."""
    array: ModuleType
    """Array library: ``cupy`` or ``numpy``."""
    xgboost_device: str
    """XGBoost's ``device`` parameter: ``cuda`` or ``cpu``."""
    stratified_kfold: type
    """scikit-learn's ``StratifiedKFold`` on both engines, run on host labels, so both validate on the same
    rows for a seed (cuML's own splitter assigns folds differently): ``(n_splits, shuffle, random_state)``.
    Classes only; a regression's folds are scikit-learn's shuffled ``KFold`` (:func:`fold_splitter`)."""
    random_forest_class: type
    """The forest classifier (cuML's or scikit-learn's)."""
    random_forest_regressor_class: type
    random_forest_ignored_params: frozenset[str]
    """Random-forest hyperparameters this engine's forest has no use for (``n_bins`` on scikit-learn)."""
    from_pandas: Callable[[Any], Any]
    to_array: Callable[[Any, Any], Any]
    """``(frame_or_series, dtype) -> engine array``: the data stays on the engine's device."""
    to_host: Callable[[Any], np.ndarray]
    """Engine array -> NumPy array."""
    synchronize: Callable[[], None]
    """Wait for all queued work on the device, every stream (so timings are honest); a no-op on CPU."""
    xgboost_config: Mapping[str, Any]
    """XGBoost global settings for this engine (``use_rmm`` where device memory goes through RMM)."""
    random_forest_kwargs: Callable[[Mapping[str, float], int, int | None], dict[str, Any]]
    """``(params, seed, n_jobs) -> constructor kwargs`` for :attr:`random_forest_class`."""
    portable_forest: Callable[[Any], Any]
    """Fitted forest -> a scikit-learn forest that loads and predicts without a GPU."""
    forest_grows: bool
    """Whether a fitted forest can take more trees (scikit-learn's ``warm_start``; cuML's cannot): how a
    forest trial reports finer than a fold (:mod:`gpu_jobs.steps`: by trees, else by data fraction)."""

    def random_forest(self, params: Mapping[str, float], *, seed: int, n_jobs: int | None, task: Task) -> Any:
        """A new, unfitted random forest of ``task`` (a regressor or a classifier) from validated ``params``."""
        forest = self.random_forest_regressor_class if task == "regression" else self.random_forest_class
        return forest(**self.random_forest_kwargs(params, seed, n_jobs))

    def score(self, task: Task, labels: Any, prediction: Any) -> dict[str, float]:
        """Every metric of ``task`` for one fold: engine arrays copied to the host, scored by
        :func:`gpu_jobs.metrics.score` (the same code on both engines)."""
        return score(task, self.to_host(labels), self.to_host(prediction))


def fold_splitter(engine: Engine, task: Task, cv_folds: int, seed: int) -> Any:
    """The seeded, shuffled K-fold splitter of ``task``: stratified by class, plain ``KFold`` for regression."""
    if task == "regression":
        from sklearn.model_selection import KFold

        return KFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    return engine.stratified_kfold(n_splits=cv_folds, shuffle=True, random_state=seed)


def _sklearn_forest_kwargs(params: Mapping[str, float], seed: int, n_jobs: int | None) -> dict[str, Any]:
    return {
        "n_estimators": int(params["n_estimators"]),
        "max_depth": int(params["max_depth"]),
        "max_features": float(params["max_features"]),
        "min_samples_leaf": int(params["min_samples_leaf"]),
        "n_jobs": n_jobs,
        "random_state": seed,
    }


def _cuml_forest_kwargs(params: Mapping[str, float], seed: int, n_jobs: int | None) -> dict[str, Any]:
    del n_jobs  # cuML parallelises on the GPU (n_streams), not with CPU threads
    return {
        "n_estimators": int(params["n_estimators"]),
        "max_depth": int(params["max_depth"]),
        "max_features": float(params["max_features"]),
        "n_bins": int(params["n_bins"]),
        "min_samples_leaf": int(params["min_samples_leaf"]),
        "random_state": seed,
        "output_type": "cupy",
    }


def _cuml_forest_as_sklearn(forest: Any) -> Any:
    if not hasattr(forest, "as_sklearn"):
        raise RuntimeError(
            "this cuML forest has no as_sklearn(); cuML >= 25.02 is needed to save a forest that loads without a GPU"
        )
    return with_tree_count(forest.as_sklearn())


def with_tree_count(forest: Any) -> Any:
    """``forest`` with ``n_estimators`` equal to the trees it holds (a forest combined from several
    workers' forests otherwise reports one worker's share in ``get_params()``)."""
    forest.n_estimators = tree_count(forest)
    return forest


def tree_count(forest: Any) -> int:
    """The trees a fitted forest holds: a scikit-learn forest's ``estimators_``; a Treelite model's
    ``num_tree``; else (a cuML forest, which keeps its trees only in Treelite form: ``cuml.dask``'s
    combined model is one worker's forest carrying every worker's trees) its ``as_treelite()``'s."""
    estimators = getattr(forest, "estimators_", None)
    if estimators is not None:
        return len(estimators)
    if hasattr(forest, "num_tree"):
        return int(forest.num_tree)
    return tree_count(forest.as_treelite())


def _cpu_engine() -> Engine:
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.model_selection import StratifiedKFold

    return Engine(
        name="cpu",
        frame=pd,
        array=np,
        xgboost_device="cpu",
        stratified_kfold=StratifiedKFold,
        random_forest_class=RandomForestClassifier,
        random_forest_regressor_class=RandomForestRegressor,
        random_forest_ignored_params=frozenset({"n_bins"}),
        from_pandas=lambda data: data,
        to_array=lambda data, dtype: data.to_numpy(dtype=dtype),
        to_host=np.asarray,
        synchronize=lambda: None,
        xgboost_config={},
        random_forest_kwargs=_sklearn_forest_kwargs,
        portable_forest=lambda forest: forest,
        forest_grows=True,
    )


def _gpu_engine() -> Engine:
    import cudf
    import cupy
    from cuml.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.model_selection import StratifiedKFold

    use_rmm = setup_device_memory().shared  # one memory resource for cuDF/cuML, CuPy and XGBoost

    return Engine(
        name="gpu",
        frame=cudf,
        array=cupy,
        xgboost_device="cuda",
        stratified_kfold=StratifiedKFold,
        random_forest_class=RandomForestClassifier,
        random_forest_regressor_class=RandomForestRegressor,
        random_forest_ignored_params=frozenset(),
        # nan_as_null=False keeps NaN as NaN (not a null mask), so to_cupy() works on every column.
        from_pandas=lambda data: cudf.from_pandas(data, nan_as_null=False),
        # cuDF's readers mark missing numbers as nulls: they become NaN in the arrays, as in pandas'.
        to_array=lambda data, dtype: data.to_cupy(
            dtype=dtype, na_value=np.nan if np.dtype(dtype).kind == "f" else None
        ),
        to_host=cupy.asnumpy,
        # The whole device: XGBoost runs on the per-thread default stream, cuML on its own streams.
        synchronize=cupy.cuda.runtime.deviceSynchronize,
        xgboost_config={"use_rmm": True} if use_rmm else {},
        random_forest_kwargs=_cuml_forest_kwargs,
        portable_forest=_cuml_forest_as_sklearn,
        forest_grows=False,
    )


@functools.cache
def get_engine(name: EngineName) -> Engine:
    """The :class:`Engine` for a resolved engine name (``resolve_engine`` first; this does not probe)."""
    builders: dict[str, Callable[[], Engine]] = {"cpu": _cpu_engine, "gpu": _gpu_engine}
    if name not in builders:
        raise UserError(f"unknown engine {name!r}: expected gpu or cpu (resolve 'auto' first)")
    return builders[name]()
