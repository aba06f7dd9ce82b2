"""The stored record typed all the way down (issue 21): the spec is admitted once, at the edge, and only
its shape is checked again when a record is read; a step's own defect fails its experiment at once.

The failure this file reproduces (issue 21): a local run priced as a VM size that the size catalogue
retires mid-run. The record's spec was admitted when the size was current; before, every later read
re-admitted it, so the next poll raised ``ValidationError``, the message was retried and poisoned, and the
experiment failed about 45 minutes later as "stalled". Now the run goes on, and only a new submission of
the size is refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from shared.cost.catalogue import load_catalogue, use_prices_file
from shared.handlers import handle_event, submit_experiment
from shared.ports import RunState
from shared.records import CostLedger, EventType, ExperimentEvent, ExperimentRecord, ExperimentStatus, Transition
from shared.spec import ExperimentSpec, SpecError, load_spec
from tests.control_plane import tiny_spec
from tests.fakes.scripted import ScriptedBackend
from tests.test_spec_generated import documents

S = ExperimentStatus
SIZE = "Standard_NC4as_T4_v3"
"""A current, priced size (the bundled catalogue's cheapest T4)."""


def retire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *sizes: str) -> None:
    """Lay a user's catalogue over the bundled one that retires ``sizes`` (as ``prices refresh`` would)."""
    user = tmp_path / f"retired-{len(sizes)}.yaml"
    retired = {size: {"retired_on": "2027-01-01", "replacement": "Standard_NC8as_T4_v3"} for size in sizes}
    user.write_text(yaml.safe_dump({"retrieved": "2027-01-02", "sizes": {}, "retired": retired}))
    monkeypatch.setattr("shared.cost.catalogue._prices_file", "")  # restored after the test
    use_prices_file(user)  # as the edge does with Settings.prices_file
    assert load_catalogue().check(sizes[0]).error


def step(ctx) -> str:
    """Deliver the next queued event as the host does (a raise leaves the message for redelivery)."""
    (message,) = ctx.events.receive(1, visibility_timeout=60)
    outcome = handle_event(ctx, message.body)
    ctx.events.delete(message)
    return outcome


@pytest.fixture
def ctx(ctx):
    ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING])
    return ctx


def priced_spec(**limits: float) -> dict:
    document = tiny_spec(compute={"backend": "local", "n_workers": 2, "equivalent_vm_size": SIZE})
    document["limits"] = {**document["limits"], **limits}
    return document


def test_a_size_the_catalogue_retires_mid_run_leaves_the_run_going(ctx, tmp_path, monkeypatch):
    record, _ = submit_experiment(ctx, load_spec(priced_spec()))
    assert [step(ctx) for _ in range(3)] == ["provisioned", "submitted", "running"]
    assert ctx.store.get_experiment(record.id).cost is not None  # priced as SIZE

    retire(tmp_path, monkeypatch, SIZE)
    assert step(ctx) == "running"  # before: ValidationError, the message retried until poisoned
    running = ctx.store.get_experiment(record.id)
    assert running.status is S.RUNNING and running.run_spec.compute.vm_sizes() == {"equivalent_vm_size": SIZE}
    assert running.cost is not None and running.cost.spent_usd >= 0.0  # still priced: the price is still listed

    ctx.backends["local"].polls = [RunState.SUCCEEDED]
    assert [step(ctx) for _ in range(3)] == ["finished", "failed", "torn down"]  # no trial: FAILED, but by the run
    assert ctx.store.get_experiment(record.id).error == "no trial completed"

    with pytest.raises(SpecError) as refused:  # a new submission is admitted now: the retirement counts
        load_spec(priced_spec())
    assert [e["loc"] for e in refused.value.errors] == ["compute.equivalent_vm_size"]
    assert "retired" in refused.value.errors[0]["msg"] and "Standard_NC8as_T4_v3" in refused.value.errors[0]["msg"]


