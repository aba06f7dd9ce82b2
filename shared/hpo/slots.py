"""Slots: one long-lived Dask task per trial in flight, taking trial after trial from the driver (issue 29).

A Dask task per trial cost the scheduler's whole task life (submit, queue, assign, run, finish, release, on
client, scheduler and worker) for every trial, about 7 ms per trial on two cores where Optuna's own
two-process recipe spends 5 ms on everything. A slot pays that once per experiment; per trial it costs one
assignment (the driver sets a Dask ``Variable`` the slot waits on) beside the trial's own reports.

The protocol, per slot (a task keyed ``slot-<experiment>-<driver run>-<n>``, placed by Dask like any task,
so it waits in the scheduler's queue until a worker thread is free):

1. The task draws a run token and announces itself on the experiment's channel: ``{"slot", "run",
   "ready": k}`` with ``k = 0`` (the scheduler stamps the worker's address on it).
2. It waits on :func:`assignment_variable` ``(channel, slot, run, k)``: the driver sets it to a trial
   (a :class:`~shared.hpo.trial_task.TrialTask` as a dict) or to None (stop).
3. It runs the trial (:func:`~shared.hpo.trial_task.run_trial_task`: started, steps, final), then announces
   itself ready for ``k + 1``.

Lost work: a worker lost mid-trial (a Spot eviction, an OOM kill, a hard stop) takes its slots with it. Dask
runs each slot task again elsewhere, which announces itself under a new run token; or the worker leaves the
scheduler's list first. Either way the driver gives that slot's trial to the next free slot (from the folds
the trial's reports showed it went on from), up to ``distributed.scheduler.allowed-failures`` times, as Dask
counted a task's reruns, then fails it. A slot task that ends (Dask gave up on it, or it idled out) is
replaced when a trial waits.

A slot ends when told (None), when its task is no longer wanted (the driver cancelled it: checked each
:data:`WAIT_STEP_S`), or after :data:`IDLE_S` without a trial (its driver is gone). What a slot announces is
parsed strictly (:class:`SlotReady`): a forged announcement can only cost its own experiment a trial's retry.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import dask
from distributed import Client, Future, Variable, get_worker, wait
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.bounded import MAX_NAME
from shared.hpo.trial_task import (
    TrialFunction,
    TrialTask,
    all_without_waiting,
    run_trial_task,
    send_report,
)

log = logging.getLogger(__name__)

IDLE_S = 600.0
"""How long a slot waits for a trial before it ends (its driver is gone; a live one replaces it on demand)."""
WAIT_STEP_S = 1.0
"""How often a waiting slot checks that its task is still wanted (a cancelled slot frees its thread)."""
CLOSE_WAIT_S = 5.0
"""How long the driver waits, at its end, for the slots it told to stop (they end within a round trip)."""
LOST_CHECK_S = 1.0
"""How often, at most, the driver asks the scheduler which workers are left (while a slot runs a trial)."""


def assignment_variable(channel: str, slot: str, run: str, index: int) -> str:
    """The Dask ``Variable`` on which the driver gives ``slot``'s run ``run`` its ``index``-th trial."""
    return f"{channel}-{slot}-{run}-{index}"


