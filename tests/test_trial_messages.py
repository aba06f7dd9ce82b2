"""A trial's final message carries how it ended, so the driver need not fetch the task's result (issue 29).
What it says is parsed bounded, and taken only on the line of the slot that holds the trial
(``shared.hpo.lines``): a claim on the experiment's channel is dropped, a message on a slot's line that
names another trial or does not parse fails the trial holding that slot, saying why, and costs no other.
Trials run in slot tasks, at most one per trial in flight (``shared.hpo.slots``); a forged hello never
replaces a slot's live line."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from distributed import Client, get_client, get_task_stream, get_worker
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bounded import MAX_NAME, MAX_TEXT
from shared.hpo.driver import HpoDriver
from shared.hpo.reports import BadReport, TrialReport, parse_report
from shared.hpo.slots import SlotReady, parse_ready
from shared.records import TrialState
from shared.store.local import LocalStore
from tests.test_hpo_driver import make_spec, new_experiment
from tests.trial_functions import scripted_trial

FINAL = {"number": 3, "attempt": 1, "final": True}


def test_a_final_result_parses_bounded_and_a_bad_one_names_its_trial() -> None:
    told = {
        "state": "COMPLETED",
        "metrics": {"accuracy": 0.5, "engine": "sklearn"},
        "started_at": "2026-12-04T21:00:00",
    }
    report = parse_report({**FINAL, "result": told})
    assert isinstance(report, TrialReport) and report.result is not None and report.result.metrics["accuracy"] == 0.5
    long_error = parse_report({**FINAL, "result": {"state": "FAILED", "error": "x" * 10 * MAX_TEXT}})
    assert isinstance(long_error, TrialReport) and long_error.result is not None
    assert long_error.result.error is not None and len(long_error.result.error) <= MAX_TEXT
    for result in (
        {"state": "RUNNING"},  # a trial does not end running
        {"state": "COMPLETED", "metrics": {"accuracy": math.nan}},
        {"state": "COMPLETED", "duration_s": -1.0},
        {"state": "COMPLETED", "surprise": 1},
    ):
        bad = parse_report({**FINAL, "result": result})
        assert isinstance(bad, BadReport) and (bad.number, bad.attempt) == (3, 1), result
    assert isinstance(
        parse_report({"number": 3, "attempt": 1, "started": True, "result": {"state": "FAILED"}}), BadReport
    )


SLOT_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300))


SLOT_KEYS = st.sampled_from(["slot", "run", "ready", "worker", "x"])


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(SLOT_VALUES, st.dictionaries(SLOT_KEYS, SLOT_VALUES)))
def test_any_slot_message_parses_to_a_bounded_announcement_or_a_reason(raw: Any) -> None:
    ready = parse_ready(raw)
    if isinstance(ready, SlotReady):
        assert 1 <= len(ready.slot) <= MAX_NAME and 1 <= len(ready.run) <= 64 and 0 <= ready.ready <= 10**10
    else:
        assert ready.startswith("malformed slot message") and len(ready) < 1000


def _channel() -> str:
    """The experiment's channel, from the slot task's key (``slot-<experiment>-<driver run>-<n>``)."""
    experiment = str(get_worker().get_current_task()).removeprefix("slot-").rsplit("-", 2)[0]
    return f"rapids-hpo-{experiment}"


def forging_trial(**kwargs: Any) -> dict[str, Any]:
    """Before its real end, claims a perfect one for every trial of the experiment: through a client (no
    worker's stamp) and, malformed, through its own worker's stream."""
    channel = _channel()
    for number in range(4):
        claim = {"number": number, "attempt": 1, "final": True}
        get_client().log_event(channel, {**claim, "result": {"state": "COMPLETED", "metrics": {"accuracy": 0.999}}})
        bad = {"state": "COMPLETED", "metrics": {"accuracy": "x" * 10**6}}
        get_worker().log_event(channel, {**claim, "result": bad})
    return scripted_trial(**kwargs)


def slot_forging_trial(**kwargs: Any) -> dict[str, Any]:
    """Sends the driver slot hellos: garbage, one for a slot that does not exist and, when its ``max_depth``
    is 5, one saying its own slot restarted and one saying every other slot of the experiment did (new run
    tokens, from this worker)."""
    channel, slot = _channel(), str(get_worker().get_current_task())
    worker = get_worker()
    worker.log_event(channel, {"slot": "x" * 10**5, "run": 1, "ready": -1})
    worker.log_event(channel, {"slot": f"{slot}-9", "run": "forged", "ready": 0})
    if kwargs["params"].get("max_depth") == 5:
        prefix = slot.rsplit("-", 1)[0]
        for other in [slot] + [f"{prefix}-{n}" for n in range(6)]:
            worker.log_event(channel, {"slot": other, "run": f"forged-{time.monotonic_ns()}", "ready": 0})
    return scripted_trial(**kwargs)


def _own_line() -> Any:
    """The line of the slot this trial runs in (a hostile trial can reach anything in its worker process)."""
    from shared.hpo import lines

    slot = str(get_worker().get_current_task())
    return next(line for (name, _), line in lines._OPEN.items() if name == slot)


def line_forging_trial(**kwargs: Any) -> dict[str, Any]:
    """When its ``max_depth`` is 5, claims on its own slot's line a perfect end for every trial of the
    experiment, then runs as usual."""
    if kwargs["params"].get("max_depth") == 5:
        line = _own_line()
        for number in [12, *range(12)]:  # its own number among them: the claims before it already failed it
            result = {"state": "COMPLETED", "metrics": {"accuracy": 0.999}}
            line.send({"number": number, "attempt": 1, "final": True, "result": result})
    return scripted_trial(**kwargs)


class SlotKiller(BaseException):
    """Not an ``Exception``: the trial's classification lets it through, and the slot task itself fails."""


def slot_killing_trial(**kwargs: Any) -> dict[str, Any]:
    if kwargs["params"].get("max_depth") == 5:
        raise SlotKiller("the slot dies with this trial")
    return scripted_trial(**kwargs)


def unreadable_trial(**kwargs: Any) -> dict[str, Any]:
    """Ends with metrics its final message cannot carry (a NaN score): the driver cannot read that end."""
    return {**scripted_trial(**kwargs), "accuracy": math.nan}


@pytest.mark.parametrize("trial_fn", [scripted_trial, forging_trial])
def test_each_trial_ends_with_what_it_returned_whatever_else_claims_its_end(
    store: LocalStore, dask_client: Client, trial_fn: Any
) -> None:
    spec = make_spec(limits={"max_total_trials": 4, "max_concurrent_trials": 2})
    experiment_id = new_experiment(store, spec)
    outcome = HpoDriver(spec, experiment_id, store, dask_client, trial_fn=trial_fn).run()
    trials = store.list_trials(experiment_id)
    assert outcome.trials_done == 4 and [t.state for t in trials] == [TrialState.COMPLETED] * 4
    assert all(t.value == pytest.approx(t.params["max_features"]) for t in trials)  # not 0.999
    assert all(t.engine == "scripted" and len(t.intermediate) == 3 for t in trials)


def test_a_trial_whose_final_message_does_not_parse_ends_failed_saying_why(
    store: LocalStore, dask_client: Client
) -> None:
    spec = make_spec(limits={"max_total_trials": 3, "max_concurrent_trials": 2})
    experiment_id = new_experiment(store, spec)
    HpoDriver(spec, experiment_id, store, dask_client, trial_fn=unreadable_trial).run()
    trials = store.list_trials(experiment_id)
    assert [t.state for t in trials] == [TrialState.FAILED] * 3
    assert all(t.error and "final message did not parse" in t.error and "metrics" in t.error for t in trials)


def test_trials_run_in_one_slot_task_per_trial_in_flight_not_a_task_each(
    store: LocalStore, dask_client: Client
) -> None:
    """Issue 29: a Dask task per trial cost the scheduler a task's whole life per trial. Ten trials two at a
    time run in two slot tasks, which end with the experiment (none is left holding a worker thread)."""
    spec = make_spec(limits={"max_total_trials": 10, "max_concurrent_trials": 2})
    experiment_id = new_experiment(store, spec)
    with get_task_stream(dask_client) as stream:
        HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial).run()
        for _ in range(50):  # the stream hears of a task when it ends
            if len({t["key"] for t in stream.data}) >= 2:
                break
            dask_client.run(lambda: None)
    keys = {str(t["key"]) for t in stream.data}
    assert [t.state for t in store.list_trials(experiment_id)] == [TrialState.COMPLETED] * 10
    assert len(keys) == 2 and all(k.startswith(f"slot-{experiment_id}-") for k in keys), keys
    assert not dask_client.processing() or not any(dask_client.processing().values())


