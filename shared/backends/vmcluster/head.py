"""The head node's HPO driver: ``python -m shared.backends.vmcluster.head`` beside the Dask scheduler.

Started by ``boot.py`` on the head VM (Python of the image, our code from the archive). It holds only
the experiment's compute credential (in ``node.json``): it runs (or resumes) the one shared driver run
(:func:`shared.hpo.run_driver.run_experiment`, as the local backend's driver does) against the local
scheduler and the workers, which records trials, the data check, the refitted model, the charts and the
outcome in that area (:class:`shared.store.compute.ComputeStore`); the head writes a heartbeat beside
them, and the run stops when the record it reads says CANCELLING.

Exit status 0 once an outcome is written (also for a failed or cancelled run); 1 when the driver
itself broke, so the container's restart policy starts it again and it resumes from the trials.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from shared.backends.vmcluster.exchange import HEARTBEAT_ARTIFACT
from shared.config import DRIVER_OUTCOME_ARTIFACT
from shared.errors import NotFound
from shared.ports import Store
from shared.store.compute import ComputeStore
from shared.telemetry.compute import start_compute_telemetry
from shared.telemetry.setup import flush

log = logging.getLogger("rapids_hpo.head")

HEARTBEAT_S = 10.0
WORKERS_TIMEOUT_S = 1800.0
"""How long the driver waits for the first worker to join (image pulls on fresh VMs take minutes)."""


def _heartbeat(store: ComputeStore, stop: threading.Event, every_s: float) -> None:
    while not stop.is_set():
        try:
            beat = {"at": datetime.now(UTC).isoformat()}
            store.put_artifact(store.experiment_id, HEARTBEAT_ARTIFACT, json.dumps(beat).encode())
        except Exception:
            log.warning("heartbeat not written", exc_info=True)
        stop.wait(every_s)


def run(config: dict[str, Any]) -> int:
    """Run the experiment ``config`` names; returns the process exit status.

    The run itself is the one every backend's driver makes (:func:`shared.hpo.run_driver.run_experiment`:
    the data check, the budget guard, the refit, the outcome); the head adds only what its VM needs: the
    scheduler's address, the wait for the first worker, the heartbeat, and an exit status for Docker's
    restart policy (a driver error propagates, so the container restarts and resumes from the trials)."""
    from distributed import Client

    from shared.dashboard.artifacts import DashboardReports
    from shared.hpo.run_driver import CancelWatch, run_experiment

    area = ComputeStore.from_json(json.dumps(config["credential"]))
    experiment_id = area.experiment_id
    try:
        area.get_artifact(experiment_id, DRIVER_OUTCOME_ARTIFACT)
        log.info("experiment %s has an outcome already", experiment_id)
        return 0
    except NotFound:
        pass
    store = cast(Store, area)  # the area offers the driver's part of a Store, as the local driver's does
    stop = threading.Event()
    every = float(config.get("heartbeat_s", HEARTBEAT_S))
    threading.Thread(target=_heartbeat, args=(area, stop, every), daemon=True).start()
    protocol = "tls" if config.get("tls") else "tcp"
    address = f"{protocol}://127.0.0.1:{int(config['scheduler_port'])}"
    try:
        with Client(address, timeout=120) as client:  # the default client: the driver's Queue/Event use it
            client.wait_for_workers(1, timeout=float(config.get("workers_timeout_s", WORKERS_TIMEOUT_S)))
            cancel = CancelWatch(store, experiment_id)
            outcome = run_experiment(store, experiment_id, client, cancel, DashboardReports, restarted_on_error=True)
    except Exception:
        log.exception("the driver broke; the container restarts it and it resumes from the trials")
        return 1
    finally:
        stop.set()
    log.info("experiment %s ended %s: %s", experiment_id, outcome.status, outcome.reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the node's node.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    config = json.loads(args.config.read_text())
    # The trace and exporter settings the control plane left in the area (shared.telemetry.compute); the run
    # is a span of the experiment's trace (run_experiment), flushed before its outcome and again at the end.
    start_compute_telemetry(ComputeStore.from_json(json.dumps(config["credential"])).area, "rapids-hpo-driver")
    try:
        return run(config)
    finally:
        flush()


if __name__ == "__main__":
    raise SystemExit(main())