class SlotReady(BaseModel):
    """A slot's announcement: its run ``run`` waits for its ``ready``-th trial (from the worker stamped)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    slot: str = Field(min_length=1, max_length=MAX_NAME)
    run: str = Field(min_length=1, max_length=64)
    ready: int = Field(ge=0, le=10**10)
    worker: str | None = Field(default=None, max_length=MAX_NAME)


def parse_ready(raw: object) -> SlotReady | str:
    """``raw`` as a :class:`SlotReady`, or why it is not one."""
    try:
        return SlotReady.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"malformed slot message ({'.'.join(str(p) for p in first['loc']) or 'message'}: {first['msg']})"


# ------------------------------------------------------------------------------------------- the worker's side
def run_slot(channel: str, slot: str, trial_fn: TrialFunction | None = None) -> int:
    """The slot task: announce, take a trial, run it, announce again, until told to stop; the trials run."""
    worker = get_worker()
    key = worker.get_current_task()
    run, index = uuid.uuid4().hex, 0
    while True:
        send_report(channel, {"slot": slot, "run": run, "ready": index})
        assigned = _wait_for_trial(Variable(assignment_variable(channel, slot, run, index)), worker, key)
        if assigned is None:
            return index
        run_trial_task(_task(assigned), trial_fn)
        index += 1


def _wait_for_trial(variable: Variable, worker: Any, key: Any) -> dict[str, Any] | None:
    """The trial the driver set on ``variable`` (deleted once read), or None: told to stop, cancelled, idle."""
    waited = 0.0
    while waited < IDLE_S:
        try:
            assigned = variable.get(timeout=WAIT_STEP_S)
        except TimeoutError:
            waited += WAIT_STEP_S
            state = worker.state.tasks.get(key)
            if state is None or state.state != "executing":  # the driver cancelled this slot
                return None
            continue
        with contextlib.suppress(Exception):
            variable.delete()  # on the client's batched stream: no wait
        return assigned if isinstance(assigned, dict) else None
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
    """The run token of the incarnation that announced itself last (None: none yet, or it was lost)."""
    ready: int = 0
    """The assignment index that incarnation waits on."""
    worker: str | None = None
    """The worker it announced itself from."""
    trial: int | None = None
    """The number of the trial given to it and not ended."""
    waiting: bool = False
    """Its run announced itself and has not been given a trial since."""

    @property
    def idle(self) -> bool:
        return self.waiting and self.trial is None

    def drop_run(self) -> None:
        """Its run is over (its worker was lost or is being restarted): it neither waits nor holds a trial."""
        self.run, self.trial, self.waiting = None, None, False


class SlotPool:
    """The driver's slots of one experiment: start them, give them trials, notice lost ones, stop them."""

    def __init__(self, client: Client, channel: str, experiment_id: str, trial_fn: TrialFunction | None) -> None:
        self.client = client
        self.channel = channel
        self.trial_fn = trial_fn
        self.prefix = f"slot-{experiment_id}-{uuid.uuid4().hex[:8]}"
        self.slots: dict[str, Slot] = {}
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

    def announced(self, ready: SlotReady) -> tuple[Slot | None, int | None, bool]:
        """Take a slot's announcement: the slot (None: not one of ours), the trial it held that has not ended,
        and whether it was lost (a new run: its worker died mid-trial) rather than ended without a final
        message (the same run, ready for the next)."""
        slot = self.slots.get(ready.slot)
        if slot is None or (ready.run == slot.run and ready.ready <= slot.ready):
            return None, None, False  # not ours, or an announcement already taken
        held, lost = slot.trial, ready.run != slot.run
        slot.run, slot.ready, slot.worker, slot.trial, slot.waiting = ready.run, ready.ready, ready.worker, None, True
        return slot, held, lost

    def assign(self, slot: Slot, number: int, task: TrialTask) -> tuple[str, dict[str, Any]]:
        """Give ``slot`` trial ``number``: the scheduler call that sets its assignment."""
        assert slot.run is not None
        slot.trial, slot.waiting = number, False
        name = assignment_variable(self.channel, slot.name, slot.run, slot.ready)
        return "variable_set", {"name": name, "data": task_message(task)}

    def release(self, name: str | None, number: int) -> None:
        """Trial ``number`` ended on slot ``name``: the slot is free once it announces itself again."""
        slot = self.slots.get(name) if name is not None else None
        if slot is not None and slot.trial == number:
            slot.trial = None  # idle once it announces itself again

    def forget(self, name: str | None) -> None:
        """The driver restarts ``name``'s worker: its run is over, its trial handled by the driver."""
        slot = self.slots.get(name) if name is not None else None
        if slot is not None:
            slot.drop_run()

    def ended(self, name: str) -> tuple[int | None, str]:
        """Slot task ``name`` ended (erred, idled out, cancelled): the trial it held, if any, and why it ended."""
        slot = self.slots.pop(name, None)
        if slot is None:
            return None, ""
        why = "its slot task ended"
        with contextlib.suppress(Exception):
            if slot.future.status == "error":
                error = slot.future.exception(timeout=5)
                why = f"its slot task failed: {type(error).__name__}: {error}"[:512]
        return slot.trial, why

    def lost_workers(self) -> list[tuple[Slot, int]]:
        """The busy slots whose worker has left the cluster, and their trials (asked at most once per
        :data:`LOST_CHECK_S`, and only while a slot is busy)."""
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
            slot.drop_run()
        return lost

    def close(self) -> None:
        """Tell idle slots to stop, give them a moment to end, and cancel the rest (a busy slot's worker was
        restarted already; one that never started is dropped from the scheduler's queue)."""
        told = [s for s in self.slots.values() if s.idle]
        calls = [
            ("variable_set", {"name": assignment_variable(self.channel, s.name, s.run, s.ready), "data": None})
            for s in told
            if s.run is not None  # always, for an idle slot: the check narrows the type
        ]
        with contextlib.suppress(Exception):
            all_without_waiting(self.client, calls)
            wait([s.future for s in told], timeout=CLOSE_WAIT_S)
        with contextlib.suppress(Exception):
            self.client.cancel([s.future for s in self.slots.values() if not s.future.done()], force=True)
        self.slots.clear()
