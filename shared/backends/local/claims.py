"""One driver per experiment: each start of a driver is claimed (a numbered generation) before it starts.

Two hosts can run one step at once (a POLL or SUBMIT_RUN delivered twice, or handled past its visibility
timeout): each finds no live driver and would start one, and only one of their record writes wins, so the
other driver would run unrecorded beside it (two data checks, two refits, a CloudEvent lost; found by
``bench/chaos.py``). So a host that would start a driver first *claims* the next generation of the
experiment's driver: it creates ``<home>/drivers/<experiment id>/<generation>.json`` exclusively
(``O_CREAT | O_EXCL``). Two hosts that saw the same state race for the same number and one create wins;
only the winner starts a driver, and it writes the driver's pid into the claim; the loser (and any later
step whose record missed the winner's write) adopts the driver the claim names.

Why a claim file and not a lock or the experiment record:

* A lock held for the process's life (the reverted ``flock`` design) says "running" for as long as the
  kernel keeps the open file, which is not as long as the process lives: a SIGKILLed driver's leader shows
  as a zombie (dead to ``/proc``) while its other threads still exit and hold the lock (measured: ~0.1 s
  idle, longer under load), so a poll saw "lock held, pid dead". A claim is never released by a process
  dying: liveness is only ever the pid and its kernel start time, as before, and the claim says *which*
  process to look at.
* The record is written once per step, by the state machine (:func:`shared.handlers.machine.transition`);
  a backend that wrote it inside ``poll`` to claim would make its own step's write lose.
* The local backend's drivers are processes of this machine (their liveness is a pid here), so the claims
  live beside their logs in the home every host of this backend shares; nothing is tied to a lifetime.

The driver checks at start, and before each write, that no newer generation was claimed; a superseded one
stops at once (:func:`shared.backends.local.driver.main`). Teardown claims a final generation, so a driver
a host starts after it (its claim was taken just before) stops at its first check.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_GRACE_S = 60.0
"""How long a claim without a pid counts as "its host is starting the driver"; older, its host died between
the claim and the start, and the driver counts as dead (restarted, within ``MAX_DRIVER_RESTARTS``)."""
ADOPT_WAIT_S = 5.0
"""How long a host that lost a claim waits for the winner to write its driver's pid."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), or None if no such process or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    state, start = fields[0], fields[19]
    return None if state == "Z" else start


@dataclass(frozen=True)
class Claim:
    """One generation of an experiment's driver: its process once started; ``final``: teardown's, after
    which no driver runs."""

    generation: int
    pid: int | None = None
    pid_start: str | None = None
    claimed_at: float = 0.0
    final: bool = False

    @property
    def alive(self) -> bool:
        return self.pid is not None and process_start_time(self.pid) == self.pid_start

    def starting(self) -> bool:
        """Claimed by a host that has not written the driver's pid yet, recently enough to wait for it."""
        return self.pid is None and not self.final and time.time() - self.claimed_at < START_GRACE_S


class DriverClaims:
    """An experiment's claims, ``<root>/<experiment id>/<generation>.json``."""

    def __init__(self, root: Path, experiment_id: str) -> None:
        self.root = root
        self.folder = root / experiment_id

    def _path(self, generation: int) -> Path:
        return self.folder / f"{generation}.json"

    def take(self, generation: int, *, final: bool = False) -> bool:
        """Claim ``generation``: True for the one caller that created it, False if it was taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(self._path(generation), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as claim:
            claim.write(json.dumps({"final": True}) if final else "")
        return True

    def started(self, generation: int, pid: int, pid_start: str | None) -> None:
        """Name the claim's driver process (replaced whole: a reader sees the claim before or after)."""
        descriptor, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{generation}.", suffix=".tmp")
        with os.fdopen(descriptor, "w") as claim:
            claim.write(json.dumps({"pid": pid, "pid_start": pid_start}))
        os.replace(temporary, self._path(generation))

    def read(self, generation: int) -> Claim | None:
        path = self._path(generation)
        try:
            claimed_at, text = path.stat().st_mtime, path.read_text()
        except OSError:
            return None
        document: dict[str, object] = {}
        with contextlib.suppress(ValueError):
            loaded = json.loads(text or "{}")
            document = loaded if isinstance(loaded, dict) else {}
        pid, start = document.get("pid"), document.get("pid_start")
        return Claim(
            generation,
            pid if isinstance(pid, int) else None,
            start if isinstance(start, str) else None,
            claimed_at,
            document.get("final") is True,
        )

    def generations(self) -> list[int]:
        """The generations claimed so far, in order."""
        with contextlib.suppress(OSError):
            names = (name.removesuffix(".json") for name in os.listdir(self.folder) if name.endswith(".json"))
            return sorted(int(name) for name in names if name.isdigit())
        return []

    def latest(self) -> Claim | None:
        """The newest claim: the only driver that may run."""
        generations = self.generations()
        return self.read(generations[-1]) if generations else None

    def live(self) -> list[Claim]:
        """Every claim whose driver process still runs (at most one but while a superseded one stops)."""
        claims = (self.read(generation) for generation in self.generations())
        return [claim for claim in claims if claim is not None and claim.alive]

    def wait_started(self, generation: int, wait_s: float = ADOPT_WAIT_S) -> Claim | None:
        """The claim of ``generation`` once its driver's pid is written (or as it is after ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        claim = self.read(generation)
        while claim is not None and claim.pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
            claim = self.read(generation)
        return claim
