"""The driver's slot bookkeeping (``shared.hpo.slots.SlotPool``) under any order of what slots say and what
the driver does: announcements (fresh, repeated, stale, from a new run), assignments, ends, restarts and
slot tasks that end. Whatever the order, no trial is held by two slots, and every trial given to a slot is
at each moment either still held by it or was handed back to the driver exactly once (as a trial its slot
held when it announced itself again, or when its task ended), released by its end, or forgotten by a
restart the driver made. The Dask side of slots runs in ``tests/test_trial_messages.py``."""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.hpo.slots import Slot, SlotPool, SlotReady
from shared.hpo.trial_task import TrialTask

SLOTS = ["s0", "s1", "s2"]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), st.sampled_from(SLOTS), st.sampled_from(["a", "b", "c"]), st.integers(0, 4)),
        st.tuples(st.just("assign"), st.sampled_from(SLOTS)),
        st.tuples(st.just("release"), st.sampled_from(SLOTS)),
        st.tuples(st.just("forget"), st.sampled_from(SLOTS)),
        st.tuples(st.just("ended"), st.sampled_from(SLOTS)),
    ),
    max_size=60,
)


def _task(number: int) -> TrialTask:
    return TrialTask(
        experiment_id="e", number=number, attempt=1, params={}, data="d", target="t", data_format=None,
        max_rows=None, model="random_forest", cv_folds=3, seed=0, engine="sklearn", primary_metric="accuracy",
        trial_timeout=None, n_jobs=1, channel="c",
    )  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(ops=OPS)
def test_no_trial_is_held_twice_or_dropped_whatever_the_order(ops: list[tuple[Any, ...]]) -> None:
    pool = SlotPool(cast(Any, None), "c", "e", None)  # no Dask call in these operations
    pool.slots = {name: Slot(name=name, future=cast(Any, None)) for name in SLOTS}
    outstanding: set[int] = set()  # given to a slot and not yet handed back, released or forgotten
    handed_back: list[int] = []
    next_number = 0
    for op in ops:
        name = op[1]
        slot = pool.slots.get(name)
        if op[0] == "announce":
            _, held, _ = pool.announced(SlotReady(slot=name, run=op[2], ready=op[3], worker="w"))
            if held is not None:
                handed_back.append(held)
                outstanding.discard(held)
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


def test_a_stale_or_repeated_announcement_changes_nothing() -> None:
    pool = SlotPool(cast(Any, None), "c", "e", None)
    pool.slots = {"s0": Slot(name="s0", future=cast(Any, None))}
    slot, held, lost = pool.announced(SlotReady(slot="s0", run="a", ready=0))
    assert slot is not None and held is None and lost and slot.idle
    pool.assign(slot, 7, _task(7))
    assert pool.announced(SlotReady(slot="s0", run="a", ready=0)) == (None, None, False)  # the same again
    assert pool.announced(SlotReady(slot="nope", run="a", ready=5)) == (None, None, False)  # not ours
    _, held, lost = pool.announced(SlotReady(slot="s0", run="a", ready=1))  # the next, without a final message
    assert held == 7 and not lost
    pool.assign(slot, 8, _task(8))
    _, held, lost = pool.announced(SlotReady(slot="s0", run="b", ready=0))  # a new run: its worker was lost
    assert held == 8 and lost
