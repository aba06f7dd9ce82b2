"""The plan counts the Pareto front members' refits (issue 25): a run with several objectives refits up to
``output.front_models - 1`` other members after its search, each counted as one trial's time in the top of
the range (none at its bottom); a run with one objective is priced as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from shared.cli import app
from shared.cost.billing import billing_profile
from shared.cost.catalogue import load_catalogue
from shared.cost.estimate import estimate_cost, front_refits, run_time_range
from shared.cost.guard import TIMEOUT_GRACE, TIMEOUT_SLACK_S, time_allowance
from shared.cost.measured import MeasuredTrials, expected_line
from shared.handlers import handle_event, submit_experiment
from shared.ports import RunState
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
from tests.test_cost_plan import example, runner, write

T4 = "Standard_NC4as_T4_v3"
VMCLUSTER = {"backend": "vmcluster", "location": "eastus", "resource_group": "rg", "n_workers": 2}


def flights(objectives: int, **output: int) -> dict:
    """flights-rf: 10 trials, 2 at a time, trial_timeout 300 s, timeout 1800 s; no early stop (Optuna prunes
    one objective only), so the search alone is 5 waves x 300 s = 1500 s at best and at worst."""
    document = example("flights-rf.yaml", **VMCLUSTER)
    document.pop("early_termination")
    if objectives == 2:
        document["objective"] |= {"also": [{"metric": "model_size_mb"}]}
        document["sampling_algorithm"] = {"type": "nsga2", "seed": 1}
    if output:
        document["output"] = output
    return document


@pytest.mark.parametrize(
    ("objectives", "output", "trials", "refits"),
    [
        (1, {}, 10, 0),  # one objective: the best model alone, as before
        (1, {"front_models": 10}, 10, 0),  # the field does nothing without a front
        (2, {}, 10, 4),  # the default 5 kept: the best's refit and four more
        (2, {"front_models": 1}, 10, 0),  # the best alone kept
        (2, {"front_models": 10}, 3, 2),  # a front holds at most every trial
    ],
)
def test_the_top_of_the_range_adds_one_trials_time_per_front_refit(
    objectives: int, output: dict[str, int], trials: int, refits: int
) -> None:
    document = flights(objectives, **output)
    document["limits"]["max_total_trials"] = trials
    spec = load_spec(document)
    times = run_time_range(spec)
    search = 300.0 * -(-trials // 2)  # waves of two trials, 300 s each
    assert front_refits(spec) == times.front_refits == refits
    assert times.low_s == search  # the front may be the best alone: nothing added at best
    assert times.high_s == search + refits * 300.0
    estimate = estimate_cost(spec, load_catalogue(""))
    assert estimate.node_hours_high == pytest.approx(billing_profile(spec).node_hours(search + refits * 300.0))


def test_front_refits_run_after_the_search_so_past_the_timeout_cap() -> None:
    """limits.timeout stops the search, not the refits after it: 1800 s of search plus four refits."""
    document = flights(2)
    document["limits"]["max_total_trials"] = 40  # 20 waves x 300 s, capped at the 1800 s timeout
    times = run_time_range(load_spec(document))
    assert times.low_s == 1800.0 and times.high_s == 1800.0 + 4 * 300.0


def test_the_plan_says_so_with_several_objectives_and_nothing_changes_with_one(tmp_path) -> None:
    single = runner.invoke(app, ["plan", str(write(tmp_path, flights(1)))], env={"COLUMNS": "200"})
    assert single.exit_code == 0, single.output
    assert "front" not in single.output and "0.42-0.42 h of wall time" in single.output  # 1500 s
    multi = runner.invoke(app, ["plan", str(write(tmp_path, flights(2)))], env={"COLUMNS": "200"})
    assert multi.exit_code == 0, multi.output
    text = " ".join(multi.output.split())
    assert "0.42-0.75 h of wall time" in text  # 1500 s to 1500 + 4 x 300 s
    assert "then: up to 4 refits of other Pareto front members on all rows (output.front_models 5" in text
    assert "each counted as one trial's time; at best none" in text

    single_yaml = yaml.safe_load(runner.invoke(app, ["plan", str(write(tmp_path, flights(1))), "-o", "yaml"]).output)
    assert "front_refits" not in single_yaml["plan"]
    plan = yaml.safe_load(runner.invoke(app, ["plan", str(write(tmp_path, flights(2))), "-o", "yaml"]).output)["plan"]
    assert plan["front_refits"] == {"count": 4, "seconds_each_at_most": 300.0}
    assert plan["wall_time_hours"] == {"low": round(1500 / 3600, 4), "high": round(2700 / 3600, 4)}
    assert plan["cost"]["usd_high"] > single_yaml["plan"]["cost"]["usd_high"]
    assert plan["cost"]["usd_low"] == single_yaml["plan"]["cost"]["usd_low"]


def test_a_budget_the_front_refits_would_pass_is_flagged(tmp_path) -> None:
    """A budget between the search's top and the search plus its refits: within it with one objective,
    EXCEEDED with two (the refits cost as much as any other node-hour)."""
    single = estimate_cost(load_spec(flights(1)), load_catalogue(""))
    multi = estimate_cost(load_spec(flights(2)), load_catalogue(""))
    assert single.usd_high is not None and multi.usd_high is not None and multi.usd_high > single.usd_high
    budget = round((single.usd_high + multi.usd_high) / 2, 2)
    for objectives, exceeds in [(1, False), (2, True)]:
        document = flights(objectives)
        document["limits"]["max_cost"] = budget
        path = write(tmp_path, document)
        plan = yaml.safe_load(runner.invoke(app, ["plan", str(path), "-o", "yaml"]).output)["plan"]
        assert plan["exceeds_budget"] is exceeds, (objectives, plan)


def test_the_expected_time_counts_the_refits_at_a_measured_trials_mean() -> None:
    measured = MeasuredTrials("exp-20261204100000-aaaaaa", datetime(2026, 12, 4, 12, tzinfo=UTC), 10, 60.0)
    single = expected_line(load_spec(flights(1)), measured)
    assert single.startswith("~5.0 min: 5 waves of 2 trials x 60 s")
    multi = expected_line(load_spec(flights(2)), measured)
    assert multi.startswith("~9.0 min: (5 waves of 2 trials + up to 4 front model refits) x 60 s")


# ------------------------------------------------------------------- the cost guard (shared/cost/guard.py)
@pytest.mark.parametrize(("objectives", "front_models"), [(1, 5), (2, 1), (2, 3), (2, 5)])
def test_the_guard_allows_the_plans_front_refits_and_nothing_more(objectives: int, front_models: int) -> None:
    """The guard's allowance past the timeout's is the plan's refit time (its top minus the search's), with
    the same grace: the plan and the guard count the refits alike."""
    document = flights(objectives, front_models=front_models)
    document["limits"]["max_total_trials"] = 40  # the search alone reaches the 1800 s timeout
    spec = load_spec(document)
    times = run_time_range(spec)
    search_only = 1800.0 * TIMEOUT_GRACE + TIMEOUT_SLACK_S
    assert time_allowance(spec) == pytest.approx(search_only + (times.high_s - 1800.0) * TIMEOUT_GRACE)
    assert time_allowance(spec) == pytest.approx(search_only + front_refits(spec) * 300.0 * TIMEOUT_GRACE)


def test_the_guard_does_not_fail_a_run_in_its_front_refits_and_still_fails_one_past_them(tmp_path) -> None:
    """Through the state machine: the search used the whole 600 s timeout and the run goes on, refitting its
    two other front members (3 trials, front_models 3; 120 s each by trial_timeout): at 1000 s, past the old
    600 x 1.1 + 300 = 960 s, it still runs; past (600 + 2 x 120) x 1.1 + 300 = 1224 s it fails. The same
    1000 s fails a run with one objective (no refits)."""
    limits = {"max_total_trials": 3, "max_concurrent_trials": 2, "timeout": 600, "trial_timeout": 120}
    multi = {"objective": {"primary_metric": "accuracy", "goal": "maximize", "also": [{"metric": "model_size_mb"}]},
             "sampling_algorithm": {"type": "nsga2", "seed": 1}, "output": {"front_models": 3}}  # fmt: skip
    outcomes = {}
    for name, changes in [("multi", multi), ("single", {})]:
        ctx = local_context(tmp_path / name)
        ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING])
        record, _ = submit_experiment(ctx, load_spec(tiny_spec(limits=limits, **changes)))
        assert time_allowance(ctx.store.get_experiment(record.id).run_spec) == pytest.approx(
            1224.0 if name == "multi" else 960.0
        )
        steps = []
        for back in [None, None, None, 1000, 1230]:
            if back is not None:
                current = ctx.store.get_experiment(record.id)
                started = datetime.now(UTC) - timedelta(seconds=back)
                ctx.store.update_experiment(current.model_copy(update={"started_at": started}))
            (message,) = ctx.events.receive(1, visibility_timeout=60)
            steps.append(handle_event(ctx, message.body))
            ctx.events.delete(message)
            if steps[-1] == "budget exceeded":
                break
        outcomes[name] = (steps[3:], ctx.store.get_experiment(record.id))
    steps, final = outcomes["multi"]
    assert steps == ["running", "budget exceeded"], steps
    assert final.error is not None and "timeout of 600 s and 2 front refits" in final.error
    steps, final = outcomes["single"]
    assert steps == ["budget exceeded"], steps
    assert final.error is not None and "allowance of 960 s for the experiment timeout of 600 s" in final.error
