"""A Dask worker preload: import the training stack when a worker starts, before any task reaches it.

Give it to the workers as ``preload=["gpu_jobs.preload"]`` (``LocalCluster``, ``Nanny``) or as
``DASK_DISTRIBUTED__WORKER__PRELOAD='["gpu_jobs.preload"]'``. Dask calls :func:`dask_setup` during the
worker's start, before it registers with the scheduler.

Without it, a worker's first trial imports scikit-learn, XGBoost and ``gpu_jobs`` while tasks run: the
event loop unpickles the first task (importing ``gpu_jobs`` modules by reference) while a seceded fold
task and a pool thread import scikit-learn lazily, so the same packages are first imported in several
threads of one process at once, and the worker's event loop stalls for the length of an import. Done
once at start, on one thread, neither happens. A module that is not installed (or fails to import) is
skipped with a log line: a preload that raises would keep the worker from starting.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

MODULES = (
    "numpy",
    "pandas",
    "sklearn.ensemble",
    "sklearn.metrics",
    "sklearn.model_selection",
    "xgboost",
    "gpu_jobs.trial",
    "gpu_jobs.dask_trainers",
)
"""What a trial imports on a worker (the CPU stack; cuDF/cuML stay lazy: they need a GPU to import well)."""


def warm(modules: Sequence[str] = MODULES) -> list[str]:
    """Import ``modules``; return those that imported."""
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # never stop a worker's start
            log.warning("preload: %s not imported: %s", name, exc)
        else:
            loaded.append(name)
    return loaded


def dask_setup(worker: Any) -> None:
    """Dask's preload hook (on the worker's start, before it takes tasks)."""
    warm()
