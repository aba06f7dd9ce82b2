"""Slots: one long-lived Dask task per trial in flight, taking trial after trial from the driver (issue 29).

A Dask task per trial cost the scheduler's whole task life (submit, queue, assign, run, finish, release, on
client, scheduler and worker) for every trial, about 7 ms per trial on two cores where Optuna's own
two-process recipe spends 5 ms on everything. A slot pays that once per experiment; per trial it costs one
assignment and the trial's own reports, on the slot's line to the driver (:mod:`shared.hpo.lines`).

The protocol, per slot (a task keyed ``slot-<experiment>-<driver run>-<n>``, placed by Dask like any task,
so it waits in the scheduler's queue until a worker thread is free):

1. The task draws a run token and says hello on the experiment's channel: ``{"slot", "run", "ready": 0}``
   (the scheduler stamps the worker's address on it). The driver connects a line to that run.
2. On the line, the slot waits for ``{"assign": k, "task": ...}``: a trial (a
   :class:`~shared.hpo.trial_task.TrialTask` as a dict) or None (stop).
3. It runs the trial (:func:`~shared.hpo.trial_task.run_trial_task`: started, steps, final, on the line),
   then announces on the line that it is ready for ``k + 1``.

Lost work: a worker lost mid-trial (a Spot eviction, an OOM kill, a hard stop) takes its slots and their
lines with it; a line also closes when the network between them breaks. The driver gives a trial whose line
closed, or whose worker left the scheduler's list, to the next free slot (from the folds its reports showed
it went on from), up to ``distributed.scheduler.allowed-failures`` times, as Dask counted a task's reruns,
then fails it. Dask runs a lost slot task again elsewhere, which says hello under a new run token; a slot
whose line closed goes on under a new token too. A slot task that ends (Dask gave up on it, or it idled out)
is replaced when a trial waits.

A slot ends when told (None), when its task is no longer wanted (the driver cancelled it: checked each
:data:`WAIT_STEP_S`), or after :data:`IDLE_S` without a trial (its driver is gone). A hello is parsed strictly
(:class:`SlotReady`) and never replaces a run whose line is open, so a forged one costs nothing; a trial's
messages count only on the line of the slot that holds it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import dask
from distributed import Client, Future, get_worker, wait
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.bounded import MAX_NAME
from shared.hpo.lines import CLOSED, Lines, SlotLine, plain
from shared.hpo.trial_task import TrialFunction, TrialTask, run_trial_task

log = logging.getLogger(__name__)

IDLE_S = 600.0
"""How long a slot waits for a trial before it ends (its driver is gone; a live one replaces it on demand)."""
WAIT_STEP_S = 1.0
"""How often a waiting slot checks that its task is still wanted (a cancelled slot frees its thread)."""
CLOSE_WAIT_S = 5.0
"""How long the driver waits, at its end, for the slots it told to stop (they end within a round trip)."""
LOST_CHECK_S = 1.0
"""How often, at most, the driver asks the scheduler which workers are left (while a slot runs a trial)."""


HELLO_EVERY_S = 5.0
"""How often a slot whose run has no line says hello again (a hello lost, or a driver fooled by a forged one)."""


class SlotReady(BaseModel):
    """A slot's announcement: its run ``run`` waits for its ``ready``-th trial (from the worker stamped)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    slot: str = Field(min_length=1, max_length=MAX_NAME)
    run: str = Field(min_length=1, max_length=64)
    ready: int = Field(ge=0, le=10**10)
    worker: str | None = Field(default=None, max_length=MAX_NAME)
    failed: str | None = Field(default=None, max_length=512)
    """The slot task is failing with this error (a ``BaseException`` its trial let through): its last word."""


def parse_ready(raw: object) -> SlotReady | str:
    """``raw`` as a :class:`SlotReady`, or why it is not one."""
    try:
        return SlotReady.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"malformed slot message ({'.'.join(str(p) for p in first['loc']) or 'message'}: {first['msg']})"


# ------------------------------------------------------------------------------------------- the worker's side
class _SlotRun:
    """A slot task's current run: its token, its line, the index of the trial it waits for."""

    def __init__(self, worker: Any, channel: str, slot: str) -> None:
        self.worker, self.channel, self.slot = worker, channel, slot
        self.line = SlotLine(worker, slot, uuid.uuid4().hex)
        self.index = 0
        self.said_hello = 0.0

    def announce(self) -> None:
        """Ready for trial ``index``: on the line, or in a hello if no driver is connected (it connects)."""
        ready = {"slot": self.slot, "run": self.line.key[1], "ready": self.index}
        if self.line.lost:  # the driver counted this run lost with its trial: go on as a new one
            self.line.close()
            self.line = SlotLine(self.worker, self.slot, uuid.uuid4().hex)
            ready["run"] = self.line.key[1]
        if self.line.connected:
            self.line.send(ready)
        else:
            self.worker.log_event(self.channel, plain(ready))
            self.said_hello = time.monotonic()


