"""The head node's HPO driver: ``python -m shared.backends.vmcluster.head`` beside the Dask scheduler.

Started by ``boot.py`` on the head VM (Python of the image, our code from the archive). It holds only
the experiment container's SAS (``node.json``): it reads the spec there, runs (or resumes) the
driver against the local scheduler and the workers, records trials, the refitted model, the charts
and ``driver/outcome.json`` there, writes a heartbeat, and stops when ``control/cancel`` appears.

Exit status 0 once an outcome is written (also for a failed or cancelled run); 1 when the driver
itself broke, so the container's restart policy starts it again and it resumes from the trials.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.backends.vmcluster.exchange import CANCEL_BLOB, OUTCOME_BLOB, SPEC_BLOB, ExperimentFiles
from shared.records import ExperimentRecord

log = logging.getLogger("rapids_hpo.head")

HEARTBEAT_S = 10.0
WORKERS_TIMEOUT_S = 1800.0
"""How long the driver waits for the first worker to join (image pulls on fresh VMs take minutes)."""


class CancelFlag:
    """True once ``control/cancel`` exists in the experiment's container (looked up at most once a second)."""

    def __init__(self, files: ExperimentFiles, every_s: float = 1.0) -> None:
        self.files = files
        self.every_s = every_s
        self._checked = float("-inf")
        self._set = False

    def __call__(self) -> bool:
        if not self._set and time.monotonic() - self._checked >= self.every_s:
            self._checked = time.monotonic()
            try:
                self._set = self.files.exists(CANCEL_BLOB)
            except Exception:  # storage briefly unreachable: ask again next time
                log.warning("could not read the cancel flag", exc_info=True)
        return self._set


def _heartbeat(files: ExperimentFiles, stop: threading.Event, every_s: float) -> None:
    while not stop.is_set():
        try:
            files.heartbeat(trials=len(files.list_trials(files.experiment_id)))
        except Exception:
            log.warning("heartbeat not written", exc_info=True)
        stop.wait(every_s)


def run(config: dict[str, Any]) -> int:
    """Run the experiment ``config`` names; returns the process exit status."""
    from distributed import Client

    from shared.dashboard.artifacts import save_plots_safely
    from shared.dashboard.importance import ImportanceRefresher
    from shared.hpo.driver import ExperimentOutcome, HpoDriver
    from shared.hpo.refit import refit_best_model
    from shared.spec import load_spec

    experiment_id = config["experiment_id"]
    files = ExperimentFiles(config["exchange_url"], experiment_id)
    if files.exists(OUTCOME_BLOB):
        log.info("experiment %s has an outcome already", experiment_id)
        return 0
    document = json.loads(files.get(SPEC_BLOB) or b"null")
    spec = load_spec(document)
    record = ExperimentRecord(id=experiment_id, name=spec.name, spec=document, backend="vmcluster")
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(files, stop, float(config.get("heartbeat_s", HEARTBEAT_S))), daemon=True
    )
    beat.start()
    protocol = "tls" if config.get("tls") else "tcp"
    address = f"{protocol}://127.0.0.1:{int(config['scheduler_port'])}"
    try:
        with Client(address, timeout=120) as client:  # the default client: the driver's Queue/Event use it
            client.wait_for_workers(1, timeout=float(config.get("workers_timeout_s", WORKERS_TIMEOUT_S)))
            driver = HpoDriver(
                spec,
                experiment_id,
                files,
                client,
                should_cancel=CancelFlag(files),
                on_trial_end=ImportanceRefresher(files, record),
            )
            outcome: ExperimentOutcome = driver.run()
            if outcome.status == "COMPLETED" and outcome.best is not None:
                outcome.best = refit_best_model(spec, experiment_id, outcome.best, files, client)
    except Exception:
        log.exception("the driver broke; the container restarts it and it resumes from the trials")
        return 1
    finally:
        stop.set()
    save_plots_safely(files, record)
    result = asdict(outcome)
    result["best"] = outcome.best.model_dump(mode="json") if outcome.best else None
    files.put(OUTCOME_BLOB, json.dumps(result, indent=2).encode())
    log.info("experiment %s ended %s: %s", experiment_id, outcome.status, outcome.reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the node's node.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    return run(json.loads(args.config.read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
