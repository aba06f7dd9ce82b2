"""The local driver's lease on its cluster: a driver whose LocalCluster has had no worker for ``grace``
seconds ends itself, so the control plane restarts it and the restart resumes its trials.

Dask replaces a lost worker (its nanny starts another) and reruns the lost worker's tasks, so a killed
worker costs a trial only its unfinished fold. But a nanny whose new worker cannot start gives up, and a
LocalCluster then has no worker at all: every task waits, the driver waits on them, its process stays alive,
so the control plane's poll saw a live driver and the experiment stayed RUNNING with its trials RUNNING,
for ever (found by ``bench/chaos.py``, workers SIGKILLed as the cluster started). Ending the driver hands the
experiment to the contract that already holds for a dead driver: poll starts it again (up to
``MAX_DRIVER_RESTARTS``), the restart fails the trials the store shows RUNNING as interrupted and retries
each once under the same number; past the restarts the run FAILs and teardown ends what still runs.

Only where every worker belongs to the driver (the local backend's LocalCluster): a vmcluster head starts
before its worker VMs exist and waits for them by design.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from distributed import Client

log = logging.getLogger(__name__)

NO_WORKER_GRACE_S = 120.0
"""How long a LocalCluster may have no worker (a nanny restarting one on a loaded machine takes seconds)."""
EXIT_STATUS = 75
"""The driver's exit status when it ends for want of workers (EX_TEMPFAIL: try again)."""


def _exit() -> None:
    logging.shutdown()
    os._exit(EXIT_STATUS)


class WorkerWatch:
    """A daemon thread that calls ``on_lost`` (default: end the process) once ``client``'s cluster has had no
    worker for ``grace`` seconds in a row; checks every ``interval`` seconds."""

    def __init__(
        self,
        client: Client,
        grace: float = NO_WORKER_GRACE_S,
        interval: float = 5.0,
        on_lost: Callable[[], None] = _exit,
    ) -> None:
        self.client = client
        self.grace = grace
        self.interval = interval
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-watch", daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def workers(self) -> int | None:
        """Workers the scheduler knows now (None: it could not be asked)."""
        try:
            return len(self.client.scheduler_info(n_workers=-1)["workers"])
        except Exception:
            return None

    def _run(self) -> None:
        since: float | None = None
        while not self._stop.wait(self.interval):
            count = self.workers()
            if count is None or count > 0:
                since = None
                continue
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= self.grace:
                log.error(
                    "the cluster has had no worker for %.0f s: the driver ends so that it is restarted", self.grace
                )
                self.on_lost()
                return
