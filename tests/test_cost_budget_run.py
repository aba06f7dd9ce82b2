"""The budget at run time: the driver on a real Dask LocalCluster, and the control plane's hard stop."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.config import Settings
from shared.cost.ledger import BUDGET_REACHED, BudgetGuard, Rates
from shared.hpo.driver import HpoDriver
from shared.ports import RunState
from shared.records import ExperimentStatus, TrialState
from shared.store.local import LocalStore
from tests.test_hpo_driver import make_spec, new_experiment
from tests.trial_functions import scripted_trial


def rates(slot_per_s: float, max_trial_s: float | None) -> Rates:
    """A price table of our own: autoscaled nodes at ``slot_per_s`` USD per second, no head, no tail."""
    return Rates(slot=slot_per_s, fleet=0.0, head=0.0, node=slot_per_s, tail_s=0.0, tail_nodes=0, fleet_nodes=0,
                 max_trial_s=max_trial_s, basis="test prices")  # fmt: skip


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_the_driver_launches_no_trial_that_could_pass_the_budget_and_keeps_its_best(tmp_path, dask_client):
    store = LocalStore(tmp_path / "store")
    spec = make_spec(limits={"max_total_trials": 40, "max_concurrent_trials": 2, "trial_timeout": 2})
    experiment_id = new_experiment(store, spec)
    # $0.50/s: a trial's worst case (2 s) is $1; a $1.30 budget allows one at a time and stops once $0.30
    # is spent (each trial takes 60 ms or more: well before 40 trials).
    guard = BudgetGuard(rates(0.5, 2.0), budget_usd=1.3, started_at=datetime.now(UTC))
    outcome = HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial, budget=guard).run()
    trials = store.list_trials(experiment_id)
    assert outcome.status == "COMPLETED" and outcome.reason == BUDGET_REACHED and outcome.best is not None
    assert 1 <= len(trials) < 40 and all(t.state is TrialState.COMPLETED for t in trials)
    assert guard.ledger(trials, datetime.now(UTC)).spent_usd <= 1.3
    ends = sorted((t.started_at, t.ended_at) for t in trials)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(ends))  # one at a time


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_the_hard_stop_at_the_budget_stops_what_runs(tmp_path, dask_client):
    store = LocalStore(tmp_path / "store")
    spec = make_spec(
        trial={"model": "random_forest", "cv_folds": 3, "params": {"min_samples_leaf": 7}},  # hangs a minute
        limits={"max_total_trials": 1, "max_concurrent_trials": 1},
    )
    experiment_id = new_experiment(store, spec)
    guard = BudgetGuard(rates(1.0, None), budget_usd=1.5, started_at=datetime.now(UTC))
    outcome = HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial, budget=guard,
                        hard_stop_grace=1.0).run()  # fmt: skip
    (trial,) = store.list_trials(experiment_id)
    assert "budget" in trial.error and trial.duration_s < 30
    assert outcome.status == "FAILED" and outcome.reason == f"{BUDGET_REACHED} before any trial completed"
    dask_client.wait_for_workers(2, timeout=60)


# ------------------------------------------------------------------------------- the control plane
def test_the_control_plane_stops_a_run_at_the_budget_and_completes_it_with_its_best(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from shared.api import create_api
    from shared.context import set_context
    from shared.handlers import handle_event, machine, submit_experiment
    from shared.records import TrialRecord
    from shared.spec import load_spec
    from tests.control_plane import local_context, tiny_spec
    from tests.fakes.scripted import ScriptedBackend

    ctx = local_context(tmp_path)
    backend = ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING])
    document = tiny_spec(compute={"backend": "local", "n_workers": 2, "equivalent_vm_size": "Standard_NC4as_T4_v3"})
    document.setdefault("limits", {})["max_cost"] = 1.0
    record, _ = submit_experiment(ctx, load_spec(document))

    def step() -> str:
        (message,) = ctx.events.receive(1, visibility_timeout=60)
        outcome = handle_event(ctx, message.body)
        ctx.events.delete(message)
        return outcome

    step(), step()  # provision, submit: RUNNING
    ctx.store.put_trial(TrialRecord(experiment_id=record.id, number=0, params={"max_depth": 4},
                                    state=TrialState.COMPLETED, value=0.8, metrics={"accuracy": 0.8},
                                    duration_s=60.0, ended_at=datetime.now(UTC)))  # fmt: skip
    assert step() == "running"  # a minute in: cents
    cost = ctx.store.get_experiment(record.id).cost
    assert cost is not None and cost.spent_usd < 1.0 and cost.basis.startswith("estimate") and cost.budget_usd == 1.0
    later = datetime.now(UTC) + timedelta(hours=2)  # 2 workers x $0.526 x 2 h > $1
    monkeypatch.setattr(machine, "utcnow", lambda: later)
    assert step() == BUDGET_REACHED
    assert backend.count("cancel") == 1
    assert step() == "completed"
    final = ctx.store.get_experiment(record.id)
    assert final.status is ExperimentStatus.COMPLETED and final.best is not None and final.best.value == 0.8
    assert final.history[-1].reason == BUDGET_REACHED and final.cost.stopped == BUDGET_REACHED
    set_context(ctx)
    try:
        body = (
            TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost")
            .get(f"/api/experiments/{record.id}")
            .json()
        )
    finally:
        set_context(None)
    assert body["cost"]["budget_usd"] == 1.0 and body["cost"]["spent_usd"] > 1.0
    assert body["cost"]["basis"].startswith("estimate")
    status = json.loads(machine.status_message(final))
    assert status["cost"]["budget_usd"] == 1.0 and status["cost"]["spent_usd"] > 1.0
    from shared.events.catalog import status_changed

    assert status_changed(final, "/test").data["cost"] == status["cost"]  # the experiment's status event


def test_an_unpriced_run_has_no_ledger():
    from shared.cost.guard import run_ledger
    from shared.records import ExperimentRecord
    from tests.control_plane import tiny_spec

    record = ExperimentRecord(id="exp-x", name="x", spec=tiny_spec(), started_at=datetime.now(UTC))
    assert run_ledger(record, [], datetime.now(UTC)) is None
