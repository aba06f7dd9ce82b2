"""The timer sweep's cost follows the active and recent experiments, not the table's whole history: it
read every record every 5 minutes (all in memory at once), so a table of a year's experiments made each
timer run slower and larger. It still finds every active experiment, however old."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.config import MAX_RUN_SECONDS
from shared.handlers import sweep
from shared.handlers.sweeper import SWEEP_HORIZON, swept_experiments
from shared.records import ExperimentRecord, ExperimentStatus, utcnow
from tests.control_plane import local_context

S = ExperimentStatus


def stored(ctx, experiment_id: str, status: ExperimentStatus, age: timedelta, **fields) -> ExperimentRecord:
    at = utcnow() - age
    record = ExperimentRecord(
        id=experiment_id,
        name=experiment_id,
        spec={},
        status=status,
        created_at=at,
        updated_at=at,
        last_progress_at=at,
        **fields,
    )
    return ctx.store.create_experiment(record)


class CountingStore:
    """The real local store, counting the records its listings return."""

    def __init__(self, store) -> None:
        self._store = store
        self.listed = 0

    def list_experiments(self, *args, **kwargs):
        page, token = self._store.list_experiments(*args, **kwargs)
        self.listed += len(page)
        return page, token

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def ctx(tmp_path):
    return local_context(tmp_path)


def test_the_horizon_outlasts_the_longest_run_and_the_cost_guards_grace():
    assert SWEEP_HORIZON.total_seconds() > MAX_RUN_SECONDS * 1.1 + 300 + 3600


def test_old_settled_history_is_not_read_and_old_active_experiments_still_are(ctx):
    old = SWEEP_HORIZON + timedelta(days=30)
    for n in range(300):
        stored(ctx, f"exp-old-{n:03d}", S.COMPLETED, old + timedelta(minutes=n), torn_down=True)
    stuck = stored(ctx, "exp-old-running", S.RUNNING, old)
    recent = stored(ctx, "exp-recent-done", S.COMPLETED, timedelta(hours=1))  # its teardown event was lost
    counting = CountingStore(ctx.store)
    ctx.store = counting
    ids = [r.id for r in swept_experiments(ctx)]
    assert sorted(ids) == sorted([stuck.id, recent.id])
    assert counting.listed <= 1 + 25  # the active one, and the first page of the others (it holds the horizon)
    report = sweep(ctx, stall_seconds=60)
    assert report["redriven"] == [stuck.id] and report["teardown"] == [recent.id]


def test_an_experiment_changing_status_mid_sweep_is_looked_at_once(ctx):
    for n in range(5):
        stored(ctx, f"exp-{n}", S.RUNNING, timedelta(hours=1))
    ids = [r.id for r in swept_experiments(ctx)]
    assert sorted(ids) == [f"exp-{n}" for n in range(5)]
