"""Pytest plugin: install (npm) and start the Azurite storage emulator on free ports for the session.

Tests that need Azure Storage take the ``azurite`` fixture (a connection string) and are marked
``azurite``; ``azure_store`` is an ``AzureStore`` there with tables and containers of its own, removed
after the test. Azurite is installed into ``.azurite/`` with npm if no ``azurite`` is on PATH.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.config import AZURITE_ACCOUNT as ACCOUNT
from shared.config import AZURITE_KEY as KEY
from shared.store import AzureStore

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PREFIX = ROOT / ".azurite"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _azurite_binary() -> str:
    local = LOCAL_PREFIX / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("Azurite is needed and npm is not installed to fetch it")
    LOCAL_PREFIX.mkdir(exist_ok=True)
    subprocess.run(
        [npm, "install", "--prefix", str(LOCAL_PREFIX), "--no-audit", "--no-fund", "azurite@3"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return str(local)


def _wait_for(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Azurite exited with status {process.returncode} before opening port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"Azurite did not open port {port} within {timeout} s")


def connection_string(blob: int, queue: int, table: int) -> str:
    base = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={base}:{blob}/{ACCOUNT};QueueEndpoint={base}:{queue}/{ACCOUNT};"
        f"TableEndpoint={base}:{table}/{ACCOUNT};"
    )


PORT_TAKEN = "EADDRINUSE"
"""What Azurite logs when a port it was given was taken between ``_free_port`` and its bind (another
process on the machine, another test session's servers among them): then it starts again on new ports."""


def azurite_args(binary: str, location: str, ports: dict[str, int]) -> list[str]:
    """Azurite's command line: data in ``location``, each service on 127.0.0.1 at its port."""
    args = [binary, "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--location", location]
    for service, port in ports.items():
        args += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port)]
    return args


def _start(binary: str, location: str) -> tuple[subprocess.Popen[bytes], dict[str, int], Path, IO[bytes]]:
    """Azurite on free ports, open on all three: (process, ports, log path, log); up to three tries when
    a port was taken meanwhile, a failure with Azurite's own words otherwise."""
    for attempt in range(3):
        ports = {"blob": _free_port(), "queue": _free_port(), "table": _free_port()}
        # Its output goes to a file (an unread pipe fills up and blocks Azurite), kept under .azurite/logs
        # so a failed run can be diagnosed after the data folder is gone.
        log_path = LOCAL_PREFIX / "logs" / f"azurite-{ports['blob']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("wb")
        # start_new_session: signals meant for the test run's process group do not reach it
        process = subprocess.Popen(
            azurite_args(binary, location, ports), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            for port in ports.values():
                _wait_for(port, process)
            return process, ports, log_path, log
        except (RuntimeError, TimeoutError) as exc:
            _stop(process)
            log.close()
            output = log_path.read_text(errors="replace")[-2000:]
            if attempt == 2 or PORT_TAKEN not in output:
                pytest.fail(f"{exc}\n{output}")
    raise AssertionError("unreachable: the last attempt returns or fails")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A running Azurite for the whole session; yields its connection string."""
    with tempfile.TemporaryDirectory(prefix="azurite-") as location:
        process, ports, log_path, log = _start(_azurite_binary(), location)
        try:
            yield connection_string(**ports)
            if process.poll() is not None:  # it died under the tests: say so, with its own words
                log.flush()
                output = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"Azurite exited with status {process.returncode} during the session:\n{output}")
        finally:
            _stop(process)
            log.close()


@pytest.fixture
def azure_store(azurite: str) -> Iterator[AzureStore]:
    """An ``AzureStore`` on the session's Azurite with its own tables and containers (removed after the test,
    the experiments' compute areas included)."""
    token = uuid.uuid4().hex[:8]
    store = AzureStore.from_connection_string(
        azurite, table_prefix=f"c{token}", container=f"art-{token}", secrets_container=f"sec-{token}"
    )
    yield store
    for table in store.table_names:
        store.table_service.delete_table(table)
    for container in store.blob_service.list_containers(name_starts_with=f"art-{token}"):
        store.blob_service.delete_container(container.name)
    with contextlib.suppress(ResourceNotFoundError):
        store.blob_service.delete_container(store.secrets_container_name)