def test_a_budget_admitted_priced_stays_enforced_after_its_size_is_retired(ctx, tmp_path, monkeypatch):
    """The budget rule (a price for every billed node) is an admission rule too: a stored budget is kept."""
    record, _ = submit_experiment(ctx, load_spec(priced_spec(max_cost=5.0)))
    retire(tmp_path, monkeypatch, SIZE)
    assert [step(ctx) for _ in range(3)] == ["provisioned", "submitted", "running"]
    cost = ctx.store.get_experiment(record.id).cost
    assert cost is not None and cost.budget_usd == 5.0


class Defect(Exception):
    """Stands for a bug in a step: nothing a redelivery changes."""


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("missing"), Defect("a bug")])
def test_a_defect_in_a_step_fails_the_experiment_at_once_with_the_reason(ctx, monkeypatch, error):
    """A step's own error (not the backend's, not the store's or the network's) fails the same way at every
    redelivery: the experiment is FAILED at once with the reason and torn down, instead of a message retried
    into the poison queue and an experiment failed as "stalled" 45 minutes later."""
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    assert [step(ctx) for _ in range(3)] == ["provisioned", "submitted", "running"]
    backend = ctx.backends["local"]

    def broken(record: ExperimentRecord) -> None:
        raise error

    monkeypatch.setattr(backend, "poll", broken)
    assert step(ctx) == "failed"  # not raised: the message is done with
    failed = ctx.store.get_experiment(record.id)
    assert failed.status is S.FAILED and failed.ended_at is not None
    assert failed.error is not None and type(error).__name__ in failed.error and "poll" in failed.error
    assert failed.history[-1] == Transition(at=failed.history[-1].at, status=S.FAILED, reason="step error")
    assert step(ctx) == "torn down" and ctx.events.count() == 0


@pytest.mark.parametrize("error", [OSError("connection reset"), TimeoutError("read timed out")])
def test_a_transient_error_in_a_step_is_left_to_the_redelivery(ctx, monkeypatch, error):
    """The network or the store failing may pass: the message is redelivered and the record is unchanged."""
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    assert [step(ctx) for _ in range(3)] == ["provisioned", "submitted", "running"]
    before = ctx.store.get_experiment(record.id)
    (message,) = ctx.events.receive(1, visibility_timeout=60)
    monkeypatch.setattr(ctx.backends["local"], "poll", lambda record: (_ for _ in ()).throw(error))
    with pytest.raises(type(error)):
        handle_event(ctx, message.body)
    assert ctx.store.get_experiment(record.id).version == before.version
    monkeypatch.undo()
    assert handle_event(ctx, message.body) == "running"  # the redelivery acts


# ------------------------------------------------------------------------------ the stored form
PREVIOUS_VERSION_RECORD = {
    "id": "exp-old",
    "name": "old",
    "status": "RUNNING",
    "spec": {**tiny_spec(compute={"backend": "local", "equivalent_vm_size": "Standard_NC6s_v3"}), "tags": {}},
    "history": [
        {"at": "2026-11-01T10:00:00+00:00", "status": "SUBMITTED", "reason": "submitted"},
        {"at": "2026-11-01T10:00:01.5+00:00", "status": "RUNNING", "reason": "run submitted"},
    ],
    "cost": {
        "spent_usd": 0.25,
        "budget_usd": None,
        "basis": "estimate: pay-as-you-go list price",
        "per_trial_usd": {"0": 0.1, "3": 0.15},
        "as_of": "2026-11-01T10:05:00+00:00",
        "stopped": None,
    },
    "event_seq": 3,
}
"""A record as the version before issue 21 stored it: the spec as a plain document (naming a size the
bundled catalogue retired), transitions as dicts with ISO times, the ledger as a dict."""


