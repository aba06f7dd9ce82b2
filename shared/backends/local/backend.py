"""The ``local`` backend: the HPO driver as a process beside the host, trials on a Dask LocalCluster.

The driver process (``python -m shared.backends.local.driver``) outlives the handler that started it and
even the host: a restarted host finds it by pid. It is a compute like the others: it gets its experiment's
compute credential on stdin (a fresh one at each start) and none of the control plane's storage settings,
and writes its area; each poll ingests the area (:mod:`shared.backends.area`) before it reads the outcome.
A driver that died without writing its outcome is started again (it resumes from the trials it wrote) up
to ``MAX_DRIVER_RESTARTS`` times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared.backends.area import AreaHandle, credential_ttl, ingest_area
from shared.backends.local import CAPABILITIES
from shared.backends.local.section import LocalCompute
from shared.backends.outcome import DriverOutcome, outcome_status, read_outcome
from shared.compute_spec import compute_section
from shared.config import Settings
from shared.ports import BackendHandle, HandleUpdate, RunDetails, RunState, RunStatus, Store, areas_of, handle_changes
from shared.records import ComputeReport, ExperimentRecord, ExperimentStatus
from shared.telemetry import traceparent_for

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

MAX_DRIVER_RESTARTS = 2
KILL_WAIT_S = 5.0
"""How long teardown waits for a killed driver to be gone."""
ROOT = Path(__file__).resolve().parents[3]


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    state, start = fields[0], fields[19]
    return None if state == "Z" else start


class LocalHandle(BackendHandle, AreaHandle):
    """The driver process: its pid, the kernel's start time of that pid, its log, restarts so far; its
    compute area and the ingestion watermark."""

    kind: Literal["local"] = "local"
    pid: int | None = None
    pid_start: str | None = None
    log: str | None = None
    restarts: int = 0

    def compute_report(self) -> ComputeReport:
        return ComputeReport(driver_restarts=self.restarts)


def is_alive(handle: LocalHandle | dict[str, Any]) -> bool:
    """Whether the handle's driver process still runs (and is the same process, not a reused pid)."""
    if isinstance(handle, dict):
        handle = LocalHandle.model_validate(handle)
    return handle.pid is not None and process_start_time(handle.pid) == handle.pid_start


CONTROL_PLANE_SETTINGS = ("AzureWebJobsStorage", "EVENTGRID_TOPIC_KEY", "RAPIDS_HPO_FUNCTION_KEY", "TRACEPARENT")
"""Environment variables (and prefixes) the driver never inherits: the control plane's own credentials
(and the host's own trace, which the experiment's replaces)."""


