"""Shared fixtures. Azurite fixtures live in tests/azurite.py (a pytest plugin).

The suite can never reach a real Azure subscription: every ``AZURE_*``/``AZUREML_*`` variable and the
managed-identity and hosting variables are removed from the process before any test or fixture runs, and
again before each test; the Azure CLI's login is hidden behind an empty ``AZURE_CONFIG_DIR``. A test that
needs one of them sets it itself with ``monkeypatch``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.azurite"]

SCRUBBED_PREFIXES = ("AZURE_", "AZUREML_", "AZUREWEBJOBS", "ARM_", "MSI_", "IDENTITY_")
"""Credentials, subscriptions, storage and endpoints of the Azure SDKs, azure-identity, the Functions host
and the Azure CLI (compared upper-cased)."""
SCRUBBED_NAMES = ("WEBSITE_SITE_NAME", "RAPIDS_HPO_HOSTED", "RAPIDS_HPO_FUNCTION_KEY")
_EMPTY_AZURE_CONFIG = tempfile.mkdtemp(prefix="no-azure-login-")


def scrubbed_names(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The variables of ``environ`` the suite removes."""
    return [name for name in environ if name.upper().startswith(SCRUBBED_PREFIXES) or name in SCRUBBED_NAMES]


def _scrub() -> None:
    for name in scrubbed_names(os.environ):
        del os.environ[name]
    os.environ["AZURE_CONFIG_DIR"] = _EMPTY_AZURE_CONFIG  # `az login` elsewhere stays invisible


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
