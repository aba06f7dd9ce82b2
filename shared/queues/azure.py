"""``EventQueue`` on Azure Storage queues (azure-storage-queue), bodies as base64 text.

Base64 is what the Functions queue trigger expects by default, so messages sent here trigger functions
and messages the host moves to ``<name>-poison`` can be read back here.
"""

from __future__ import annotations

import contextlib
import threading

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.config import expand_connection_string
from shared.errors import NotFound
from shared.http_pool import pooled_transport
from shared.ports import Message
from shared.queues._limits import check_queue_name, check_receive, check_send


class AzureQueueService:
    """``QueueService`` on a storage account: from a connection string (Azurite's included), or from an
    account URL and a credential (managed identity). Queues are created on first use."""

    def __init__(
        self,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: TokenCredential | str | None = None,
    ) -> None:
        if connection_string:
            expanded = expand_connection_string(connection_string)
            self.service = QueueServiceClient.from_connection_string(expanded, transport=pooled_transport())
        elif account_url:
            self.service = QueueServiceClient(account_url, credential=credential, transport=pooled_transport())
        else:
            raise ValueError("AzureQueueService needs a connection string or an account URL")
        self._queues: dict[str, AzureQueue] = {}
        self._lock = threading.Lock()

    def queue(self, name: str) -> AzureQueue:
        """The queue ``name``, created on first use; one client per queue for the process."""
        queue = self._queues.get(name)
        if queue is not None:
            return queue
        with self._lock:
            if name not in self._queues:
                client = self.service.get_queue_client(
                    check_queue_name(name),
                    message_encode_policy=TextBase64EncodePolicy(),
                    message_decode_policy=TextBase64DecodePolicy(),
                )
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                self._queues[name] = AzureQueue(name, client)
            return self._queues[name]


class AzureQueue:
    """One Azure Storage queue."""

    def __init__(self, name: str, client: QueueClient) -> None:
        self.name = name
        self.client = client

    def send(self, body: str, delay_seconds: int = 0) -> None:
        check_send(body, delay_seconds)
        self.client.send_message(body, visibility_timeout=delay_seconds or None)

    def receive(self, max_messages: int = 16, visibility_timeout: int = 30) -> list[Message]:
        check_receive(max_messages, visibility_timeout)
        received = self.client.receive_messages(
            messages_per_page=max_messages, max_messages=max_messages, visibility_timeout=visibility_timeout
        )
        return [Message(m.id, str(m.pop_receipt), m.content, m.dequeue_count or 0) for m in received]

    def delete(self, message: Message) -> None:
        try:
            self.client.delete_message(message.id, message.receipt)
        except HttpResponseError as exc:
            # 404: the message is gone; 400 PopReceiptMismatch: it was received again since.
            if exc.status_code == 404 or getattr(exc, "error_code", None) == "PopReceiptMismatch":
                raise NotFound(f"message {message.id!r} of queue {self.name!r} is gone or was received again") from None
            raise

    def count(self) -> int:
        return self.client.get_queue_properties().approximate_message_count or 0
