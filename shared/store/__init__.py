"""The ``Store`` adapters and ``open_store``, which picks one from the settings.

``LocalStore`` (SQLite + folder) needs nothing; ``AzureStore`` (Table + Blob Storage) is imported lazily
so that code paths that never touch Azure do not pay for its SDKs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.ports import Store
from shared.store._common import MAX_PAGE_TOKEN_CHARS
from shared.store.local import LocalStore

if TYPE_CHECKING:
    from shared.store.azure import AzureStore

__all__ = ["MAX_PAGE_TOKEN_CHARS", "AzureStore", "LocalStore", "open_store"]


def __getattr__(name: str) -> Any:
    if name == "AzureStore":
        from shared.store.azure import AzureStore

        return AzureStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(settings: Settings) -> Store:
    """The store the settings name: a connection string (Azurite's included) beats an account name
    (managed identity via ``DefaultAzureCredential``); with neither, a ``LocalStore`` under ``home``."""
    if settings.storage_connection_string:
        from shared.store.azure import AzureStore

        return AzureStore.from_connection_string(settings.storage_connection_string)
    if settings.storage_account_name:
        from azure.identity import DefaultAzureCredential

        from shared.store.azure import AzureStore

        return AzureStore.from_account(settings.storage_account_name, DefaultAzureCredential())
    return LocalStore(settings.home / "store")
