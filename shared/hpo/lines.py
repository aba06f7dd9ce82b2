"""Lines: one direct connection between the driver and each slot, for everything but the slot's first hello
(issue 29).

Through the scheduler, a slot's message cost four hops of Dask's batched streams and the scheduler's own work
(an event in, a topic out; a ``Variable`` set, answered and deleted for each reply): about 1.1 ms of the
driver process's CPU per round trip, where the scheduler shares that process (a ``LocalCluster``), against 0.3
ms on a line (``bench/hpo_overhead.py --noop``). So a slot says hello once through the scheduler (an event on
the experiment's channel, stamped with its worker's address) and the driver connects to that worker, on the
cluster's own comms and security, asking for the slot's run by name. From then on the line carries, in
order, the slot's announcements and its trials' reports one way, and assignments and pruning decisions the
other.

The worker's end (:class:`SlotLine`) is served by a handler every slot registers on its worker
(:data:`HANDLER`). The driver's end (:class:`Lines`) runs on the client's event loop; its driver thread
queues sends and flushes them in one wake-up per batch, and gets back ``("line", (slot, run, worker),
message)`` and ``("line-closed", (slot, run, ""), None)`` in its inbox. The driver reads with
``deserialize=False`` and passes on plain messages only: nothing a worker sends is unpickled, and what it
says is parsed strictly by the driver (:mod:`shared.hpo.reports`, :mod:`shared.hpo.slots`), which stamps
the line's own slot, run and worker on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distributed import Client
from distributed.comm.core import Comm, connect

log = logging.getLogger(__name__)

HANDLER = "rapids_hpo_slot_line"
"""The worker handler a driver connects to: ``{"op": HANDLER, "slot": ..., "run": ...}``."""
CLOSED = object()
"""What a slot's inbox yields when its line closes."""

OPENED = "opened"
"""The worker's first word on a line: the slot run is there (else the comm closes)."""
OPEN_TIMEOUT_S = 30.0
"""How long the driver waits for :data:`OPENED` (a worker without the handler never answers)."""

LineKey = tuple[str, str]
"""A slot's run: (slot name, run token)."""