def test_a_record_stored_by_the_previous_version_reads_typed():
    record = ExperimentRecord.model_validate_json(json.dumps(PREVIOUS_VERSION_RECORD))
    assert load_catalogue().check("Standard_NC6s_v3").error  # retired: admission would refuse it
    assert isinstance(record.spec, ExperimentSpec) and record.goal == "maximize"
    assert record.history[1] == Transition(
        at=datetime(2026, 11, 1, 10, 0, 1, 500000, tzinfo=UTC), status=S.RUNNING, reason="run submitted"
    )
    assert isinstance(record.cost, CostLedger) and record.cost.per_trial_usd == {0: 0.1, 3: 0.15}
    refused = ExperimentRecord.model_validate({**PREVIOUS_VERSION_RECORD, "status": "FAILED", "spec": {}})
    assert refused.spec is None and refused.objective == ("accuracy", "maximize")
    again = ExperimentRecord.model_validate_json(record.model_dump_json())
    assert again == record


def test_the_local_store_reads_back_what_the_previous_version_wrote(tmp_path):
    from shared.store.local import LocalStore

    store = LocalStore(tmp_path / "store")
    store.create_experiment(ExperimentRecord.model_validate(PREVIOUS_VERSION_RECORD))
    assert store.get_experiment("exp-old").run_spec.compute.vm_sizes() == {"equivalent_vm_size": "Standard_NC6s_v3"}


def no_catalogue() -> None:
    raise AssertionError("reading a stored record consulted the size catalogue")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_an_admitted_spec_reads_back_equal_without_the_catalogue(document):
    """Every spec the edge admits (generated, hostile ones included) is stored and read back equal, and the
    read never consults the size catalogue: whatever it retires or reprices since changes nothing there."""
    try:
        spec = load_spec(document)
    except SpecError:
        return
    stored = ExperimentRecord(id="exp-x", name=spec.name, spec=spec).model_dump_json()
    with mock.patch("shared.cost.catalogue.load_catalogue", no_catalogue):
        assert ExperimentRecord.model_validate_json(stored).spec == spec


def test_a_step_reads_the_typed_spec_and_never_re_admits_it(ctx, monkeypatch):
    """No step calls admission: after submit, every admission would fail, and the run still completes."""
    from shared.spec import admission, loading

    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stored spec was admitted again")

    for module, name in ((admission, "admit"), (admission, "admission_problems"), (loading, "admit")):
        monkeypatch.setattr(module, name, refuse)
    ctx.backends["local"].polls = [RunState.SUCCEEDED]
    assert [step(ctx) for _ in range(3)] == ["provisioned", "submitted", "finished"]
    assert step(ctx) == "failed" and ctx.store.get_experiment(record.id).error == "no trial completed"
    event = ExperimentEvent(type=EventType.TEARDOWN, experiment_id=record.id, seq=0)
    assert handle_event(ctx, event.model_dump_json()) == "stale"


def test_a_warm_start_from_an_experiment_whose_size_was_retired_since(ctx, tmp_path, monkeypatch):
    """The earlier experiment's spec is read as it was admitted (before: ``load_spec`` of it, which refused
    the warm start once the catalogue retired a size it names)."""
    from shared.handlers.warm_start import read_seed
    from shared.records import TrialRecord, TrialState

    earlier = ExperimentRecord(id="exp-earlier", name="earlier", spec=priced_spec(), status=S.COMPLETED)
    ctx.store.create_experiment(earlier)
    params = {"n_estimators": 5, "max_depth": 4, "max_features": 0.5}
    ctx.store.put_trial(TrialRecord(experiment_id="exp-earlier", number=0, params=params, sampler_params=params,
                                    state=TrialState.COMPLETED, value=0.9))  # fmt: skip
    retire(tmp_path, monkeypatch, SIZE)
    spec = load_spec(tiny_spec(warm_start={"experiment": "exp-earlier"}))
    seed = read_seed(ctx.store, spec, lambda record: True)
    assert seed is not None and seed.same_space and [t.number for t in seed.trials] == [0]
