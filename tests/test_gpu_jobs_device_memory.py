"""The device-memory plan (gpu_jobs.device_memory): which resource a process gets and whether CuPy and
XGBoost share it. The CUDA calls that apply a plan need a GPU (bench/gpu_check.sh runs them)."""

from __future__ import annotations

import importlib.util

import pytest

from gpu_jobs import device_memory
from gpu_jobs.device_memory import MEMORY_MODES, plan_device_memory, setup_device_memory
from gpu_jobs.errors import UserError


@pytest.mark.parametrize(
    ("mode", "rmm_installed", "current", "install", "shared"),
    [
        ("async", True, "CudaMemoryResource", "async", True),  # RMM's plain default is replaced
        ("pool", True, "CudaMemoryResource", "pool", True),
        ("async", True, "ManagedMemoryResource", "pool", True),  # bare managed memory gets a pool over it
        ("async", True, "PoolMemoryResource", None, True),  # dask-cuda's --rmm-pool-size is kept and shared
        ("pool", True, "CudaAsyncMemoryResource", None, True),  # --rmm-async is kept
        ("async", False, None, None, False),  # no RMM: nothing to share
        ("off", True, "CudaMemoryResource", None, False),
        ("off", True, "PoolMemoryResource", None, False),
    ],
)
def test_plan(mode: str, rmm_installed: bool, current: str | None, install: str | None, shared: bool) -> None:
    plan = plan_device_memory(mode, rmm_installed=rmm_installed, current=current)
    assert (plan.install, plan.shared) == (install, shared)
    assert plan.reason


def test_an_unknown_mode_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"device memory mode 'managed': expected one of async, pool, off"):
        plan_device_memory("managed", rmm_installed=True, current=None)
    assert MEMORY_MODES == ("async", "pool", "off")


def test_setup_without_rmm_changes_nothing_and_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here RMM is not installed (a CPU host): the plan says so, and a second call returns the first plan."""
    if importlib.util.find_spec("rmm") is not None:
        pytest.skip("RMM is installed here: bench/gpu_check.sh covers such a host")
    monkeypatch.setattr(device_memory, "_applied", None)
    first = setup_device_memory("async")
    assert (first.install, first.shared) == (None, False) and "not installed" in first.reason
    assert setup_device_memory("pool") is first
