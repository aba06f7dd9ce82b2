"""CloudEvents on Event Grid: the control plane announces status changes, finished trials and each
improvement of the best trial (types in ``shared.events.catalog``).

- ``port``: the ``EventPublisher`` protocol, ``Event`` and ``PublishError``.
- ``eventgrid``: the Event Grid adapter (azure-eventgrid, imported on first publish).
- ``disabled``: the adapter when no topic is configured.
- ``announcer``: stages events on the record with each transition and flushes that outbox.

``open_announcer()`` builds the announcer from the environment: ``EVENTGRID_TOPIC_ENDPOINT`` turns
events on, ``EVENTGRID_TOPIC_KEY`` (a local or development topic) or else the managed identity
authenticates, ``RAPIDS_HPO_EVENTS_SOURCE`` names this control plane in each event's ``source``.
"""

from __future__ import annotations

from shared.config import env
from shared.events.announcer import Announcer
from shared.events.disabled import DisabledPublisher
from shared.events.port import Event, EventPublisher, PublishError

__all__ = ["Announcer", "DisabledPublisher", "Event", "EventPublisher", "PublishError", "open_announcer"]


def open_publisher() -> EventPublisher:
    endpoint = env("EVENTGRID_TOPIC_ENDPOINT")
    if not endpoint:
        return DisabledPublisher()
    from shared.events.eventgrid import EventGridPublisher

    return EventGridPublisher.from_settings(endpoint, env("EVENTGRID_TOPIC_KEY"))


def open_announcer() -> Announcer:
    return Announcer(publisher=open_publisher(), source=env("RAPIDS_HPO_EVENTS_SOURCE"))