def driver_environment(traceparent: str | None = None) -> dict[str, str]:
    """The driver's environment: this process's (telemetry settings included) less the control plane's
    credentials, with our code on ``PYTHONPATH`` and the experiment's trace (``TRACEPARENT``: the driver's
    spans join it). The driver's one way into storage is the credential it reads on stdin."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(CONTROL_PLANE_SETTINGS)}
    carried = traceparent_for(traceparent)
    if carried is not None:
        env["TRACEPARENT"] = carried
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


class LocalPlanner:
    """Nothing in Azure: a driver process and a Dask LocalCluster on this machine (nothing is billed)."""

    full_plan_shows = None

    def describe(self, spec: ExperimentSpec) -> list[str]:
        trials = f"{spec.effective_total_trials()} trials, {spec.limits.max_concurrent_trials} at a time"
        workers = compute_section(spec, LocalCompute).n_workers
        return [f"nothing in Azure: a driver process and a Dask LocalCluster of {workers} workers here", trials]

    def dry_run(self, spec: ExperimentSpec) -> dict[str, Any]:
        return {
            "backend": "local",
            "creates": "nothing in Azure: a driver process and a Dask LocalCluster on this machine",
            "cluster": spec.compute.model_dump(),
            "trials": spec.effective_total_trials(),
            "max_concurrent_trials": spec.limits.max_concurrent_trials,
            "billed_node_hours": 0.0,  # nothing billed; the plan's node-hours are this machine's workers' time
        }


class LocalBackend:
    """Runs the driver as a local process; implements ``shared.ports.ComputeBackend``."""

    name = "local"
    handle_type = LocalHandle
    capabilities = CAPABILITIES
    planner = LocalPlanner()

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.areas = areas_of(store)
        self.settings = settings

    def _log_path(self, experiment_id: str) -> Path:
        path = self.settings.home / "logs" / f"{experiment_id}.driver.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, record: ExperimentRecord, restarts: int = 0) -> HandleUpdate:
        """Start the driver with a fresh credential of its area on stdin; the handle fields that changed."""
        before = LocalHandle.model_validate(record.backend_state)
        credential = self.areas.issue_compute_credential(record.id, credential_ttl(record.run_spec))
        log = self._log_path(record.id).open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.backends.local.driver"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            env=driver_environment(record.traceparent),
            cwd=ROOT,
            start_new_session=True,  # the driver survives the host; cancel signals its whole group
        )
        log.close()
        assert process.stdin is not None  # stdin=PIPE
        with process.stdin:
            process.stdin.write(credential.to_json().encode() + b"\n")
        started = {"pid": process.pid, "pid_start": process_start_time(process.pid), "log": str(log.name)}
        return handle_changes(before, before.model_copy(update={**started, "restarts": restarts, "area": True}))

    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        return {}  # nothing to create: the driver runs on this machine, its area is made when it starts

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        if is_alive(record.backend_state) or self._outcome(record.id) is not None:
            return {}
        return self._spawn(record)

    def _outcome(self, experiment_id: str) -> DriverOutcome | None:
        return read_outcome(self.store, experiment_id)

    def _ingest(self, record: ExperimentRecord, handle: LocalHandle) -> tuple[LocalHandle, str | None]:
        return ingest_area(self.areas, record.id, handle, self.settings.max_artifact_bytes)

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """Ingest what the driver wrote; its outcome if written; else restart a dead driver."""
        before = LocalHandle.model_validate(record.backend_state)
        handle, problem = self._ingest(record, before)
        if problem:
            return RunStatus(RunState.FAILED, error=problem, updates=handle_changes(before, handle))
        outcome = self._outcome(record.id)
        if outcome is not None:
            return outcome_status(outcome, handle_changes(before, handle))
        if is_alive(handle):
            return RunStatus(RunState.RUNNING, updates=handle_changes(before, handle))
        if record.status is ExperimentStatus.CANCELLING:  # nothing new starts once the run was asked to stop
            error = f"the driver ended without an outcome after the cancel; see {handle.log}"
            return RunStatus(RunState.FAILED, error=error, updates=handle_changes(before, handle))
        if handle.restarts >= MAX_DRIVER_RESTARTS:
            return RunStatus(
                RunState.FAILED,
                error=f"the HPO driver died {handle.restarts + 1} times; see {handle.log}",
            )
        record = record.model_copy(update={"backend_state": handle.model_dump(mode="json")})
        updates = {**handle_changes(before, handle), **self._spawn(record, restarts=handle.restarts + 1)}
        return RunStatus(RunState.RUNNING, details=RunDetails(restarted=True), updates=updates)

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        """The driver wrote the best model into its area: take in what the last poll did not."""
        handle = LocalHandle.model_validate(record.backend_state)
        return handle_changes(handle, self._ingest(record, handle)[0])

    def _signal(self, record: ExperimentRecord, sig: signal.Signals, *, group: bool = True) -> None:
        handle = LocalHandle.model_validate(record.backend_state)
        if handle.pid and is_alive(handle):
            with contextlib.suppress(ProcessLookupError):  # it ended between the check and the signal
                (os.killpg if group else os.kill)(handle.pid, sig)

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        """SIGTERM to the driver alone, not its Dask cluster: it stops the running trials, refits the best
        finished one on the cluster and writes its outcome (the state machine waits for it); teardown
        SIGKILLs the whole group."""
        self._signal(record, signal.SIGTERM, group=False)
        return {}

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        """SIGKILL the driver's process group and wait (briefly) until the driver is gone."""
        self._signal(record, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while is_alive(record.backend_state) and time.monotonic() < deadline:
            time.sleep(0.05)
        return {}
