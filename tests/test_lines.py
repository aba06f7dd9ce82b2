"""The lines between the driver and its slots (``shared.hpo.lines``), attacked where they can break: a line
that breaks mid-trial without its worker dying, and a worker that writes the driver a pickle. Real Dask
comms on the suite's LocalCluster of two worker processes."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Event, get_worker
from distributed.protocol.serialize import to_serialize

from shared.hpo.lines import Lines, SlotLine
from shared.records import TrialState
from shared.store.local import LocalStore
from tests.test_trial_messages import the_depth_5_trials_after_the_others_complete
from tests.trial_functions import scripted_trial


def _own_line() -> SlotLine:
    from shared.hpo import lines

    slot = str(get_worker().get_current_task())
    return next(line for (name, _), line in lines._OPEN.items() if name == slot)


def line_breaking_trial(*, on_fold: Callable[..., None], completed_folds: Any = (), **kwargs: Any) -> dict[str, Any]:
    """When its ``max_depth`` is 5 and it starts from nothing, breaks its slot's line after its first fold
    (the comm aborted from the worker's side, the worker alive), then runs on to its end."""
    params: Mapping[str, Any] = kwargs["params"]
    breaking = params.get("max_depth") == 5 and not completed_folds

    def on_fold_then_break(step: int, *args: Any) -> None:
        on_fold(step, *args)
        if breaking and step == 1:
            time.sleep(0.3)  # the fold's report reaches the driver first
            line = _own_line()
            comm = line.comm
            assert comm is not None
            line.worker.loop.add_callback(comm.abort)
            time.sleep(0.3)

    return scripted_trial(on_fold=on_fold_then_break, completed_folds=completed_folds, **kwargs)


def test_a_line_that_breaks_mid_trial_costs_a_retry_from_the_folds_the_driver_received(
    store: LocalStore, dask_client: Client
) -> None:
    """The driver counts the trial lost when its line closes and gives it to a free slot from the fold it
    received; the slot whose line broke goes on under a new run and takes trials again. Every trial ends
    COMPLETED with its own value, the broken ones having resumed their first fold."""
    for broken in the_depth_5_trials_after_the_others_complete(store, dask_client, line_breaking_trial):
        assert broken.state is TrialState.COMPLETED and broken.value == pytest.approx(broken.params["max_features"])
        assert broken.resumed_folds >= 1


class _Unpickled:
    """Creates a file wherever it is unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def _slot_writing_a_pickle(marker: str) -> str:
    """A hostile slot run: opens a line, waits for the driver, writes it a pickle beside a plain message."""
    worker = get_worker()
    line = SlotLine(worker, "hostile", "run-1")
    Event("hostile-slot-ready").set()
    deadline = time.monotonic() + 30
    while not line.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    comm = line.comm
    assert comm is not None
    worker.loop.add_callback(comm.write, [{"plain": 1}, to_serialize(_Unpickled(marker))])
    time.sleep(1)
    line.close()
    return worker.address


def test_the_driver_never_unpickles_what_a_line_brings(dask_client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    lines = Lines(dask_client, inbox.put)
    address = sorted(dask_client.nthreads())[0]
    future = dask_client.submit(_slot_writing_a_pickle, str(marker), pure=False, workers=[address])
    assert Event("hostile-slot-ready").wait(timeout=30)
    lines.open("hostile", "run-1", address)
    lines.flush()
    assert future.result(timeout=60) == address
    got = []
    while True:
        item = inbox.get(timeout=30)
        got.append(item)
        if item[0] == "line-closed":
            break
    messages = [m for kind, _, m in got if kind == "line"]
    assert {"plain": 1} in messages
    assert any(type(m).__name__ == "Serialized" for m in messages), messages  # it came, as opaque frames
    assert not marker.exists(), "the driver unpickled what a worker wrote"
