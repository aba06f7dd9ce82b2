"""Shared fixtures: the ones several test files take (Azurite's live in tests/azurite.py, a pytest plugin).

A fixture defined here is the one meaning of its name across the suite; a file that needs another kind
of ``ctx`` or ``store`` defines its own, which overrides this one for that file. Fakes are in
``tests/fakes/``, the conformance suites and their harnesses in ``tests/conformance/``.

The suite can never reach a real Azure subscription: every ``AZURE_*``/``AZUREML_*`` variable and the
managed-identity and hosting variables are removed from the process before any test or fixture runs, and
again before each test; the Azure CLI's login is hidden behind an empty ``AZURE_CONFIG_DIR``. A test that
needs one of them sets it itself with ``monkeypatch``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

if TYPE_CHECKING:
    from distributed import Client

    from shared.context import Context
    from shared.store.local import LocalStore
    from tests.arm_server import FakeArm
    from tests.token_issuer import TokenIssuer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.azurite", "tests.pytest_tracebacks"]

SCRUBBED_PREFIXES = ("AZURE_", "AZUREML_", "AZUREWEBJOBS", "ARM_", "MSI_", "IDENTITY_")
"""Credentials, subscriptions, storage and endpoints of the Azure SDKs, azure-identity, the Functions host
and the Azure CLI (compared upper-cased)."""
SCRUBBED_NAMES = (
    "WEBSITE_SITE_NAME",
    "WEBSITE_HOSTNAME",
    "RAPIDS_HPO_HOSTED",
    "RAPIDS_HPO_FUNCTION_KEY",
    "RAPIDS_HPO_ALLOWED_HOSTS",
    "WEBSITE_AUTH_ENABLED",
    "RAPIDS_HPO_AUTH",
    "RAPIDS_HPO_AUTH_TENANT_ID",
    "RAPIDS_HPO_AUTH_CLIENT_ID",
    "RAPIDS_HPO_AUTH_AUDIENCE",
    "RAPIDS_HPO_AUTH_AUTHORITY",
    "RAPIDS_HPO_READERS_SEE",
    "RAPIDS_HPO_API_SCOPE",
)
_EMPTY_AZURE_CONFIG = tempfile.mkdtemp(prefix="no-azure-login-")
_STATE_DIR = tempfile.mkdtemp(prefix="rapids-hpo-state-")
"""Where the suite's `serve` processes leave their keys: never the user's own state folder."""


def scrubbed_names(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The variables of ``environ`` the suite removes."""
    return [name for name in environ if name.upper().startswith(SCRUBBED_PREFIXES) or name in SCRUBBED_NAMES]


def _scrub() -> None:
    for name in scrubbed_names(os.environ):
        del os.environ[name]
    os.environ["AZURE_CONFIG_DIR"] = _EMPTY_AZURE_CONFIG  # `az login` elsewhere stays invisible
    os.environ["RAPIDS_HPO_STATE_DIR"] = _STATE_DIR


SESSION_STARTED = time.time()
"""When this test process began (processes created since, that name this checkout, are the run's own)."""


def pytest_configure(config: pytest.Config) -> None:
    """Before session fixtures and subprocesses inherit the environment."""
    _scrub()


@pytest.fixture(autouse=True)
def _no_real_azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without Azure credentials, whatever an earlier test left behind."""
    for name in scrubbed_names(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_CONFIG_DIR", _EMPTY_AZURE_CONFIG)
    yield


# ------------------------------------------------------------------------------ shared fixtures
# Imported inside each fixture: a run that takes none of them does not pay for Dask's or an SDK's import.


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Client]:
    """A real Dask LocalCluster, two single-threaded worker processes, shared by every test that takes it
    (one start-up per run, not one per module): a test that restarts or kills a worker waits for two
    again before it ends, and each experiment has an id of its own (``tests.test_hpo_driver.new_experiment``)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """A ``LocalStore`` in the test's own folder."""
    from shared.store.local import LocalStore

    return LocalStore(tmp_path / "store")


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    """The control plane over local adapters in the test's own folder (store, queues; polls not delayed)."""
    from tests.control_plane import local_context

    return local_context(tmp_path)


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    """The ARM stand-in (``tests/arm_server.py``) with no role assignments enforced."""
    from tests.arm_server import FakeArm

    with FakeArm() as server:
        yield server


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    """The Entra ID stand-in (``tests/token_issuer.py``), serving its OpenID metadata and keys over HTTP."""
    from tests.token_issuer import TokenIssuer

    with TokenIssuer().serving() as served:
        yield served


INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
"""Helpers multiprocessing starts once per interpreter; they exit with it (after this hook), so they are no leak."""

LEFTOVER_GRACE_S = 10.0
"""How long processes the suite started may take to exit after the last fixture's teardown."""


def leftover_processes(grace_s: float) -> list[psutil.Process]:
    """Descendants of this test process still alive ``grace_s`` after the session's teardown.

    Each fixture that starts a process (Azurite, Dask clusters, a driver, a stand-in VM) must stop it; one
    that leaks leaves a Dask Nanny and its worker running for as long as the machine stays up. The
    teardown of session fixtures has run when the check runs (after pytest's own ``pytest_sessionfinish``,
    which tears them down in an interrupted run), so anything still here was left behind (processes that
    are exiting get the grace period). A process whose parent died first is no descendant any more (it
    belongs to init), so the run's orphans are found too: started since this run began, with this checkout
    in their command line (its virtual environments, its stand-in VMs' Python).
    """
    mine = {child.pid: child for child in psutil.Process().children(recursive=True)}
    mine.update((orphan.pid, orphan) for orphan in _orphans_of_this_run())
    candidates = [process for process in mine.values() if not _interpreter_helper(process)]
    _gone, alive = psutil.wait_procs(candidates, timeout=grace_s)
    return alive


def _orphans_of_this_run() -> list[psutil.Process]:
    me = psutil.Process()
    ours = {me.pid, *(ancestor.pid for ancestor in me.parents())}
    return [
        process
        for process in psutil.process_iter(["create_time", "cmdline"])
        if process.pid not in ours
        and (process.info["create_time"] or 0) >= SESSION_STARTED
        and names_checkout(process.info["cmdline"] or (), ROOT)
    ]


def names_checkout(cmdline: list[str] | tuple[str, ...], root: Path) -> bool:
    """Whether a command line names ``root`` or a path inside it: the path whole, not a piece of a longer one
    (``/tmp/me`` is not inside ``/tmp/me2``, and ``/work/main`` is not in ``/tmp/check/work/main``)."""
    whole = re.compile(rf"(?<![\w./-]){re.escape(str(root))}(?![\w.-])")
    return any(whole.search(part) for part in cmdline)


def _interpreter_helper(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return any(helper in command for helper in INTERPRETER_HELPERS)


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}: (exited)"


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[None]:
    """Fail the run, and kill what is left, when a test leaves a process behind. It checks after every other
    ``pytest_sessionfinish``: an interrupted run (an INTERNALERROR, Ctrl-C) tears its session fixtures down
    there, and a check before that would kill (and blame) the session's own Azurite."""
    yield
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller checks, after every worker
        return
    alive = leftover_processes(LEFTOVER_GRACE_S)
    if not alive:
        return
    report = "\n".join(_describe(process) for process in alive)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    session.config.pluginmanager.get_plugin("terminalreporter").write_line(  # type: ignore[union-attr]
        f"\nFAILED: {len(alive)} process(es) started by the tests outlived them (killed now):\n{report}", red=True
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
