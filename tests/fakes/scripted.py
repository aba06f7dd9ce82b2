"""A FAKE ``ComputeBackend`` whose run states are scripted: the dummy adapter of the state-machine tests.

The boundary it stands at is "what a compute does between two polls", which the state-machine tests need
to choose (a run that fails, stalls, is cancelled mid-poll) without running one; the real backends pass
the conformance suite (``tests/conformance/``), and the end-to-end tests use the real local backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.compute_report import ComputeReport
from shared.errors import BackendError
from shared.ports import BackendHandle, Capabilities, HandleUpdate, RunState, RunStatus, handle_changes
from shared.records import ExperimentRecord


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
        return _changes(record, {"provisioned": True})

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        self._call("submit", record)
        return _changes(record, {"submitted": True})

    def poll(self, record: ExperimentRecord) -> RunStatus:
        self._call("poll", record)
        state = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        updates = _changes(record, self.poll_updates.pop(0)) if self.poll_updates else {}
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


def _changes(record: ExperimentRecord, fields: HandleUpdate) -> HandleUpdate:
    """The contract's rule for a step's update: only the fields whose value the call changes, so a
    repeated call returns ``{}`` (``tests/conformance/test_backend.py`` holds this fake to it)."""
    before = ScriptedHandle.model_validate(record.backend_state)
    return handle_changes(before, before.model_copy(update=fields))
