"""CloudEvents on Event Grid: the control plane announces status changes, finished trials and each
improvement of the best trial (types in ``shared.events.catalog``).

- ``port``: the ``EventPublisher`` protocol, ``Event`` and ``PublishError``.
- ``eventgrid``: the Event Grid adapter (azure-eventgrid, imported on first publish).
- ``disabled``: the adapter when no topic is configured.
- ``announcer``: stages events on the record with each transition and flushes that outbox.

``open_announcer(settings)`` builds the announcer from :class:`shared.config.EventSettings` (read from
the environment once, at the edge): a topic endpoint turns events on, its key (a local or development
topic) or else the managed identity authenticates, the source names this control plane in each event.
"""

from __future__ import annotations

from shared.config import EventSettings
from shared.events.announcer import Announcer
from shared.events.disabled import DisabledPublisher
from shared.events.port import Event, EventPublisher, PublishError

__all__ = ["Announcer", "DisabledPublisher", "Event", "EventPublisher", "PublishError", "open_announcer"]


def open_publisher(settings: EventSettings) -> EventPublisher:
    if not settings.topic_endpoint:
        return DisabledPublisher()
    from shared.events.eventgrid import EventGridPublisher

    return EventGridPublisher.from_settings(settings.topic_endpoint, settings.topic_key)


def open_announcer(settings: EventSettings) -> Announcer:
    return Announcer(publisher=open_publisher(settings), source=settings.source)
