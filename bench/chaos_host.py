"""``rapids-hpo serve`` with faults injected at the queue boundary, for ``bench/chaos.py``.

    python -m bench.chaos_host --port P

The host is the real one (uvicorn, ``LocalHost`` workers, the same handlers as the Function App); two
things Azure Storage queues and the Functions host do to it are made to happen on every message:

- ``CHAOS_DUPLICATE_DELAY`` (seconds, > 0): every message sent to ``experiment-events`` or
  ``experiment-requests`` is sent twice, the copy delayed by a random 0..delay seconds, so some copies
  arrive after messages sent later (at-least-once delivery, out of order).
- ``CHAOS_CONTROL`` (a JSON file, read at each event send): with ``kill_after_write`` (a probability) set,
  a step's event send SIGKILLs this process first, i.e. right after the store write the event belongs to
  and before the queue send (the gap the sweep and the client's retry with its key close).

``CHAOS_SEED`` seeds both (with the pid, so restarted hosts do not repeat one another).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DUPLICATED_QUEUES = frozenset({"experiment-events", "experiment-requests"})


def kill_probability(control: Path | None) -> float:
    if control is None:
        return 0.0
    try:
        return float(json.loads(control.read_text()).get("kill_after_write", 0.0))
    except (OSError, ValueError):
        return 0.0


def install_faults(duplicate_delay: float, control: Path | None, seed: int) -> None:
    """Patch the queue adapter's send and the state machine's event send (this process only)."""
    from shared.handlers import intake, writer
    from shared.queues.azure import AzureQueue

    rng = random.Random(seed)
    if duplicate_delay > 0:
        original_send = AzureQueue.send

        def send_twice(self: AzureQueue, body: str, delay_seconds: int = 0) -> None:
            original_send(self, body, delay_seconds)
            if self.name in DUPLICATED_QUEUES:
                original_send(self, body, delay_seconds + int(rng.uniform(0, duplicate_delay)))

        AzureQueue.send = send_twice  # type: ignore[method-assign]
    if control is not None:
        original_event = writer.send_event

        def send_or_die(*args: object, **kwargs: object) -> None:
            if rng.random() < kill_probability(control):
                os.kill(os.getpid(), signal.SIGKILL)  # the write is committed, its event never sent
            original_event(*args, **kwargs)  # type: ignore[arg-type]

        writer.send_event = send_or_die  # type: ignore[assignment]
        intake.send_event = send_or_die  # type: ignore[assignment]


def main() -> None:
    install_faults(
        float(os.environ.get("CHAOS_DUPLICATE_DELAY", "0")),
        Path(os.environ["CHAOS_CONTROL"]) if os.environ.get("CHAOS_CONTROL") else None,
        int(os.environ.get("CHAOS_SEED", "0")) * 1_000_003 + os.getpid(),
    )
    from shared.cli import main as cli

    sys.argv = ["rapids-hpo", "serve", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
