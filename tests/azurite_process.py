"""An Azurite of a test's (or a bench's) own, on a folder it keeps: ``kill()`` stops it and ``start()``
opens the same folder on the same ports again, as a storage outage and its end look to a client."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.azurite import _azurite_binary, _free_port, _wait_for, azurite_args, connection_string


@dataclass
class Azurite:
    """Azurite on ``location``; ``kill()`` is SIGKILL, ``start()`` reopens the same folder and ports."""

    location: Path
    ports: dict[str, int] = field(default_factory=lambda: {k: _free_port() for k in ("blob", "queue", "table")})
    process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(**self.ports)

    def start(self) -> None:
        self.location.mkdir(parents=True, exist_ok=True)
        log = (self.location.parent / "azurite.log").open("ab")
        args = azurite_args(_azurite_binary(), str(self.location), self.ports)
        for attempt in range(3):  # a port of the last run may still be closing
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                for port in self.ports.values():
                    _wait_for(port, self.process)
                break
            except (RuntimeError, TimeoutError):
                self.kill()
                if attempt == 2:
                    raise
        log.close()

    def kill(self) -> None:
        """Stop it at once: SIGTERM (it closes its ports and saves its tables), SIGKILL after 10 s. Not
        SIGKILL first: Azurite saves its tables every few seconds (LokiJS), so SIGKILL loses writes it
        acknowledged, which Azure Storage never does."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