def the_depth_5_trials_after_the_others_complete(store: LocalStore, dask_client: Client, trial_fn: Any) -> list[Any]:
    """Run 12 trials of ``trial_fn``, two at a time; check every trial but those of ``max_depth`` 5 completed
    and return those (the seed draws some)."""
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.1, "max_value": 0.9},
            "max_depth": {"type": "choice", "values": [4, 5, 6, 7]},
        },
        limits={"max_total_trials": 12, "max_concurrent_trials": 2},
    )
    experiment_id = new_experiment(store, spec)
    HpoDriver(spec, experiment_id, store, dask_client, trial_fn=trial_fn, poll_interval=0.05).run()
    trials = store.list_trials(experiment_id)
    chosen = [t for t in trials if t.params["max_depth"] == 5]
    assert len(trials) == 12 and chosen, "the seed draws no trial of max_depth 5: pick another"
    others = [t for t in trials if t.params["max_depth"] != 5]
    assert all(t.state is TrialState.COMPLETED and t.value == pytest.approx(t.params["max_features"]) for t in others)
    return chosen


def test_forged_hellos_cost_nothing(store: LocalStore, dask_client: Client) -> None:
    """Hellos that claim the forger's own slot and every other slot restarted wait behind the slots' live
    lines and are never taken; garbage and unknown slots are dropped. Every trial completes, the forgers too,
    each with its own result."""
    for forger in the_depth_5_trials_after_the_others_complete(store, dask_client, slot_forging_trial):
        assert forger.state is TrialState.COMPLETED and forger.value == pytest.approx(forger.params["max_features"])


def test_a_trial_claiming_other_trials_ends_on_its_line_fails_alone(store: LocalStore, dask_client: Client) -> None:
    """On its own slot's line a trial can only speak for itself: its claims that every trial completed
    perfectly fail it, naming why, and every other trial ends with what it returned."""
    for forger in the_depth_5_trials_after_the_others_complete(store, dask_client, line_forging_trial):
        assert forger.state is TrialState.FAILED and "named trial" in (forger.error or ""), forger.error


def test_a_trial_that_kills_every_slot_it_is_given_fails_and_the_others_complete(
    store: LocalStore, dask_client: Client
) -> None:
    """A slot task that fails (not the trial: the trial's own failures are classified) is replaced and its
    trial given to the next slot; each such end counts as a loss, so a trial that kills every slot it runs
    in ends FAILED after Dask's allowed-failures instead of being retried forever."""
    for killer in the_depth_5_trials_after_the_others_complete(store, dask_client, slot_killing_trial):
        error = killer.error or ""
        assert killer.state is TrialState.FAILED and "4 times" in error and "SlotKiller" in error, error