def plain(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` in plain msgpack types (through JSON: a NumPy number becomes a float, anything odd a string)."""
    return json.loads(json.dumps(message, default=_plain))  # type: ignore[no-any-return]


def _plain(value: object) -> object:
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


# ------------------------------------------------------------------------------------------- the worker's end
_OPEN: dict[LineKey, SlotLine] = {}
"""The slot runs of this worker process, by key: what the handler connects a driver to."""


class SlotLine:
    """A slot run's end of its line: its thread sends and waits; the worker's event loop does the comm."""

    def __init__(self, worker: Any, slot: str, run: str) -> None:
        self.worker, self.key = worker, (slot, run)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        """What the driver sent (dicts), and :data:`CLOSED` when a line closes."""
        self.outbox: deque[dict[str, Any] | None] = deque()
        """What the slot sent and no driver has read yet; None: close the line after what came before."""
        self.wake = asyncio.Event()
        self.comm: Comm | None = None
        """The driver's connection, while one is open."""
        self.lost = False
        """A line closed while the slot waited on it: the driver counts this run lost (the slot starts a new one)."""
        worker.handlers.setdefault(HANDLER, _serve)
        _OPEN[self.key] = self

    @property
    def connected(self) -> bool:
        return self.comm is not None and not self.comm.closed()

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the driver (sent once a driver is connected); never waits."""
        self.outbox.append(plain(message))
        self.worker.loop.add_callback(self.wake.set)

    def receive(self, timeout: float) -> Any:
        """The driver's next message, :data:`CLOSED` if the line closed, or None after ``timeout`` seconds."""
        try:
            got = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        self.lost = self.lost or got is CLOSED
        return got

    def decision(self, number: int, attempt: int, step: int, timeout: float) -> bool:
        """The driver's pruning decision on trial ``number``'s step ``step``: False (carry on) after ``timeout``
        seconds or once the line is lost, since a driver that cannot answer cannot stop the trial either."""
        deadline = time.monotonic() + timeout
        while not self.lost and (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is None:
                break
            if isinstance(got, dict) and (got.get("number"), got.get("attempt"), got.get("step")) == (
                number,
                attempt,
                step,
            ):
                return got.get("prune") is True
        return False

    def close(self) -> None:
        """The slot run is over: no driver can connect to it, and an open line is closed."""
        _OPEN.pop(self.key, None)
        self.outbox.append(None)
        self.worker.loop.add_callback(self.wake.set)


async def _serve(comm: Comm, slot: str = "", run: str = "") -> None:
    """The handler: connect ``comm`` to slot run (``slot``, ``run``) until either side ends it."""
    line = _OPEN.get((slot, run))
    if line is None:  # an unknown run (one that ended, or a hello the driver was fooled by)
        await comm.close()
        return
    if line.comm is not None:  # the driver connected again: the newer connection wins
        await line.comm.close()
    line.comm = comm
    await comm.write(OPENED)
    reader = asyncio.ensure_future(_read_into(comm, line))
    try:
        while True:
            await line.wake.wait()
            if line.comm is not comm or comm.closed():  # replaced by a newer connection, or closed
                break
            line.wake.clear()
            batch = [line.outbox.popleft() for _ in range(len(line.outbox))]
            ended = None in batch
            sent = [m for m in batch if m is not None]
            if sent:
                await comm.write(sent)
            if ended:
                break
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(Exception):
            await comm.close()
        if line.comm is comm:
            line.comm = None
            line.inbox.put(CLOSED)


async def _read_into(comm: Comm, line: SlotLine) -> None:
    with contextlib.suppress(Exception):
        while True:
            for message in await comm.read():
                line.inbox.put(message)
    line.wake.set()  # the writer notices the closed comm


# ------------------------------------------------------------------------------------------- the driver's end
@dataclass
class _DriverLine:
    key: LineKey
    worker: str
    pending: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    task: asyncio.Future[None] | None = None
    """The coroutine that runs the line (kept: the loop holds its tasks weakly)."""


class Lines:
    """The driver's lines to its slots (opened, written and closed from the driver's thread, run on the
    client's event loop); ``deliver`` gets what they bring, from the loop."""

    def __init__(self, client: Client, deliver: Callable[[tuple[str, tuple[str, str, str], Any]], None]) -> None:
        self.client = client
        self.deliver = deliver
        self._lines: dict[LineKey, _DriverLine] = {}
        """Owned by the event loop."""
        self._queued: list[tuple[str, LineKey, Any]] = []
        """Owned by the driver's thread: opens, sends and closes to flush."""

    def open(self, slot: str, run: str, worker: str) -> None:
        self._queued.append(("open", (slot, run), worker))

    def send(self, slot: str, run: str, message: dict[str, Any]) -> None:
        self._queued.append(("send", (slot, run), message))

    def close(self, slot: str, run: str) -> None:
        self._queued.append(("close", (slot, run), None))

    def flush(self) -> None:
        """Hand what was queued to the event loop, at one wake-up."""
        if self._queued and self.client.loop is not None:
            batch, self._queued = self._queued, []
            self.client.loop.add_callback(self._apply, batch)

    def _apply(self, batch: list[tuple[str, LineKey, Any]]) -> None:
        for action, key, value in batch:
            line = self._lines.get(key)
            if action == "open" and line is None:
                line = self._lines[key] = _DriverLine(key, value)
                line.task = asyncio.ensure_future(self._run(line))
            elif line is not None and action == "send":
                line.pending.append(value)
                line.wake.set()
            elif line is not None and action == "close":
                line.closing = True
                line.wake.set()

    async def _run(self, line: _DriverLine) -> None:
        comm: Comm | None = None
        reader: asyncio.Future[None] | None = None
        try:
            comm = await connect(line.worker, deserialize=False, **self.client.connection_args)
            await comm.write({"op": HANDLER, "slot": line.key[0], "run": line.key[1], "reply": False})
            if await asyncio.wait_for(comm.read(), OPEN_TIMEOUT_S) != OPENED:
                raise ConnectionError("the worker did not open the line")
            reader = asyncio.ensure_future(self._read(comm, line))
            while not comm.closed() and not line.closing:
                await line.wake.wait()
                line.wake.clear()
                batch, line.pending = line.pending, []
                if batch:
                    await comm.write(batch)
        except Exception as exc:  # unreachable, refused, or the comm broke
            level = logging.INFO if reader is not None else logging.WARNING  # never opened: say so louder
            log.log(level, "the line to slot %s at %s closed: %r", line.key[0], line.worker, exc)
        finally:
            if reader is not None:
                reader.cancel()
            if comm is not None:
                with contextlib.suppress(Exception):
                    await comm.close()
            self._lines.pop(line.key, None)
            self.deliver(("line-closed", (*line.key, line.worker), None))

    async def _read(self, comm: Comm, line: _DriverLine) -> None:
        key = (*line.key, line.worker)
        with contextlib.suppress(Exception):
            while True:
                batch = await comm.read()
                for message in batch if isinstance(batch, list | tuple) else [batch]:
                    self.deliver(("line", key, message))
        line.wake.set()  # the writer notices the closed comm
