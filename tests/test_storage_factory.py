"""``open_store``/``open_queues`` pick the adapters the settings name: local with nothing set, Azure with
a connection string (Azurite) or an account name (managed identity; URLs checked without the network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.queues import AzureQueueService, LocalQueueService, open_queues
from shared.records import ExperimentRecord
from shared.store import AzureStore, LocalStore, open_store


def settings(home: Path, connection_string: str = "", account: str = "") -> Settings:
    return Settings(
        storage_connection_string=connection_string,
        storage_account_name=account,
        home=home,
        poll_seconds=10,
        stall_seconds=900,
    )


def test_nothing_set_means_local_adapters_under_home(tmp_path: Path) -> None:
    store = open_store(settings(tmp_path))
    queues = open_queues(settings(tmp_path))

    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "store"
    assert isinstance(queues, LocalQueueService)
    assert queues.path == tmp_path / "queues.sqlite3"
    store.create_experiment(ExperimentRecord(id="exp-1", name="n", spec={}))
    queues.queue("experiment-events").send("hi")
    assert (tmp_path / "store" / "store.sqlite3").is_file()
    assert open_queues(settings(tmp_path)).queue("experiment-events").count() == 1


def test_settings_from_the_environment_name_the_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read once, into Settings (at the edge), and the factories take them."""
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    monkeypatch.delenv("AzureWebJobsStorage__accountName", raising=False)
    monkeypatch.setenv("RAPIDS_HPO_HOME", str(tmp_path / "home"))

    store, queues = open_store(Settings.from_env()), open_queues(Settings.from_env())

    assert isinstance(store, LocalStore) and store.root == tmp_path / "home" / "store"
    assert isinstance(queues, LocalQueueService) and queues.path == tmp_path / "home" / "queues.sqlite3"


@pytest.mark.azurite
def test_connection_string_means_azure_adapters(tmp_path: Path, azurite: str) -> None:
    store = open_store(settings(tmp_path, connection_string=azurite, account="ignored"))
    queues = open_queues(settings(tmp_path, connection_string=azurite, account="ignored"))

    assert isinstance(store, AzureStore)
    assert isinstance(queues, AzureQueueService)
    created = store.create_experiment(ExperimentRecord(id="exp-factory", name="n", spec=None))
    assert store.get_experiment("exp-factory") == created
    queue = queues.queue("factory-check")
    queue.send("hi")
    assert [m.body for m in queue.receive()] == ["hi"]
    assert not (tmp_path / "store").exists()


def test_development_storage_shorthand_points_at_azurite_ports(tmp_path: Path) -> None:
    store = open_store(settings(tmp_path, connection_string="UseDevelopmentStorage=true"))
    queues = open_queues(settings(tmp_path, connection_string="UseDevelopmentStorage=true"))

    assert isinstance(store, AzureStore) and isinstance(queues, AzureQueueService)
    assert store.table_service.url.startswith("http://127.0.0.1:10002/devstoreaccount1")
    assert store.blob_service.url.startswith("http://127.0.0.1:10000/devstoreaccount1")
    assert queues.service.url.startswith("http://127.0.0.1:10001/devstoreaccount1")


def test_account_name_means_managed_identity_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "IDENTITY_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)

    store = open_store(settings(tmp_path, account="hpostore"))
    queues = open_queues(settings(tmp_path, account="hpostore"))

    assert isinstance(store, AzureStore) and isinstance(queues, AzureQueueService)
    assert store.table_service.url.rstrip("/") == "https://hpostore.table.core.windows.net"
    assert store.blob_service.url.rstrip("/") == "https://hpostore.blob.core.windows.net"
    assert queues.service.url.rstrip("/") == "https://hpostore.queue.core.windows.net"
    assert type(store.table_service.credential).__name__ == "DefaultAzureCredential"
    assert type(queues.service.credential).__name__ == "DefaultAzureCredential"
