"""One driver per experiment on this machine, whoever started it: a lock the kernel holds for the process.

Two hosts can handle the same POLL (a message delivered twice, one host slow past the visibility
timeout): each sees the recorded driver dead and starts one. Only one of their handle writes wins, so
the other driver would run unrecorded beside it: two data checks, two refits, duplicate events, and a
process that teardown never kills. So a driver first takes an exclusive ``flock`` on its experiment's
lock file and writes its pid there; a second driver of the same experiment finds it taken and exits.
The kernel drops the lock when the process dies (however it dies), so "the lock is held" is the
liveness test, and the file names the process to adopt or kill. The file descriptor is not inherited
(Python opens files close-on-exec; Dask starts its workers by spawning), so a worker left behind cannot
keep a dead driver "alive".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ACQUIRE_WAIT_S = 3.0
"""How long a starting driver tries for the lock: a probe (:func:`holder`) holds it for microseconds."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    state, start = fields[0], fields[19]
    return None if state == "Z" else start


@dataclass(frozen=True)
class Holder:
    """The driver process holding an experiment's lock (``pid`` None: held, but the holder has not
    written its pid yet)."""

    pid: int | None = None
    pid_start: str | None = None


def acquire(path: Path, wait_s: float = ACQUIRE_WAIT_S) -> IO[str] | None:
    """Take the lock for this process (keep the returned file open for its life), or None if another
    process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)
    pid = os.getpid()
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": pid, "pid_start": process_start_time(pid)}))
    handle.flush()
    return handle


def holder(path: Path) -> Holder | None:
    """Who holds the lock (None: nobody; the driver is not running)."""
    try:
        probe = path.open("r")
    except FileNotFoundError:
        return None
    with probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: read who holds it
        else:
            fcntl.flock(probe, fcntl.LOCK_UN)
            return None
        with contextlib.suppress(ValueError, TypeError, KeyError):
            written = json.loads(probe.read() or "null")
            pid, start = int(written["pid"]), str(written["pid_start"])
            if process_start_time(pid) == start:
                return Holder(pid, start)
    return Holder()
