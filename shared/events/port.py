"""The event-publisher port: send CloudEvents 1.0 to a topic.

An adapter sends one batch at a time, all or nothing, and says how it failed through ``PublishError``
(``retryable``: try again now; ``permanent``: the topic refuses these events and always will). It does
not retry itself: the caller (``shared.events.announcer``) owns the retry budget, so one slow topic
never holds a state-machine step for longer than that budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

SPEC_VERSION = "1.0"


@dataclass(frozen=True)
class Event:
    """One CloudEvent. ``id`` is deterministic, so a re-sent event carries the id subscribers saw."""

    id: str
    type: str
    source: str
    subject: str
    time: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The CloudEvents structured JSON form (what the outbox keeps and the topic receives)."""
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.data,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Event:
        return cls(
            id=document["id"],
            type=document["type"],
            source=document["source"],
            subject=document["subject"],
            time=document["time"],
            data=dict(document.get("data") or {}),
        )


class PublishError(Exception):
    """The topic did not accept a batch."""

    def __init__(self, message: str, *, retryable: bool, permanent: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.permanent = permanent
        self.status = status


@runtime_checkable
class EventPublisher(Protocol):
    """Sends CloudEvents to one topic.

    ``delivers`` is False for an adapter that drops everything by design (no topic configured): the
    state machine then stages nothing, so an unconfigured deployment pays no extra write.
    ``max_batch`` is the most events one ``publish`` call may carry.
    """

    name: str
    delivers: bool
    max_batch: int

    def publish(self, events: Sequence[Event]) -> None:
        """Send ``events`` as one batch, in order; an empty batch sends nothing.

        Raise ``PublishError`` if the topic did not accept the batch (nothing else: every transport
        failure is translated). Never blocks longer than the adapter's own request timeouts.
        """
