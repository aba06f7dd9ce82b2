"""One GPU memory resource for cuDF/cuML, CuPy and XGBoost in a process (a trial's or a Dask worker's).

Without it each library keeps its own allocator on one card (RMM's default ``cudaMalloc`` per allocation for
cuDF/cuML, CuPy's own pool, XGBoost's caching allocator), and memory one frees is not reusable by the
others. :func:`setup_device_memory` runs once per process, on first use of the GPU engine, in the
single-process path and on Dask workers alike:

* a resource someone set up before (``dask cuda worker --rmm-async`` / ``--rmm-pool-size``) is kept;
  a bare managed-memory resource (``rmm-managed-memory`` without a pool: a ``cudaMallocManaged`` per
  allocation) gets a pool over it, as dask-cuda builds with a pool size;
* else RMM's plain default is replaced by the mode asked for (``async``, the default: CUDA's
  stream-ordered pool, which gives memory back to other processes on the card; ``pool``: an RMM pool;
  ``off``: nothing changes, nothing is shared). A cluster picks another resource with dask-cuda's own
  worker options (``rmm_pool_size``, ``rmm_async``), which this keeps;
* CuPy allocates through RMM (``rmm_cupy_allocator``) and XGBoost is told to (``use_rmm``) whenever the
  resource is not the plain default.

:func:`plan_device_memory` decides (tested on CPU); :func:`setup_device_memory` probes and applies.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from gpu_jobs.errors import UserError

MEMORY_MODES: tuple[str, ...] = ("async", "pool", "off")
PLAIN_RESOURCE = "CudaMemoryResource"
"""RMM's default: one ``cudaMalloc`` per allocation."""
BARE_MANAGED_RESOURCE = "ManagedMemoryResource"


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`setup_device_memory` does in a process, and why."""

    install: Literal["async", "pool"] | None
    """The resource to create and make current (``pool`` is built over the current one); None keeps it."""
    shared: bool
    """CuPy and XGBoost allocate through RMM's current resource."""
    reason: str


def plan_device_memory(mode: str, *, rmm_installed: bool, current: str | None) -> MemoryPlan:
    """The plan for ``mode`` given whether RMM imports and the class name of its current device resource."""
    if mode not in MEMORY_MODES:
        raise UserError(f"device memory mode {mode!r}: expected one of {', '.join(MEMORY_MODES)}")
    if not rmm_installed:
        return MemoryPlan(None, False, "RMM is not installed: each library keeps its own allocator")
    if mode == "off":
        return MemoryPlan(None, False, "mode off: each library keeps its own allocator")
    if current == BARE_MANAGED_RESOURCE:
        return MemoryPlan("pool", True, "a pool over the managed-memory resource (not a cudaMallocManaged each)")
    if current is not None and current != PLAIN_RESOURCE:
        return MemoryPlan(None, True, f"keeps the {current} set up before (e.g. by dask-cuda) and shares it")
    install: Literal["async", "pool"] = "pool" if mode == "pool" else "async"
    return MemoryPlan(install, True, f"RMM's {install} resource, shared by cuDF/cuML, CuPy and XGBoost")


_lock = threading.Lock()
_applied: MemoryPlan | None = None


def setup_device_memory(mode: str = "async") -> MemoryPlan:
    """Apply :func:`plan_device_memory` once per process (threads of a worker may ask at once); returns
    the plan in force (a later call's ``mode`` changes nothing)."""
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        try:
            import rmm
        except ImportError:
            rmm = None
        current = type(rmm.mr.get_current_device_resource()).__name__ if rmm is not None else None
        plan = plan_device_memory(mode, rmm_installed=rmm is not None, current=current)
        if rmm is not None:
            _apply(rmm, plan)
        _applied = plan
        return plan


def _apply(rmm: Any, plan: MemoryPlan) -> None:
    """The CUDA side of a plan (needs a GPU; not run on CPU hosts)."""
    if plan.install == "async":
        rmm.mr.set_current_device_resource(rmm.mr.CudaAsyncMemoryResource())
    elif plan.install == "pool":
        rmm.mr.set_current_device_resource(rmm.mr.PoolMemoryResource(rmm.mr.get_current_device_resource()))
    if plan.shared:
        import cupy
        from rmm.allocators.cupy import rmm_cupy_allocator

        cupy.cuda.set_allocator(rmm_cupy_allocator)