def run_slot(channel: str, slot: str, trial_fn: TrialFunction | None = None) -> int:
    """The slot task: announce, take a trial, run it, announce again, until told to stop; the trials run."""
    worker = get_worker()
    current = _SlotRun(worker, channel, slot)
    try:
        while True:
            current.announce()
            assigned = _wait_for_trial(current, worker, worker.get_current_task())
            if assigned is None:
                return current.index
            run_trial_task(_task(assigned), current.line, trial_fn)
            current.index += 1
    except BaseException as exc:  # the trial classifies its own failures: this one ends the slot task
        failed = f"{type(exc).__name__}: {exc}"[:512]
        current.line.send({"slot": slot, "run": current.line.key[1], "ready": current.index, "failed": failed})
        raise
    finally:
        current.line.close()


def _wait_for_trial(current: _SlotRun, worker: Any, key: Any) -> dict[str, Any] | None:
    """The trial the driver gives ``current`` run, or None: told to stop, cancelled, idle. A run whose line
    closes goes on as a new one; one without a line says hello again every :data:`HELLO_EVERY_S`."""
    waited = 0.0
    while waited < IDLE_S:
        got = current.line.receive(WAIT_STEP_S)
        if got is CLOSED:
            current.announce()
        elif got is None:
            waited += WAIT_STEP_S
            state = worker.state.tasks.get(key)
            if state is None or state.state != "executing":  # the driver cancelled this slot
                return None
            if not current.line.connected and time.monotonic() - current.said_hello >= HELLO_EVERY_S:
                current.announce()
        elif isinstance(got, dict) and got.get("assign") == current.index:
            task = got.get("task")
            return task if isinstance(task, dict) else None
    return None


def _task(assigned: dict[str, Any]) -> TrialTask:
    """A trial as the driver sent it (through msgpack: tuples came as lists)."""
    fields = dict(assigned)
    fields["completed_folds"] = tuple(fields.get("completed_folds") or ())
    if fields.get("features") is not None:
        fields["features"] = tuple(fields["features"])
    return TrialTask(**fields)


def task_message(task: TrialTask) -> dict[str, Any]:
    """``task`` as an assignment carries it (plain msgpack types)."""
    return asdict(task)


# ------------------------------------------------------------------------------------------- the driver's side
@dataclass
class Slot:
    """The driver's view of one slot task."""

    name: str
    future: Future[Any]
    run: str | None = None
    """The run whose line the driver holds (None: none yet, or it was lost)."""
    ready: int = 0
    """The assignment index that run waits on."""
    worker: str | None = None
    """The worker that run said hello from."""
    trial: int | None = None
    """The number of the trial given to it and not ended."""
    waiting: bool = False
    """Its run announced itself and has not been given a trial since."""
    pending: SlotReady | None = None
    """A hello from another run, taken once the current run's line closes (a live line is never replaced: a
    forged hello costs nothing)."""

    @property
    def idle(self) -> bool:
        return self.waiting and self.trial is None

    def drop_run(self) -> None:
        """Its run is over (its line closed, its worker was lost or is being restarted)."""
        self.run, self.trial, self.waiting = None, None, False


