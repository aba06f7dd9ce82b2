"""The ``EventQueue``/``QueueService`` adapters, ``open_queues`` (picks one from the settings) and
``move_to_poison``. ``AzureQueueService`` is imported lazily, like the store's Azure adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.config import POISON_SUFFIX, Settings
from shared.ports import EventQueue, Message, QueueService
from shared.queues._limits import MAX_MESSAGE_BYTES
from shared.queues.local import LocalQueue, LocalQueueService

if TYPE_CHECKING:
    from shared.queues.azure import AzureQueue, AzureQueueService

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AzureQueue",
    "AzureQueueService",
    "LocalQueue",
    "LocalQueueService",
    "move_to_poison",
    "open_queues",
    "poison_queue_name",
]


def __getattr__(name: str) -> Any:
    if name in {"AzureQueue", "AzureQueueService"}:
        from shared.queues import azure

        return getattr(azure, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def poison_queue_name(name: str) -> str:
    return name + POISON_SUFFIX


def move_to_poison(service: QueueService, queue: EventQueue, message: Message) -> None:
    """Send ``message``'s body to ``<queue>-poison``, then delete it from ``queue``.

    Copy first, delete second: a crash in between leaves a duplicate, never a loss. ``NotFound`` from the
    delete means the message was received again meanwhile (its receipt is stale); the copy stays.
    """
    service.queue(poison_queue_name(queue.name)).send(message.body)
    queue.delete(message)


def open_queues(settings: Settings) -> QueueService:
    """The queue service the settings name, by the rules of ``shared.store.open_store``; locally the
    SQLite file ``home/queues.sqlite3``."""
    if settings.storage_connection_string:
        from shared.queues.azure import AzureQueueService

        return AzureQueueService(connection_string=settings.storage_connection_string)
    if settings.storage_account_name:
        from azure.identity import DefaultAzureCredential

        from shared.queues.azure import AzureQueueService

        return AzureQueueService(
            account_url=f"https://{settings.storage_account_name}.queue.core.windows.net",
            credential=DefaultAzureCredential(),
        )
    return LocalQueueService(settings.home / "queues.sqlite3")
