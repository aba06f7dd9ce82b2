"""The processes a chaos run owns: Azurite on a folder of its own (killed and restarted on the same folder
and ports), host processes (``bench/chaos_host.py``: ``rapids-hpo serve`` with queue faults) restarted
when they die, as the Functions platform restarts an instance, and the experiments' driver processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.azurite import _free_port
from tests.azurite_process import Azurite

__all__ = ["Azurite", "Host", "Supervisor"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Host:
    """One host process (``bench/chaos_host.py`` or ``script``) on its own port."""

    index: int
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    script: str = "chaos_host.py"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.home / f"host-{self.index}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / self.script), "--port", str(self.port)],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class Supervisor:
    """Restarts hosts that died (after ``delay`` seconds), as the platform restarts an instance."""

    def __init__(self, hosts: list[Host], delay: float = 1.0) -> None:
        self.hosts = hosts
        self.delay = delay
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        for host in self.hosts:
            host.start()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.delay):
            for host in self.hosts:
                if not host.alive:
                    host.start()
                    self.restarts += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for host in self.hosts:
            host.stop()

    def any_url(self, rng: random.Random) -> str:
        alive = [h for h in self.hosts if h.alive] or self.hosts
        return rng.choice(alive).url


def wait_ready(url: str, key: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", headers={"x-functions-key": key}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def driver_processes(pid: int | None) -> tuple[psutil.Process | None, list[psutil.Process]]:
    """The driver process ``pid`` and its Dask worker processes (its python children), if alive."""
    if pid is None:
        return None, []
    try:
        driver = psutil.Process(pid)
        workers = [c for c in driver.children(recursive=True) if "python" in c.name().lower()]
        workers = [w for w in workers if "resource_tracker" not in " ".join(w.cmdline())]
        return driver, workers
    except psutil.Error:
        return None, []


def kill_group(pid: int) -> bool:
    try:
        os.killpg(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_process(process: psutil.Process) -> bool:
    try:
        process.kill()
        return True
    except psutil.Error:
        return False