class SlotPool:
    """The driver's slots of one experiment: start them, give them trials, notice lost ones, stop them."""

    def __init__(
        self,
        client: Client,
        channel: str,
        experiment_id: str,
        trial_fn: TrialFunction | None,
        deliver: Callable[[tuple[str, Any, Any]], None],
    ) -> None:
        self.client = client
        self.channel = channel
        self.trial_fn = trial_fn
        self.prefix = f"slot-{experiment_id}-{uuid.uuid4().hex[:8]}"
        self.slots: dict[str, Slot] = {}
        self.lines = Lines(client, deliver)
        self._made = 0
        self._checked = 0.0
        self.allowed_failures = int(dask.config.get("distributed.scheduler.allowed-failures", 3))

    def grow(self, wanted: int, on_done: Any) -> None:
        """Start slots until ``wanted`` are alive (``on_done`` is each one's done callback)."""
        while len(self.slots) < wanted:
            name = f"{self.prefix}-{self._made}"
            self._made += 1
            future = self.client.submit(run_slot, self.channel, name, self.trial_fn, key=name, pure=False)
            self.slots[name] = Slot(name=name, future=future)
            future.add_done_callback(on_done)

    def idle(self) -> Iterator[Slot]:
        return (slot for slot in self.slots.values() if slot.idle)

    def hello(self, ready: SlotReady) -> None:
        """A slot run said hello (through the scheduler, stamped with its worker): connect to it, unless the
        slot's current run still has its line (then it waits in ``pending``)."""
        slot = self.slots.get(ready.slot)
        if slot is None or ready.run == slot.run or ready.worker is None:
            return  # not ours, or the run already connected
        if slot.run is not None:
            slot.pending = ready
            return
        slot.run, slot.ready, slot.worker, slot.trial, slot.waiting = ready.run, ready.ready, ready.worker, None, True
        slot.pending = None
        self.lines.open(slot.name, ready.run, ready.worker)

    def holder(self, name: str, run: str) -> Slot | None:
        """The slot whose current run line (``name``, ``run``) is: a message on any other line is stale."""
        slot = self.slots.get(name)
        return slot if slot is not None and slot.run == run else None

    def announced(self, slot: Slot, ready: SlotReady) -> int | None:
        """``slot``'s run announced on its line that it waits for trial ``ready.ready``: the trial it held
        and did not end (it ended without a final message), if any."""
        if ready.ready <= slot.ready:
            return None  # already taken (only a hostile trial repeats one: a line keeps its order)
        held = slot.trial
        slot.ready, slot.trial, slot.waiting = ready.ready, None, True
        return held

    def line_closed(self, name: str, run: str) -> int | None:
        """Line (``name``, ``run``) closed: if it was the slot's current run, the run is over; its trial, if it
        held one, is lost. A hello that waited is taken now."""
        slot = self.holder(name, run)
        if slot is None:
            return None
        held = slot.trial
        slot.drop_run()
        if slot.pending is not None:
            self.hello(slot.pending)
        return held

    def assign(self, slot: Slot, number: int, task: TrialTask) -> None:
        """Give ``slot`` trial ``number``."""
        assert slot.run is not None
        slot.trial, slot.waiting = number, False
        self.lines.send(slot.name, slot.run, {"assign": slot.ready, "task": task_message(task)})

    def answer(self, name: str | None, message: dict[str, Any]) -> None:
        """Send slot ``name``'s current run ``message`` (a pruning decision)."""
        slot = self.slots.get(name) if name is not None else None
        if slot is not None and slot.run is not None:
            self.lines.send(slot.name, slot.run, message)

    def release(self, name: str | None, number: int) -> None:
        """Trial ``number`` ended on slot ``name``: the slot is free once it announces itself again."""
        slot = self.slots.get(name) if name is not None else None
        if slot is not None and slot.trial == number:
            slot.trial = None  # idle once it announces itself again

    def forget(self, name: str | None) -> None:
        """The driver restarts ``name``'s worker: its run is over, its trial handled by the driver."""
        slot = self.slots.get(name) if name is not None else None
        if slot is not None:
            self._drop(slot)

    def _drop(self, slot: Slot) -> None:
        if slot.run is not None:
            self.lines.close(slot.name, slot.run)
        slot.drop_run()

    def ended(self, name: str) -> tuple[int | None, str]:
        """Slot task ``name`` ended (erred, idled out, cancelled): the trial it held, if any, and why it ended."""
        slot = self.slots.pop(name, None)
        if slot is None:
            return None, ""
        held = slot.trial
        self._drop(slot)
        why = "its slot task ended"
        with contextlib.suppress(Exception):
            if slot.future.status == "error":
                error = slot.future.exception(timeout=5)
                why = f"its slot task failed: {type(error).__name__}: {error}"[:512]
        return held, why

    def lost_workers(self) -> list[tuple[Slot, int]]:
        """The busy slots whose worker has left the cluster, and their trials (asked at most once per
        :data:`LOST_CHECK_S`, and only while a slot is busy): a line to a vanished machine may take the
        network's timeouts to close."""
        busy = [slot for slot in self.slots.values() if slot.trial is not None and slot.worker is not None]
        now = time.monotonic()
        if not busy or now - self._checked < LOST_CHECK_S:
            return []
        self._checked = now
        try:
            workers = set(self.client.nthreads())
        except Exception:
            return []
        lost = [(slot, slot.trial) for slot in busy if slot.worker not in workers and slot.trial is not None]
        for slot, _ in lost:
            self._drop(slot)
        return lost

    def close(self) -> None:
        """Tell idle slots to stop, give them a moment to end, and cancel the rest (a busy slot's worker was
        restarted already; one that never started is dropped from the scheduler's queue); close every line."""
        told = [s for s in self.slots.values() if s.idle and s.run is not None]
        for slot in told:
            self.lines.send(slot.name, slot.run, {"assign": slot.ready, "task": None})  # type: ignore[arg-type]
        self.lines.flush()
        with contextlib.suppress(Exception):
            wait([s.future for s in told], timeout=CLOSE_WAIT_S)
        with contextlib.suppress(Exception):
            self.client.cancel([s.future for s in self.slots.values() if not s.future.done()], force=True)
        for slot in self.slots.values():
            self._drop(slot)
        self.lines.flush()
        self.slots.clear()
