"""The Event Grid adapter: CloudEvents 1.0 to a topic through the azure-eventgrid SDK.

``EventGridPublisherClient`` posts ``application/cloudevents-batch+json`` to the topic endpoint
(``?api-version=2018-01-01``), with the ``aeg-sas-key`` header when given an access key, else a bearer
token from the managed identity (the identity needs "EventGrid Data Sender" on the topic). The SDK is
imported on the first publish, not at import time (Functions cold start). The SDK's own retries are
off: the caller owns the retry budget; each request has short connect and read timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.events.port import Event, PublishError

if TYPE_CHECKING:
    from azure.core.credentials import AzureKeyCredential, TokenCredential
    from azure.eventgrid import EventGridPublisherClient

TRANSPORT_OPTIONS = ("retry_total", "connection_timeout", "read_timeout")
"""Passed with each send: the basic-tier client takes no pipeline options at construction."""
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
PERMANENT_STATUS = frozenset({400, 413})
"""The topic refuses these events as such (malformed, too large): sending them again cannot help."""


class EventGridPublisher:
    """Publishes to one Event Grid topic (basic tier, CloudEvents 1.0 input schema)."""

    name = "eventgrid"
    delivers = True
    max_batch = 100
    """Event Grid takes up to 1 MB per request; our events are well under 10 KB each."""

    def __init__(
        self,
        endpoint: str,
        credential: AzureKeyCredential | TokenCredential,
        *,
        connection_timeout: float = 2.0,
        read_timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.credential = credential
        self.connection_timeout = connection_timeout
        self.read_timeout = read_timeout
        self._client: EventGridPublisherClient | None = None

    @classmethod
    def from_settings(cls, endpoint: str, key: str = "", **kwargs: Any) -> EventGridPublisher:
        """An access key for a local or development topic, else the managed identity."""
        if key:
            from azure.core.credentials import AzureKeyCredential

            return cls(endpoint, AzureKeyCredential(key), **kwargs)
        from azure.identity import DefaultAzureCredential

        return cls(endpoint, DefaultAzureCredential(), **kwargs)

    def _get_client(self) -> EventGridPublisherClient:
        if self._client is None:
            from azure.eventgrid import EventGridPublisherClient

            self._client = EventGridPublisherClient(self.endpoint, self.credential)
            _quiet_option_warnings()
        return self._client

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.core.messaging import CloudEvent

        batch = [
            CloudEvent(
                source=e.source,
                type=e.type,
                data=e.data,
                subject=e.subject,
                id=e.id,
                time=datetime.fromisoformat(e.time),
                datacontenttype="application/json",
            )
            for e in events
        ]
        try:
            self._get_client().send(
                batch,
                retry_total=0,
                connection_timeout=self.connection_timeout,
                read_timeout=self.read_timeout,
            )
        except (ServiceRequestError, ServiceResponseError) as exc:  # refused, reset, timed out
            raise PublishError(f"topic unreachable: {_short(exc)}", retryable=True) from exc
        except ClientAuthenticationError as exc:  # no token, or 401: a role can take minutes to apply
            raise PublishError(f"not authorized: {_short(exc)}", retryable=False, status=exc.status_code) from exc
        except HttpResponseError as exc:
            status = exc.status_code
            raise PublishError(
                f"topic answered {status}: {_short(exc)}",
                retryable=status in RETRYABLE_STATUS,
                permanent=status in PERMANENT_STATUS,
                status=status,
            ) from exc
        except Exception as exc:  # anything else the SDK raises is still a failed publish
            raise PublishError(f"publish failed: {type(exc).__name__}: {_short(exc)}", retryable=False) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _TransportOptionFilter(logging.Filter):
    """The basic-tier client hands the per-request options to its event model too, which logs a warning
    for each on every send ("... is not a known attribute ... and will be ignored"); drop those only."""

    def filter(self, record: logging.LogRecord) -> bool:
        ignored = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not ("is not a known attribute" in str(record.msg) and ignored in TRANSPORT_OPTIONS)


def _quiet_option_warnings() -> None:
    logger = logging.getLogger("azure.eventgrid._legacy._generated._serialization")
    if not any(isinstance(f, _TransportOptionFilter) for f in logger.filters):
        logger.addFilter(_TransportOptionFilter())


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]
