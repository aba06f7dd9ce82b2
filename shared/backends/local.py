"""The ``local`` backend: the HPO driver as a process beside the host, trials on a Dask LocalCluster.

The driver process (``python -m shared.hpo.run_driver``) outlives the handler that started it and even
the host: a restarted host finds it by pid. A driver that died without writing its outcome is started
again (it resumes from the store) up to ``MAX_DRIVER_RESTARTS`` times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from shared.backends.outcome import outcome_status, read_outcome
from shared.config import Settings
from shared.ports import RunState, RunStatus, Store
from shared.records import ExperimentRecord

MAX_DRIVER_RESTARTS = 2
ROOT = Path(__file__).resolve().parents[2]


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    state, start = fields[0], fields[19]
    return None if state == "Z" else start


def is_alive(handle: dict[str, Any]) -> bool:
    pid = handle.get("pid")
    return bool(pid) and process_start_time(int(pid)) == handle.get("pid_start")


class LocalBackend:
    """Runs the driver as a local process; implements ``shared.ports.ComputeBackend``."""

    name = "local"

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def _log_path(self, experiment_id: str) -> Path:
        path = self.settings.home / "logs" / f"{experiment_id}.driver.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _environment(self) -> dict[str, str]:
        settings = self.settings
        env = dict(os.environ)
        env["RAPIDS_HPO_HOME"] = str(settings.home)
        if settings.storage_connection_string:
            env["AzureWebJobsStorage"] = settings.storage_connection_string
        if settings.storage_account_name:
            env["AzureWebJobsStorage__accountName"] = settings.storage_account_name
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        return env

    def _spawn(self, record: ExperimentRecord) -> dict[str, Any]:
        log = self._log_path(record.id).open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.hpo.run_driver", "--experiment-id", record.id],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._environment(),
            cwd=ROOT,
            start_new_session=True,  # the driver survives the host; cancel signals its whole group
        )
        log.close()
        return {"pid": process.pid, "pid_start": process_start_time(process.pid), "log": str(log.name)}

    def provision(self, record: ExperimentRecord) -> dict[str, Any]:
        return {**record.backend_state, "kind": "local", "restarts": 0}

    def submit(self, record: ExperimentRecord) -> dict[str, Any]:
        if is_alive(record.backend_state) or self._outcome(record.id) is not None:
            return record.backend_state
        return {**record.backend_state, **self._spawn(record)}

    def _outcome(self, experiment_id: str) -> dict[str, Any] | None:
        return read_outcome(self.store, experiment_id)

    def poll(self, record: ExperimentRecord) -> RunStatus:
        outcome = self._outcome(record.id)
        if outcome is not None:
            return outcome_status(outcome)
        if is_alive(record.backend_state):
            return RunStatus(RunState.RUNNING)
        restarts = int(record.backend_state.get("restarts", 0))
        if restarts >= MAX_DRIVER_RESTARTS:
            return RunStatus(
                RunState.FAILED,
                error=f"the HPO driver died {restarts + 1} times; see {record.backend_state.get('log')}",
            )
        handle = {**self._spawn(record), "restarts": restarts + 1}
        return RunStatus(RunState.RUNNING, details={"backend_state": handle, "restarted": True})

    def finalize(self, record: ExperimentRecord) -> dict[str, Any]:
        return {}  # the driver stored the best model itself

    def _signal(self, record: ExperimentRecord, sig: signal.Signals) -> None:
        if is_alive(record.backend_state):
            with contextlib.suppress(ProcessLookupError):  # it ended between the check and the signal
                os.killpg(int(record.backend_state["pid"]), sig)

    def cancel(self, record: ExperimentRecord) -> None:
        self._signal(record, signal.SIGTERM)

    def teardown(self, record: ExperimentRecord) -> None:
        self._signal(record, signal.SIGKILL)
