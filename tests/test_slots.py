"""The driver's slot bookkeeping (``shared.hpo.slots.SlotPool``) under any order of what slots say and what
the driver does: hellos (fresh, repeated, forged, from a new run), announcements on a line (fresh, repeated,
stale), lines that close, assignments, ends, restarts and slot tasks that end. Whatever the order, no trial
is held by two slots; every trial given to a slot is at each moment either still held by it or was handed
back to the driver exactly once (as a trial its slot held when it announced itself again, when its line
closed, or when its task ended), released by its end, or forgotten by a restart the driver made; and no
hello replaces a run whose line is open. The Dask side of slots runs in ``tests/test_trial_messages.py``."""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.hpo.slots import Slot, SlotPool, SlotReady
from shared.hpo.trial_task import TrialTask

SLOTS = ["s0", "s1", "s2"]
RUNS = ["a", "b", "c"]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("hello"), st.sampled_from(SLOTS), st.sampled_from(RUNS), st.integers(0, 4)),
        st.tuples(st.just("announce"), st.sampled_from(SLOTS), st.integers(0, 4)),
        st.tuples(st.just("closed"), st.sampled_from(SLOTS), st.sampled_from(RUNS)),
        st.tuples(st.just("assign"), st.sampled_from(SLOTS)),
        st.tuples(st.just("release"), st.sampled_from(SLOTS)),
        st.tuples(st.just("forget"), st.sampled_from(SLOTS)),
        st.tuples(st.just("ended"), st.sampled_from(SLOTS)),
    ),
    max_size=60,
)


def _pool(names: list[str]) -> SlotPool:
    pool = SlotPool(cast(Any, None), "c", "e", None, lambda item: None)  # lines only queue: nothing flushes
    pool.slots = {name: Slot(name=name, future=cast(Any, None)) for name in names}
    return pool


def _task(number: int) -> TrialTask:
    return TrialTask(
        experiment_id="e", number=number, attempt=1, params={}, data="d", target="t", data_format=None,
        max_rows=None, model="random_forest", cv_folds=3, seed=0, engine="sklearn", primary_metric="accuracy",
        trial_timeout=None, n_jobs=1,
    )  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(ops=OPS)
def test_no_trial_is_held_twice_or_dropped_whatever_the_order(ops: list[tuple[Any, ...]]) -> None:
    pool = _pool(SLOTS)
    outstanding: set[int] = set()  # given to a slot and not yet handed back, released or forgotten
    handed_back: list[int] = []
    next_number = 0
    for op in ops:
        name = op[1]
        slot = pool.slots.get(name)
        held: int | None = None
        if op[0] == "hello":
            live = None if slot is None else slot.run
            pool.hello(SlotReady(slot=name, run=op[2], ready=op[3], worker="w"))
            assert slot is None or live is None or slot.run == live, "a hello replaced a live line"
        elif op[0] == "announce" and slot is not None and slot.run is not None:
            held = pool.announced(slot, SlotReady(slot=name, run=slot.run, ready=op[2]))
        elif op[0] == "closed":
            held = pool.line_closed(name, op[2])
        elif op[0] == "assign" and slot is not None and slot.idle:
            pool.assign(slot, next_number, _task(next_number))
            outstanding.add(next_number)
            next_number += 1
        elif op[0] == "release" and slot is not None and slot.trial is not None:
            number = slot.trial
            pool.release(name, number)
            outstanding.discard(number)
        elif op[0] == "forget" and slot is not None:
            if slot.trial is not None:
                outstanding.discard(slot.trial)
            pool.forget(name)
        elif op[0] == "ended":
            held, _ = pool.ended(name)
        if held is not None:
            handed_back.append(held)
            outstanding.discard(held)
        holders = [s.trial for s in pool.slots.values() if s.trial is not None]
        assert len(holders) == len(set(holders)), "a trial held by two slots"
        assert set(holders) == outstanding, "a trial given to a slot was dropped or appeared from nowhere"
        assert len(handed_back) == len(set(handed_back)), "a trial handed back twice"
        assert all(not s.idle or s.trial is None for s in pool.slots.values())
        assert all(s.run is not None or s.trial is None for s in pool.slots.values()), "a trial held by no run"


def test_a_stale_repeated_or_forged_message_changes_nothing() -> None:
    pool = _pool(["s0"])
    slot = pool.slots["s0"]
    pool.hello(SlotReady(slot="s0", run="a", ready=0, worker="w"))
    assert slot.run == "a" and slot.idle
    pool.assign(slot, 7, _task(7))
    assert pool.announced(slot, SlotReady(slot="s0", run="a", ready=0)) is None and slot.trial == 7  # again
    assert pool.announced(slot, SlotReady(slot="s0", run="a", ready=1)) == 7  # the next, and no final came
    pool.assign(slot, 8, _task(8))
    pool.hello(SlotReady(slot="s0", run="b", ready=0, worker="w"))  # a forged restart: waits behind the line
    pool.hello(SlotReady(slot="nope", run="a", ready=5, worker="w"))  # not ours
    assert (slot.run, slot.trial, slot.pending and slot.pending.run) == ("a", 8, "b")
    assert pool.line_closed("s0", "b") is None and slot.trial == 8  # not its line
    assert pool.line_closed("s0", "a") == 8  # its line: the trial is lost, and the waiting hello is taken
    assert _state(slot) == ("b", None, True)


def _state(slot: Slot) -> tuple[Any, ...]:
    return slot.run, slot.trial, slot.idle
