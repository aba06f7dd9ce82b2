"""Work that is identical across the trials a process runs, done once: a Dask worker runs many trials on
the same data, several at a time on its threads.

:data:`TRIAL_CACHE` keeps, per loaded dataset (:func:`gpu_jobs.data.load_dataset` returns one object per
source, sample and engine), the dense float32 features (NaN replaced for forests), the labels on the
engine and on the host, and per ``(cv_folds, seed)`` the folds' row indices on the host and the device.
Entries are read-only to their users, as the dataset itself is.

:class:`KeyedCache` builds each key once even when several threads ask at once (a lock per key: one
builds, the others wait for its result; other keys build meanwhile), keeps the ``maxsize`` most recently
used, and does not keep a failure (the next caller builds again).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class KeyedCache:
    """A thread-safe LRU cache whose values are built on first use, once per key."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self.builds = 0
        """How many values were built (a hit builds none)."""

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value for ``key``, built by ``build()`` if no caller built it yet."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return cast(T, self._entries[key])  # a key is built by one kind of build: its value is a T
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._entries:  # built by the thread this one waited for
                    self._entries.move_to_end(key)
                    return cast(T, self._entries[key])
            try:
                value = build()
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:  # stored before its lock goes: a caller arriving now finds the value
                self.builds += 1
                self._entries[key] = value
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
                self._building.pop(key, None)
            return value

    def for_object(self, owner: object, key: Hashable, build: Callable[[], T]) -> T:
        """:meth:`get` keyed by ``owner``'s identity and ``key``; the entry holds ``owner``, so the
        identity cannot be reused by another object while the entry lives."""
        return self.get((id(owner), key), lambda: (owner, build()))[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


TRIAL_CACHE = KeyedCache(maxsize=8)
"""Per process (per Dask worker): a dataset's arrays and folds, shared by the trials and their threads."""
