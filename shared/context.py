"""The services one process uses (store, queues, backends), built once from the environment.

Queue and timer triggers cannot rely on FastAPI's startup hooks (they run on the first HTTP request
only), so every entry point asks ``get_context()`` for the same lazily built object.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from shared.config import QUEUE_EVENTS, QUEUE_REQUESTS, QUEUE_STATUS, Settings
from shared.events import Announcer, open_announcer
from shared.ports import ComputeAreas, ComputeBackend, EventQueue, QueueService, Store, areas_of


@dataclass
class Context:
    """Everything a handler needs. Tests build one over Azurite or a temporary folder."""

    settings: Settings
    store: Store
    queues: QueueService
    backends: dict[str, ComputeBackend] = field(default_factory=dict)
    announcer: Announcer = field(default_factory=Announcer)
    """CloudEvents on Event Grid; the default sends nothing."""

    @property
    def areas(self) -> ComputeAreas:
        """The experiments' compute areas, kept beside the store (the same storage adapter serves both)."""
        return areas_of(self.store)

    @property
    def events(self) -> EventQueue:
        return self.queues.queue(QUEUE_EVENTS)

    @property
    def requests(self) -> EventQueue:
        return self.queues.queue(QUEUE_REQUESTS)

    @property
    def status_queue(self) -> EventQueue:
        return self.queues.queue(QUEUE_STATUS)

    def backend(self, name: str) -> ComputeBackend:
        """The compute backend called ``name`` (imported on first use: the Azure SDKs are slow to import)."""
        if name not in self.backends:
            from shared.backends import create_backend

            self.backends[name] = create_backend(name, self.store, self.settings)
        return self.backends[name]

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        from shared.cost.catalogue import use_prices_file
        from shared.queues import open_queues
        from shared.store import open_store

        use_prices_file(settings.prices_file)  # the process prices with the catalogue its settings name

        return cls(
            settings=settings,
            store=open_store(settings),
            queues=open_queues(settings),
            announcer=open_announcer(settings.events),
        )


_context: Context | None = None
_lock = threading.Lock()


def get_context() -> Context:
    """The process-wide context, built from the environment on first use."""
    global _context
    with _lock:
        if _context is None:
            _context = Context.from_settings(Settings.from_env())
        return _context


def built_context() -> Context | None:
    """The process-wide context if it is built already; never builds it (no imports, no blocking)."""
    return _context


def set_context(context: Context | None) -> None:
    """Install (or clear) the process-wide context; used by ``rapids-hpo serve/run`` and tests."""
    global _context
    with _lock:
        _context = context
