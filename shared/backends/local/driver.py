"""The local driver process: ``python -m shared.backends.local.driver`` with its compute credential on stdin.

It runs (or resumes) the experiment on a Dask LocalCluster sized by the spec's ``compute`` section, as a
compute like any other: it holds its experiment's compute credential only (a folder, or a SAS on the
experiment's container), never the control plane's storage connection string, and writes its trials and
artifacts into that area, which the control plane ingests each poll (:mod:`shared.backends.area`).
SIGTERM (cancel) stops the running trials and ends with a CANCELLED outcome.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import cast

from distributed import Client, LocalCluster

from shared.backends.local.section import LocalCompute
from shared.config import env
from shared.cost.catalogue import PRICES_FILE_SETTING, use_prices_file
from shared.dashboard.artifacts import DashboardReports
from shared.hpo.patient_store import patient
from shared.hpo.run_driver import CancelWatch, run_experiment
from shared.hpo.worker_watch import WorkerWatch
from shared.ports import Store
from shared.store.compute import ComputeStore
from shared.telemetry import LOG_FORMAT, set_experiment
from shared.telemetry.setup import configure

log = logging.getLogger("rapids_hpo.driver")
WORKER_PRELOAD = "gpu_jobs.preload"


CLUSTER_STARTS = 3
"""Tries to start the LocalCluster: a worker that dies while it starts fails the whole start (``Nanny failed to
start``), which is no reason to spend one of the driver's restarts (found by ``bench/chaos.py``)."""


def local_cluster(compute: LocalCompute) -> LocalCluster:
    """A LocalCluster sized by the section, started again (up to :data:`CLUSTER_STARTS` times) if a worker
    died while it started."""
    for attempt in range(1, CLUSTER_STARTS + 1):
        try:
            return LocalCluster(
                n_workers=compute.n_workers,
                threads_per_worker=compute.threads_per_worker,
                memory_limit=compute.memory_limit,
                processes=True,
                # Dask's HTTP endpoints on loopback and a free port: with None they still bind 0.0.0.0:8787, and
                # a second local experiment warns that the port is taken.
                dashboard_address="127.0.0.1:0",
                preload=[WORKER_PRELOAD],  # the training stack imported at each worker's start
            )
        except RuntimeError as exc:
            if attempt == CLUSTER_STARTS:
                raise
            log.warning("the cluster did not start (%s); starting it again", exc)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def dask_client(compute: LocalCompute) -> Iterator[Client]:
    """A client of a LocalCluster sized by the section (a spec never names a scheduler to connect to), under
    the driver's lease on it (:class:`shared.hpo.worker_watch.WorkerWatch`: no worker for long, the driver
    ends, is restarted by poll and resumes)."""
    with (
        local_cluster(compute) as cluster,
        Client(cluster) as client,
        WorkerWatch(client),
    ):
        yield client


def main() -> int:
    """Read the credential (one JSON line on stdin), run the experiment it reaches; 1 on a driver error."""
    area = ComputeStore.from_json(sys.stdin.readline())
    experiment_id = area.experiment_id
    set_experiment(experiment_id)  # every log line of this process names it
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("azure").setLevel(logging.WARNING)
    configure("rapids-hpo-driver")
    use_prices_file(env(PRICES_FILE_SETTING))  # the budget guard prices as the control plane that started it
    # The area offers the driver's part of a Store (the vmcluster head runs on one alike); a storage outage
    # is waited out, not a driver error.
    store = patient(cast(Store, area))
    cancel = CancelWatch(store, experiment_id)
    signal.signal(signal.SIGTERM, lambda *_: cancel.signalled.set())
    compute = store.get_experiment(experiment_id).run_spec.compute
    if not isinstance(compute, LocalCompute):
        log.error("experiment %s is not a local experiment", experiment_id)
        return 2
    with dask_client(compute) as client:
        outcome = run_experiment(store, experiment_id, client, cancel, DashboardReports)
    log.info("experiment %s ended %s: %s", experiment_id, outcome.status, outcome.reason)
    return 0 if outcome.status != "FAILED" or outcome.reason != "driver error" else 1


if __name__ == "__main__":
    raise SystemExit(main())
