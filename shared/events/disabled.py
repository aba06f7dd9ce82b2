"""The adapter used when no topic is configured (``EVENTGRID_TOPIC_ENDPOINT`` unset): sends nothing."""

from __future__ import annotations

from collections.abc import Sequence

from shared.events.port import Event


class DisabledPublisher:
    """Accepts every batch and drops it; ``delivers`` is False, so nothing is staged for it."""

    name = "disabled"
    delivers = False
    max_batch = 1000

    def publish(self, events: Sequence[Event]) -> None:
        return None
