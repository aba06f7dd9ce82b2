"""The ``local`` backend: the HPO driver as a process beside the host, trials on a Dask LocalCluster.

The driver process (``python -m shared.backends.local.driver``) outlives the handler that started it and
even the host: a restarted host finds it by pid. It is a compute like the others: it gets its experiment's
compute credential on stdin (a fresh one at each start) and none of the control plane's storage settings,
and writes its area; each poll ingests the area (:mod:`shared.backends.area`) before it reads the outcome.
A driver that died without writing its outcome is started again (it resumes from the trials it wrote) up
to ``MAX_DRIVER_RESTARTS`` times. Every start is claimed first (:mod:`.claims`): two hosts running one step
start one driver, and a step whose record missed it adopts it.
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
from shared.backends.local.claims import Claim, DriverClaims, process_start_time
from shared.backends.local.section import LocalCompute
from shared.backends.outcome import DriverOutcome, outcome_status, read_outcome
from shared.compute_report import ComputeReport
from shared.compute_spec import compute_section
from shared.config import Settings
from shared.ports import BackendHandle, HandleUpdate, RunDetails, RunState, RunStatus, Store, areas_of, handle_changes
from shared.records import ExperimentRecord, ExperimentStatus
from shared.telemetry import traceparent_for

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

MAX_DRIVER_RESTARTS = 2
KILL_WAIT_S = 5.0
"""How long teardown waits for a killed driver to be gone."""
ROOT = Path(__file__).resolve().parents[3]


class LocalHandle(BackendHandle, AreaHandle):
    """The driver process: its pid, the kernel's start time of that pid, its log, restarts so far, the
    generation it was claimed as (:mod:`.claims`; 0: none yet, or started before claims); its compute area
    and the ingestion watermark."""

    kind: Literal["local"] = "local"
    pid: int | None = None
    pid_start: str | None = None
    log: str | None = None
    restarts: int = 0
    generation: int = 0

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

    def claims(self, experiment_id: str) -> DriverClaims:
        """The experiment's driver claims (:mod:`.claims`), in the home beside the drivers' logs."""
        return DriverClaims(self.settings.home / "drivers", experiment_id)

    @staticmethod
    def _live(handle: LocalHandle, latest: Claim | None) -> Claim | None:
        """The experiment's running driver, given its newest claim as read once (every decision of a step
        reads it once: a claim read again may have moved on): the claim's, or the handle's if it was
        started before claims were (a newer claim supersedes it: it stops at its next write)."""
        if latest is not None and latest.alive:
            return latest
        if is_alive(handle) and (latest is None or handle.generation >= latest.generation):
            return Claim(handle.generation, handle.pid, handle.pid_start)
        return None

    def _current(self, experiment_id: str, handle: LocalHandle) -> tuple[Claim | None, Claim | None]:
        """The running driver (if a host is starting one, once it has: at most :data:`.claims.ADOPT_WAIT_S`)
        and the newest claim, as read."""
        claims = self.claims(experiment_id)
        latest = claims.latest()
        if latest is not None and latest.starting():
            latest = claims.wait_started(latest.generation) or latest
        return self._live(handle, latest), latest

    def _adopt(self, experiment_id: str, handle: LocalHandle, claim: Claim) -> LocalHandle:
        """The handle naming ``claim``'s driver: another host's start, or one whose step's write was lost."""
        update: dict[str, Any] = {
            "generation": claim.generation,
            "restarts": max(handle.restarts, claim.generation - 1),
        }
        if claim.pid is not None:
            update |= {
                "pid": claim.pid,
                "pid_start": claim.pid_start,
                "log": handle.log or str(self._log_path(experiment_id)),
            }
        return handle.model_copy(update=update)

    @staticmethod
    def _generation(handle: LocalHandle, latest: Claim | None) -> tuple[int, int]:
        """The newest generation started (0: none) and the restarts spent so far."""
        known = max(handle.generation, latest.generation if latest is not None else 0)
        return known, max(handle.restarts, known - 1)

    def _start(self, record: ExperimentRecord, handle: LocalHandle, latest: Claim | None) -> tuple[LocalHandle, bool]:
        """Claim the generation after ``latest`` (seen dead) and start its driver, a fresh credential of its
        area on its stdin; a host that loses the claim adopts the winner's driver instead (False: this host
        started none)."""
        claims = self.claims(record.id)
        known, restarts = self._generation(handle, latest)
        generation = known + 1
        # The credential before the claim: a storage error (the step is retried) leaves no claim without a driver.
        credential = self.areas.issue_compute_credential(record.id, credential_ttl(record.run_spec))
        if not claims.take(generation):
            claim = claims.wait_started(generation)
            return (handle if claim is None else self._adopt(record.id, handle, claim)), False
        log = self._log_path(record.id).open("ab")
        claimed = ["--claims", str(claims.root), "--generation", str(generation)]
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.backends.local.driver", *claimed],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            env=driver_environment(record.traceparent),
            cwd=ROOT,
            start_new_session=True,  # the driver survives the host; cancel signals its whole group
        )
        log.close()
        pid_start = process_start_time(process.pid)
        claims.started(generation, process.pid, pid_start)
        assert process.stdin is not None  # stdin=PIPE
        with process.stdin:
            process.stdin.write(credential.to_json().encode() + b"\n")
        started = {"pid": process.pid, "pid_start": pid_start, "log": str(log.name), "generation": generation}
        return handle.model_copy(update={**started, "restarts": restarts + 1 if known else 0, "area": True}), True

    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        return {}  # nothing to create: the driver runs on this machine, its area is made when it starts

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        """Start the driver, unless one runs (adopted if the record misses it), is being started by another
        host, or ended."""
        before = LocalHandle.model_validate(record.backend_state)
        if self._outcome(record.id) is not None:
            return {}
        live, latest = self._current(record.id, before)
        if live is not None:
            return handle_changes(before, self._adopt(record.id, before, live))
        if latest is not None and (latest.starting() or latest.final):
            return {}
        return handle_changes(before, self._start(record, before, latest)[0])

    def _outcome(self, experiment_id: str) -> DriverOutcome | None:
        return read_outcome(self.store, experiment_id)

    def _ingest(self, record: ExperimentRecord, handle: LocalHandle) -> tuple[LocalHandle, str | None]:
        return ingest_area(self.areas, record.id, handle, self.settings.max_artifact_bytes)

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """Ingest what the driver wrote; its outcome if written; else adopt the running driver, wait for one
        another host is starting, or restart a dead one (claimed: two hosts polling at once start one)."""
        before = LocalHandle.model_validate(record.backend_state)
        handle, problem = self._ingest(record, before)
        if problem:
            return RunStatus(RunState.FAILED, error=problem, updates=handle_changes(before, handle))
        outcome = self._outcome(record.id)
        if outcome is not None:
            return outcome_status(outcome, handle_changes(before, handle))
        live, latest = self._current(record.id, handle)
        if live is not None:
            return RunStatus(RunState.RUNNING, updates=handle_changes(before, self._adopt(record.id, handle, live)))
        if latest is not None and latest.final:
            return RunStatus(RunState.FAILED, error="the driver was stopped by teardown")
        if latest is not None and latest.starting():
            return RunStatus(RunState.RUNNING, updates=handle_changes(before, handle))
        if record.status is ExperimentStatus.CANCELLING:  # nothing new starts once the run was asked to stop
            error = f"the driver ended without an outcome after the cancel; see {handle.log}"
            return RunStatus(RunState.FAILED, error=error, updates=handle_changes(before, handle))
        _, restarts = self._generation(handle, latest)
        if restarts >= MAX_DRIVER_RESTARTS:
            return RunStatus(RunState.FAILED, error=f"the HPO driver died {restarts + 1} times; see {handle.log}")
        handle, started = self._start(record, handle, latest)
        return RunStatus(
            RunState.RUNNING, details=RunDetails(restarted=started), updates=handle_changes(before, handle)
        )

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        """The driver wrote the best model into its area: take in what the last poll did not."""
        handle = LocalHandle.model_validate(record.backend_state)
        return handle_changes(handle, self._ingest(record, handle)[0])

    def _drivers(self, record: ExperimentRecord) -> set[int]:
        """The experiment's live driver processes: every live claim's, and the handle's."""
        handle = LocalHandle.model_validate(record.backend_state)
        pids = {claim.pid for claim in self.claims(record.id).live() if claim.pid is not None}
        return pids | ({handle.pid} if handle.pid is not None and is_alive(handle) else set())

    def _signal(self, record: ExperimentRecord, sig: signal.Signals, *, group: bool = True) -> None:
        for pid in self._drivers(record):
            with contextlib.suppress(ProcessLookupError):  # it ended between the check and the signal
                (os.killpg if group else os.kill)(pid, sig)

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        """SIGTERM to the driver alone, not its Dask cluster: it stops the running trials, refits the best
        finished one on the cluster and writes its outcome (the state machine waits for it); teardown
        SIGKILLs the whole group."""
        self._signal(record, signal.SIGTERM, group=False)
        return {}

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        """Claim a final generation (a driver a host starts after this stops at its first check), SIGKILL
        every driver's process group and wait (briefly) until they are gone."""
        claims = self.claims(record.id)
        while (latest := claims.latest()) is None or not latest.final:
            claims.take((latest.generation if latest is not None else 0) + 1, final=True)
        self._signal(record, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while self._drivers(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        return {}
