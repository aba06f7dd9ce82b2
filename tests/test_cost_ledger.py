"""The cost ledger with an injected clock and price table: per trial, head, idle; the budget guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from shared.cost.catalogue import load_catalogue
from shared.cost.ledger import BudgetGuard, Rates, compute_ledger, rates_for
from shared.records import TrialRecord, TrialState
from shared.spec import load_spec
from tests.control_plane import tiny_spec

T0 = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def trial(number: int, start: float, end: float | None) -> TrialRecord:
    return TrialRecord(
        experiment_id="exp",
        number=number,
        params={},
        state=TrialState.RUNNING if end is None else TrialState.COMPLETED,
        started_at=at(start),
        ended_at=None if end is None else at(end),
        duration_s=None if end is None else end - start,
    )


def prices(tmp_path, **by_size: float):
    """A price table of our own (a user's file), so the figures below are exact."""
    sizes = {
        name: {
            "family": "test",
            "gpu": "T4",
            "gpus": gpus,
            "gpu_memory_gb": 16,
            "compute_capability": "7.5",
            "vcpus": 4,
            "memory_gb": 28,
            "prices": {"eastus": {"payg": price, "spot": price / 10}},
        }
        for name, (price, gpus) in by_size.items()
    }
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"retrieved": "2027-01-01", "sizes": sizes}))
    return load_catalogue(path)


def test_a_vm_fleet_bills_trials_idle_time_and_the_scheduler(tmp_path):
    catalogue = prices(tmp_path, Standard_W1=(3.6, 2), Standard_S1=(0.36, 1))  # $0.001/s, $0.0001/s
    spec = load_spec(
        tiny_spec(
            compute={
                "backend": "vmcluster",
                "location": "eastus",
                "resource_group": "rg",
                "n_workers": 2,
                "vm_size": "Standard_W1",
                "scheduler_vm_size": "Standard_S1",
            }
        )
    )
    rates = rates_for(spec, catalogue)
    assert rates.slot == pytest.approx(0.0005)  # one GPU of a 2-GPU VM
    ledger = compute_ledger(rates, [trial(0, 0, 100), trial(1, 50, None)], at(0), at(200), budget_usd=1.0)
    assert ledger.per_trial_usd == {0: pytest.approx(0.05), 1: pytest.approx(0.075)}
    assert ledger.head_usd == pytest.approx(0.02)
    fleet = 2 * 0.001 * 200
    assert ledger.idle_usd == pytest.approx(fleet - 0.125)
    assert ledger.spent_usd == pytest.approx(fleet + 0.02)
    assert ledger.node_seconds == 400 and not ledger.exhausted
    assert ledger.public() == {"spent_usd": pytest.approx(0.42), "budget_usd": 1.0, "basis": ledger.basis}


def test_autoscaled_nodes_bill_trials_then_the_scale_down_wait(tmp_path):
    catalogue = prices(tmp_path, Standard_N1=(3.6, 1))
    spec = load_spec(
        tiny_spec(
            compute={
                "backend": "azureml",
                "vm_size": "Standard_N1",
                "max_instances": 2,
                "idle_time_before_scale_down": 60,
            }
        )
    )
    rates = rates_for(spec, catalogue)
    trials = [trial(0, 0, 100), trial(1, 0, 150)]
    during = compute_ledger(rates, [trial(0, 0, 100), trial(1, 0, None)], at(0), at(120))
    assert during.idle_usd == 0 and during.spent_usd == pytest.approx(0.1 + 0.12)
    after = compute_ledger(rates, trials, at(0), at(400))
    assert after.trials_usd == pytest.approx(0.25)
    assert after.idle_usd == pytest.approx(2 * 0.001 * 60)  # each node's wait, capped at the setting
    assert "reference region" in after.basis


def test_local_runs_price_their_equivalent_size_as_an_estimate(tmp_path):
    catalogue = prices(tmp_path, Standard_L1=(7.2, 1))
    spec = load_spec(tiny_spec(compute={"backend": "local", "n_workers": 2, "equivalent_vm_size": "Standard_L1"}))
    ledger = compute_ledger(rates_for(spec, catalogue), [trial(0, 0, 10)], at(0), at(10))
    assert ledger.basis.startswith("estimate") and ledger.spent_usd == pytest.approx(2 * 0.002 * 10)
    assert rates_for(load_spec(tiny_spec()), catalogue) is None  # no size named: no ledger


def test_spot_and_low_priority_are_priced_at_their_tier(tmp_path):
    catalogue = prices(tmp_path, Standard_N1=(3.6, 1))
    spec = load_spec(tiny_spec(compute={"backend": "azureml", "vm_size": "Standard_N1", "low_priority": True}))
    assert rates_for(spec, catalogue).node == pytest.approx(0.0001)


RATES = Rates(
    slot=0.01, fleet=0.0, head=0.0, node=0.01, tail_s=0.0, tail_nodes=0, fleet_nodes=0, max_trial_s=100.0, basis="test"
)  # $1 per worst-case trial


def test_the_guard_launches_only_what_the_budget_can_pay_for_at_worst():
    guard = BudgetGuard(RATES, budget_usd=2.5, started_at=at(0))
    assert guard.can_launch([], at(0))  # 0 + $1
    assert guard.can_launch([trial(0, 0, None)], at(0))  # $1 left to run + $1
    assert not guard.can_launch([trial(0, 0, None), trial(1, 0, None)], at(0))  # $3 at worst
    assert guard.can_launch([trial(0, 0, 10), trial(1, 0, 10)], at(10))  # $0.20 spent + $1
    assert not guard.can_launch([trial(0, 0, 100), trial(1, 0, 100)], at(100))  # $2 spent + $1 > $2.50


def test_the_guard_stops_at_the_budget_and_projects_from_the_longest_trial_without_a_timeout():
    rates = Rates(**{**RATES.__dict__, "max_trial_s": None})
    guard = BudgetGuard(rates, budget_usd=1.0, started_at=at(0))
    assert guard.can_launch([trial(0, 0, None)], at(10))  # nothing finished: no projection, not spent
    assert not guard.can_launch([trial(0, 0, 60)], at(60))  # longest trial 60 s: $0.60 + $0.60 > $1
    assert guard.exhausted([trial(0, 0, None)], at(100)) and not guard.can_launch([trial(0, 0, None)], at(100))
