"""The local host: runs the queue-triggered handlers the way the Functions host does.

Receives from ``experiment-requests`` and ``experiment-events``, calls the same handlers as
``function_app.py``, deletes a message on success, leaves it to reappear after the visibility timeout
on failure, and moves it to ``<queue>-poison`` after ``MAX_DEQUEUE_COUNT`` failed deliveries (as
``host.json``'s ``maxDequeueCount``). Runs the sweep on a timer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from shared.config import MAX_DEQUEUE_COUNT
from shared.context import Context
from shared.errors import NotFound
from shared.handlers import handle_event, sweep, take_request_message
from shared.ports import EventQueue, Message
from shared.queues import move_to_poison

log = logging.getLogger(__name__)


class LocalHost:
    """A single-threaded queue-trigger loop over a ``Context``."""

    def __init__(
        self,
        ctx: Context,
        *,
        visibility_timeout: int = 30,
        sweep_interval: float = 60.0,
        batch_size: int = 16,
    ) -> None:
        self.ctx = ctx
        self.visibility_timeout = visibility_timeout
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self._last_sweep = time.monotonic()
        self._stop = threading.Event()
        self.failures: list[tuple[str, str]] = []

    def _drain(self, queue: EventQueue, handler: Callable[[Message], object]) -> int:
        handled = 0
        for message in queue.receive(self.batch_size, self.visibility_timeout):
            handled += 1
            try:
                handler(message)
            except Exception as exc:
                self.failures.append((queue.name, f"{type(exc).__name__}: {exc}"))
                log.warning(
                    "%s message %s failed (delivery %d): %s", queue.name, message.id, message.dequeue_count, exc
                )
                if message.dequeue_count >= MAX_DEQUEUE_COUNT:
                    with contextlib.suppress(NotFound):  # received again meanwhile: the copy stays
                        move_to_poison(self.ctx.queues, queue, message)
                continue
            try:
                queue.delete(message)
            except NotFound:  # handled past its visibility timeout and received again: that one is stale
                log.info("%s message %s was received again before its delete", queue.name, message.id)
        return handled

    def step(self) -> int:
        """Handle what is visible now on both queues (and sweep when due); returns messages handled."""
        ctx = self.ctx
        handled = self._drain(ctx.requests, lambda m: take_request_message(ctx, m.body, message_id=m.id))
        handled += self._drain(ctx.events, lambda m: handle_event(ctx, m.body))
        if time.monotonic() - self._last_sweep >= self.sweep_interval:
            self._last_sweep = time.monotonic()
            sweep(ctx)
        return handled

    def run(
        self, until: Callable[[], bool] | None = None, idle_sleep: float = 0.25, timeout: float | None = None
    ) -> bool:
        """Loop until ``until()`` is true, ``stop()`` is called or ``timeout`` passes; True if ``until``.

        A step that raises (the storage account unreachable: a receive, a delete or the sweep failed) is
        logged and tried again after a backoff: the queue workers outlive an outage, as the Functions
        host's do, instead of ending their thread while the API goes on answering."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while not self._stop.is_set():
            if until is not None and until():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                handled = self.step()
                failures = 0
            except Exception as exc:  # storage unreachable (an outage, a restart): the host keeps polling
                failures = min(failures + 1, 6)
                log.warning("queue host step failed (%s: %s); retrying", type(exc).__name__, exc)
                self._stop.wait(idle_sleep * 2**failures)
                continue
            if handled == 0:
                self._stop.wait(idle_sleep)
        return False

    def stop(self) -> None:
        self._stop.set()
