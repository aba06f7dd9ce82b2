"""``rapids-hpo serve`` for ``bench/soak.py``: the real host (API, ``LocalHost`` workers, handlers, sweep) with
the compute replaced and the host measured.

The compute is a FAKE at the compute boundary (``SoakBackend``): 200 real drivers with their Dask clusters
do not fit on 2 cores, and the soak measures the control plane. Its first poll writes the experiment's
trials (finished, so progress, the best trial and their CloudEvents are real work), the third reports the
run succeeded. What the host does is appended to ``$SOAK_LOG`` (JSON lines, flushed every second): each
event sent (with its delay), each step handled (start, end), and the storage requests made so far.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.compute_report import ComputeReport  # noqa: E402
from shared.ports import BackendHandle, Capabilities, HandleUpdate, RunState, RunStatus, handle_changes  # noqa: E402
from shared.records import ExperimentRecord, TrialRecord, TrialState, utcnow  # noqa: E402

TRIALS = 5
POLLS_TO_SUCCEED = 3


class SoakHandle(BackendHandle):
    kind: Literal["local"] = "local"
    polls: int = 0

    def compute_report(self) -> ComputeReport:
        return ComputeReport()


class SoakBackend:
    """FAKE compute (see the module docstring): trials appear at the first poll, success at the third."""

    name = "local"
    handle_type = SoakHandle
    capabilities = Capabilities(model_from="driver", cloud_resources=False, finds_orphans=False, restarts_driver=True)

    def __init__(self, store: Any, settings: Any) -> None:
        self.store = store

    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        return {}

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        return {}

    def poll(self, record: ExperimentRecord) -> RunStatus:
        before = SoakHandle.model_validate(record.backend_state)
        if before.polls == 0:
            for number in range(TRIALS):
                now = utcnow()
                self.store.put_trial(
                    TrialRecord(
                        experiment_id=record.id,
                        number=number,
                        params={"max_features": 0.1 * number},
                        state=TrialState.COMPLETED,
                        value=0.5 + 0.01 * number,
                        started_at=now,
                        ended_at=now,
                    )
                )
        updates = handle_changes(before, before.model_copy(update={"polls": before.polls + 1}))
        state = RunState.SUCCEEDED if before.polls + 1 >= POLLS_TO_SUCCEED else RunState.RUNNING
        return RunStatus(state, updates=updates)

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        return {}

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        return {}

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        return {}


class Recorder:
    """Collects what the host did; a thread appends it to the log file every second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = []
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._flush_forever, daemon=True).start()

    def add(self, line: dict[str, Any]) -> None:
        with self.lock:
            self.lines.append(line)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(1)
            with self.lock:
                lines, self.lines = self.lines, []
                lines.append({"t": "requests", "pid": os.getpid(), "at": time.time(), "n": self.requests})
            with self.path.open("a") as log:
                log.writelines(json.dumps(line) + "\n" for line in lines)


def install(recorder: Recorder) -> None:
    from azure.core.pipeline.transport import RequestsTransport

    import shared.backends
    from shared import runner
    from shared.handlers import intake, writer
    from shared.records import ExperimentEvent

    original_create = shared.backends.create_backend

    def create_backend(name: str, store: Any, settings: Any) -> Any:
        return SoakBackend(store, settings) if name == "local" else original_create(name, store, settings)

    shared.backends.create_backend = create_backend  # type: ignore[assignment]

    send = RequestsTransport.send

    def counted(self: Any, request: Any, **kwargs: Any) -> Any:
        recorder.requests += 1
        return send(self, request, **kwargs)

    RequestsTransport.send = counted  # type: ignore[method-assign]

    original_event = writer.send_event

    def send_event(ctx: Any, event_type: Any, record: Any, delay: int = 0) -> None:
        original_event(ctx, event_type, record, delay)
        recorder.add(
            {"t": "sent", "key": f"{record.id}:{record.event_seq}:{event_type.value}", "due": time.time() + delay}
        )

    writer.send_event = send_event  # type: ignore[assignment]
    intake.send_event = send_event  # type: ignore[assignment]

    original_handle = runner.handle_event

    def handle_event(ctx: Any, body: str) -> str:
        start = time.time()
        outcome = original_handle(ctx, body)
        event = ExperimentEvent.model_validate_json(body)
        key = f"{event.experiment_id}:{event.seq}:{event.type.value}"
        recorder.add({"t": "step", "key": key, "start": start, "end": time.time(), "outcome": outcome})
        return outcome

    runner.handle_event = handle_event  # type: ignore[assignment]


def main() -> None:
    install(Recorder(Path(os.environ["SOAK_LOG"])))
    from shared.cli import main as cli

    sys.argv = ["rapids-hpo", "serve", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
