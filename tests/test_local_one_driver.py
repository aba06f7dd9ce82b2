"""One driver per local experiment, however many hosts run its step at once (``shared.backends.local.claims``).

bench/chaos.py found it: a POLL delivered twice (or handled past its visibility timeout) ran in two hosts at
once, each found the driver dead and started one, and only one pid was recorded; the other driver ran the
experiment unsupervised beside it (two data checks, two refits, a CloudEvent lost). Each test below lets
several hosts (``LocalBackend`` objects of their own, in threads released together by a barrier) run one
step on one record, and counts the driver processes the machine really has.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from shared.backends.local import LocalBackend, LocalHandle, is_alive
from shared.backends.local.claims import START_GRACE_S, DriverClaims
from shared.backends.local.driver import Fence
from shared.config import DRIVER_OUTCOME_ARTIFACT
from shared.ports import RunState
from shared.records import ExperimentRecord
from tests.conformance.backend import LocalHarness, apply_update, new_record, wait_until
from tests.control_plane import local_context

HOSTS = 4
T = TypeVar("T")


@pytest.fixture
def harness(tmp_path: Path) -> LocalHarness:
    return LocalHarness(local_context(tmp_path / "home", poll_seconds=0), tmp_path)


def drivers() -> list[int]:
    """The driver processes this test started that still run (zombies are dead)."""
    found = []
    for child in psutil.Process().children():
        try:
            if "shared.backends.local.driver" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def at_once(harness: LocalHarness, step: Callable[[LocalBackend], T]) -> list[T]:
    """``step`` run by :data:`HOSTS` hosts of their own, released together."""
    hosts = [LocalBackend(harness.ctx.store, harness.ctx.settings) for _ in range(HOSTS)]
    barrier = threading.Barrier(HOSTS)

    def run(host: LocalBackend) -> T:
        barrier.wait()
        return step(host)

    with ThreadPoolExecutor(HOSTS) as pool:
        return list(pool.map(run, hosts))


def ready(harness: LocalHarness, trials: int = 6) -> ExperimentRecord:
    record = new_record(harness, limits={"max_total_trials": trials, "max_concurrent_trials": 1})
    return apply_update(harness, record, {"area": True})


def test_hosts_racing_for_one_generation_take_it_once(tmp_path: Path) -> None:
    claims = [DriverClaims(tmp_path, "exp-1") for _ in range(16)]
    barrier = threading.Barrier(len(claims))

    def take(claim: DriverClaims) -> bool:
        barrier.wait()
        return claim.take(1)

    with ThreadPoolExecutor(len(claims)) as pool:
        assert sum(pool.map(take, claims)) == 1


def test_hosts_submitting_at_once_start_one_driver_which_teardown_stops_from_any_record(
    harness: LocalHarness,
) -> None:
    """A SUBMIT_RUN handled by several hosts at once: one driver, every host's update names it, and teardown
    from the record as it was before (a record that names no driver, as when another step's write won)
    still stops it."""
    record = ready(harness)
    updates = at_once(harness, lambda host: host.submit(record))
    running = drivers()
    assert len(running) == 1, f"{len(running)} drivers for one experiment: {updates}"
    assert {update.get("pid") for update in updates} == {running[0]}, updates
    assert {update.get("generation") for update in updates} == {1}
    LocalBackend(harness.ctx.store, harness.ctx.settings).teardown(record)
    assert drivers() == []


def _killed(harness: LocalHarness, record: ExperimentRecord) -> ExperimentRecord:
    record = apply_update(harness, record, harness.backend().submit(record))
    handle = LocalHandle.model_validate(record.backend_state)
    assert handle.pid is not None
    os.killpg(handle.pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(handle), timeout=30)
    return record


def test_hosts_polling_a_dead_driver_at_once_restart_it_once(harness: LocalHarness) -> None:
    """The chaos run's case: a POLL handled by several hosts at once, the driver dead. One restart (one
    new driver, one restart counted), which every host's update names."""
    record = _killed(harness, ready(harness))
    statuses = at_once(harness, lambda host: host.poll(record))
    running = drivers()
    assert len(running) == 1, f"{len(running)} drivers for one experiment: {statuses}"
    assert all(status.state is RunState.RUNNING for status in statuses), statuses
    assert sum(status.details.restarted for status in statuses) == 1
    named = {(s.updates.get("pid"), s.updates.get("generation"), s.updates.get("restarts")) for s in statuses}
    assert named == {(running[0], 2, 1)}, named
    harness.backend().teardown(record)
    assert drivers() == []


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_claim_whose_host_is_starting_it_is_waited_for_and_one_whose_host_died_is_restarted(
    harness: LocalHarness,
) -> None:
    """A claim without a pid: its host is between the claim and the start (wait, start nothing), or died
    there (after :data:`START_GRACE_S` the driver is dead: restarted, and counted)."""
    record = _killed(harness, ready(harness))
    claims = LocalBackend(harness.ctx.store, harness.ctx.settings).claims(record.id)
    assert claims.take(2)
    status = harness.backend().poll(record)
    assert status.state is RunState.RUNNING and not status.details.restarted and drivers() == []
    old = time.time() - START_GRACE_S - 1
    os.utime(claims.folder / "2.json", (old, old))
    status = harness.backend().poll(record)
    assert status.details.restarted and status.updates["generation"] == 3 and status.updates["restarts"] == 2
    assert drivers() == [status.updates["pid"]]
    harness.backend().teardown(record)


@pytest.mark.slow
def test_a_superseded_driver_stops_with_its_cluster_and_writes_nothing_more(harness: LocalHarness) -> None:
    """A newer generation claimed while a driver runs (as if a host took it for dead): the driver stops at
    its next write, its Dask workers with it, and writes no outcome."""
    record = ready(harness, trials=40)
    record = apply_update(harness, record, harness.backend().submit(record))
    handle = LocalHandle.model_validate(record.backend_state)
    assert handle.pid is not None and handle.log is not None
    area = harness._area(record)
    wait_until(lambda: bool(area.list_trials(record.id)), timeout=180)  # it runs trials: it writes
    group = [psutil.Process(handle.pid), *psutil.Process(handle.pid).children(recursive=True)]
    assert len(group) > 2, "the driver and its cluster's workers"
    assert LocalBackend(harness.ctx.store, harness.ctx.settings).claims(record.id).take(handle.generation + 1)
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in group), timeout=60)
    assert "superseded" in Path(handle.log).read_text()
    assert DRIVER_OUTCOME_ARTIFACT not in area.list_artifacts(record.id, "driver/")
    harness.backend().teardown(record)


def test_after_teardown_no_driver_may_start(tmp_path: Path) -> None:
    """Teardown claims a final generation: a driver a host claimed just before it, and starts after it,
    stops at its start; and a final claim is never restarted."""
    claims = DriverClaims(tmp_path, "exp-1")
    assert claims.take(1)
    fence = Fence(claims, 1)
    assert claims.take(2, final=True)
    assert not fence.start()
    latest = claims.latest()
    assert latest is not None and latest.final and not latest.starting()
