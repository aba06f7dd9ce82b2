"""The fault kinds of a chaos run: each a loop that hits the running control plane until told to stop.

Every loop takes a seeded ``random.Random`` and counts what it did in ``Faults.counts`` and when it last
did it (``Faults.last``), which the report turns into "time from the last fault to the last experiment
ending". The loops are the faults Azure produces (see ``bench/chaos.py``).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos_procs import Azurite, Supervisor, driver_processes, kill_group, kill_process
from shared.context import Context
from shared.handlers import handle_event, sweep
from shared.records import ExperimentStatus
from tests.topic_receiver import TopicReceiver

POISON_BODIES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: "not json " + str(r.random()),
    lambda r: json.dumps({"type": "EXPLODE", "experiment_id": "x", "seq": 1}),
    lambda r: json.dumps({"type": "POLL", "experiment_id": "../../etc", "seq": r.randint(0, 9)}),
    lambda r: json.dumps({"type": "POLL", "experiment_id": "x", "seq": 10**400}),
    lambda r: "[" * r.randint(1, 3000),
    lambda r: json.dumps({"spec": {"name": 7}}),
    lambda r: "\x00\x01" + "é" * r.randint(0, 100),
)


@dataclass
class Faults:
    """Shared state of the fault loops of one segment."""

    ctx: Context
    azurite: Azurite
    supervisor: Supervisor
    receiver: TopicReceiver
    control: Path
    experiment_ids: Callable[[], list[str]]
    rng: random.Random
    counts: Counter[str] = field(default_factory=Counter)
    last: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    driver_kills: Counter[str] = field(default_factory=Counter)
    unplanned: Counter[str] = field(default_factory=Counter)
    """What died without a fault of ours (another process on the machine killed Azurite): restarted."""
    azurite_down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n
            self.last = time.monotonic()

    def wait(self, low: float, high: float) -> bool:
        """Sleep a random while; True when the segment is over."""
        return self.stop.wait(self.rng.uniform(low, high))

    def running(self) -> list[tuple[str, int]]:
        """(experiment id, driver pid) of this segment's RUNNING experiments with a live driver."""
        found = []
        for experiment_id in self.experiment_ids():
            with contextlib.suppress(Exception):
                record = self.ctx.store.get_experiment(experiment_id)
                pid = record.backend_state.get("pid")
                if record.status is ExperimentStatus.RUNNING and driver_processes(pid)[0] is not None:
                    found.append((experiment_id, pid))
        return found

    # --- the loops ---------------------------------------------------------------------------------
    def azurite_outage(self) -> None:
        """SIGKILL Azurite, leave it down 5-60 s, restart it on the same folder and ports."""
        while not self.wait(15, 40):
            self.azurite_down = True
            self.azurite.kill()
            self.hit("azurite_kill")
            self.stop.wait(self.rng.uniform(5, 60))
            self.azurite.start()
            self.azurite_down = False
            self.hit("azurite_restart")

    def watchdog(self) -> None:
        """Restart Azurite if it died outside an outage of ours (counted apart, not as a fault)."""
        while not self.stop.wait(2):
            if not self.azurite_down and not self.azurite.alive:
                self.unplanned["azurite died"] += 1
                with contextlib.suppress(Exception):
                    self.azurite.start()

    def host_kill(self) -> None:
        """SIGKILL a host mid-step every few seconds; meanwhile each host kills itself after 5% of its
        store writes, before the write's queue send."""
        self.control.write_text(json.dumps({"kill_after_write": 0.05}))
        try:
            while not self.wait(4, 12):
                host = self.rng.choice(self.supervisor.hosts)
                if host.alive:
                    host.kill()
                    self.hit("host_sigkill")
        finally:
            self.control.write_text(json.dumps({"kill_after_write": 0.0}))

    def driver_kill(self) -> None:
        """SIGKILL a RUNNING experiment's driver and its LocalCluster (at most twice per experiment: the
        local backend restarts a driver twice, then fails the run, by design)."""
        while not self.wait(6, 15):
            candidates = [(e, p) for e, p in self.running() if self.driver_kills[e] < 2]
            if candidates:
                experiment_id, pid = self.rng.choice(candidates)
                if kill_group(pid):
                    self.driver_kills[experiment_id] += 1
                    self.hit("driver_sigkill")

    def worker_kill(self) -> None:
        """SIGKILL one Dask worker process of a RUNNING experiment (its nanny starts another)."""
        while not self.wait(3, 8):
            candidates = self.running()
            if candidates:
                _, pid = self.rng.choice(candidates)
                _, workers = driver_processes(pid)
                if workers and kill_process(self.rng.choice(workers)):
                    self.hit("worker_sigkill")

    def poison(self, total: int = 1000) -> None:
        """``total`` malformed messages, a few at a time, interleaved with the good ones on both queues."""
        sent = 0
        while sent < total and not self.stop.is_set():
            for _ in range(min(25, total - sent)):
                queue = self.ctx.events if self.rng.random() < 0.7 else self.ctx.requests
                body = self.rng.choice(POISON_BODIES)(self.rng)
                try:
                    queue.send(body[:40000])
                except Exception:
                    continue  # Azurite may be down in the "all" segment
                sent += 1
                self.hit("poison_message")
            self.wait(0.1, 0.4)

    def concurrent_sweep(self) -> None:
        """The timer's sweep, with a 10 s stall threshold, run again and again beside the handlers."""
        while not self.wait(0.2, 1.5):
            with contextlib.suppress(Exception):
                sweep(self.ctx, stall_seconds=10)
                self.hit("sweep_run")

    def late_delivery(self) -> None:
        """Take event messages with a 2 s visibility timeout and handle them 3 s later (a slow instance):
        by then the message is visible again and another host handles it too."""
        while not self.wait(0.5, 2.0):
            try:
                messages = self.ctx.events.receive(8, 2)
            except Exception:
                continue
            self.stop.wait(3)
            for message in messages:
                with contextlib.suppress(Exception):
                    handle_event(self.ctx, message.body)
                    self.hit("late_delivery")
                with contextlib.suppress(Exception):
                    self.ctx.events.delete(message)

    def eventgrid_outage(self) -> None:
        """Close the topic's port for 20-90 s, open it again."""
        while not self.wait(10, 30):
            self.receiver.stop()
            self.hit("eventgrid_down")
            self.stop.wait(self.rng.uniform(20, 90))
            self.receiver.start()
            self.hit("eventgrid_up")


KINDS: dict[str, tuple[str, ...]] = {
    "duplicate+late": ("late_delivery",),
    "azurite": ("azurite_outage",),
    "host_kill": ("host_kill",),
    "driver_kill": ("driver_kill",),
    "worker_kill": ("worker_kill",),
    "poison": ("poison",),
    "sweep": ("concurrent_sweep",),
    "eventgrid": ("eventgrid_outage",),
    "all": (
        "late_delivery",
        "azurite_outage",
        "host_kill",
        "driver_kill",
        "worker_kill",
        "poison",
        "concurrent_sweep",
        "eventgrid_outage",
    ),
}
"""Segment kind -> its loops. Every segment also has every queue message sent twice (``chaos_host``)."""


def start_loops(faults: Faults, kind: str) -> list[threading.Thread]:
    names = (*KINDS[kind], "watchdog")
    threads = [threading.Thread(target=getattr(faults, name), name=name, daemon=True) for name in names]
    for thread in threads:
        thread.start()
    return threads
