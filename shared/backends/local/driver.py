"""The local driver process: ``python -m shared.backends.local.driver`` with its compute credential on stdin.

It runs (or resumes) the experiment on a Dask LocalCluster sized by the spec's ``compute`` section, as a
compute like any other: it holds its experiment's compute credential only (a folder, or a SAS on the
experiment's container), never the control plane's storage connection string, and writes its trials and
artifacts into that area, which the control plane ingests each poll (:mod:`shared.backends.area`).
SIGTERM (cancel) stops the running trials and ends with a CANCELLED outcome.

``--claims ROOT --generation N``: the claim its host took before starting it (:mod:`.claims`). It runs only
while it is the experiment's newest: checked at start and before each write it makes, and a superseded
driver stops at once, with its cluster, writing nothing more (:class:`Fence`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from distributed import Client, LocalCluster

from shared.backends.local.claims import DriverClaims, process_start_time
from shared.backends.local.section import LocalCompute
from shared.config import env
from shared.cost.catalogue import PRICES_FILE_SETTING, use_prices_file
from shared.dashboard.artifacts import DashboardReports
from shared.hpo.patient_store import patient
from shared.hpo.run_driver import CancelWatch, run_experiment
from shared.hpo.worker_watch import WorkerWatch
from shared.ports import Store
from shared.records import TrialRecord
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


class Fence:
    """This driver's claim: it may run and write only while no newer generation is claimed."""

    def __init__(self, claims: DriverClaims, generation: int) -> None:
        self.claims, self.generation = claims, generation

    def superseded(self) -> bool:
        latest = self.claims.latest()
        return latest is None or latest.generation != self.generation

    def start(self) -> bool:
        """At start: False if the claim is not (or no longer) this driver's; else name this process in it
        (its host may have died before it could)."""
        if self.claims.read(self.generation) is None or self.superseded():
            return False
        self.claims.started(self.generation, os.getpid(), process_start_time(os.getpid()))
        return True

    def check(self) -> None:
        """Before a write: a superseded driver stops here, its cluster with it (its process group)."""
        if self.superseded():
            log.error("driver generation %d is superseded by %s: stopping", self.generation, self.claims.latest())
            logging.shutdown()
            if os.getpgrp() == os.getpid():  # started in a session of its own, as the backend starts it
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(3)


class FencedStore:
    """The driver's store, each write behind the :class:`Fence` (reads pass through)."""

    def __init__(self, store: Store, fence: Fence) -> None:
        self.store, self.fence = store, fence

    def put_trial(self, trial: TrialRecord) -> None:
        self.fence.check()
        self.store.put_trial(trial)

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        self.fence.check()
        return self.store.put_artifact(experiment_id, name, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shared.backends.local.driver")
    parser.add_argument("--claims", type=Path, help="the experiments' driver claims (shared.backends.local.claims)")
    parser.add_argument("--generation", type=int, help="the generation this driver was claimed as")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Read the credential (one JSON line on stdin), run the experiment it reaches; 1 on a driver error."""
    args = arguments(sys.argv[1:] if argv is None else argv)
    area = ComputeStore.from_json(sys.stdin.readline())
    experiment_id = area.experiment_id
    set_experiment(experiment_id)  # every log line of this process names it
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    store = cast(Store, area)
    if args.claims is not None and args.generation is not None:
        fence = Fence(DriverClaims(args.claims, experiment_id), args.generation)
        if not fence.start():
            latest = fence.claims.latest()
            log.warning("driver generation %d is not the newest claim (%s): exiting", args.generation, latest)
            return 0
        store = cast(Store, FencedStore(store, fence))
    logging.getLogger("azure").setLevel(logging.WARNING)
    configure("rapids-hpo-driver")
    use_prices_file(env(PRICES_FILE_SETTING))  # the budget guard prices as the control plane that started it
    # The area offers the driver's part of a Store (the vmcluster head runs on one alike); a storage outage
    # is waited out, not a driver error.
    store = patient(store)
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
