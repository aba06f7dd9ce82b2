"""The conformance suite every ``ComputeBackend`` passes (in the spirit of Optuna's ``StorageTestCase``).

The harnesses that build each adapter and play its compute's part are in ``tests/conformance/backend.py``;
the tests read the backend's ``capabilities`` instead of skipping per adapter. A new backend adds a
harness there and passes every test here (see CONTRIBUTING.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.backends import REGISTRY, get_planner
from shared.config import MODEL_PREFIX
from shared.ports import BackendHandle, ComputeBackend, OrphanFinder, Planner, RunState
from shared.records import ExperimentRecord, ExperimentStatus
from shared.spec import ExperimentSpec, load_spec
from tests.conformance.backend import (
    FAKE_HARNESSES,
    HARNESSES,
    Harness,
    apply_update,
    new_record,
    poll,
    run_to,
    submitted,
)
from tests.control_plane import local_context


def test_every_registered_backend_has_a_harness() -> None:
    assert set(HARNESSES) == set(REGISTRY)


EVERY_HARNESS = {**HARNESSES, **FAKE_HARNESSES}


def _harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    made = EVERY_HARNESS[request.param](local_context(tmp_path / "home", poll_seconds=0), tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=sorted(HARNESSES))
def registered_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A registered backend's harness (the registry's own checks)."""
    yield from _harness(request, tmp_path)


@pytest.fixture(params=sorted(EVERY_HARNESS))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from _harness(request, tmp_path)


SLOW_RUNS = {"local"}
"""Adapters whose run to SUCCEEDED, or to a cancel's end, is a real driver's run (tens of seconds): those
cases are ``slow``."""


@pytest.fixture(
    params=[pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_RUNS else []) for n in sorted(EVERY_HARNESS)]
)
def full_run_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness for the tests whose run ends by itself (SUCCEEDED, or CANCELLED once its trials stop)."""
    yield from _harness(request, tmp_path)


# ------------------------------------------------------------------------------------------ tests
def test_declares_the_contract(registered_harness: Harness) -> None:
    harness = registered_harness
    backend = harness.backend()
    assert isinstance(backend, ComputeBackend) and backend.name == harness.id
    assert issubclass(backend.handle_type, BackendHandle)
    assert backend.handle_type.model_validate({}).kind == backend.name  # an empty handle is valid: it grows
    assert backend.capabilities.finds_orphans == isinstance(backend, OrphanFinder)
    assert backend.capabilities == REGISTRY[backend.name].capabilities  # what the registry (and the timer) read
    assert backend.capabilities.model_from in {"driver", "finalize"}
    planner = get_planner(backend.name)
    assert isinstance(planner, Planner) and type(planner) is type(backend.planner)
    spec = ExperimentSpec.model_validate(load_spec(harness.spec()).to_document())
    json.dumps(planner.dry_run(spec), default=str)  # JSON-able: rapids-hpo plan prints it
    assert planner.describe(spec) and all(isinstance(line, str) for line in planner.describe(spec))
    profile = spec.compute.billing(spec)  # the backend's compute section declares how it bills
    hours = [profile.node_hours(s, overheads=False) for s in (0, 3600, 7200)]
    assert hours[0] == 0 and 0 <= hours[1] <= hours[2]
    assert profile.node_hours(3600) >= hours[1], "estimates add start-up and idle tails, never less"
    assert profile.billed == backend.capabilities.cloud_resources, "what creates Azure resources bills them"
    if backend.capabilities.cloud_resources:
        assert hours[1] > 0, "a backend that creates billed resources counts their node-hours"
    resized = spec.compute.billing(spec, "Standard_NC24ads_A100_v4", profile.cheap_tier).trial_nodes
    assert (resized.vm_size, resized.tier) == ("Standard_NC24ads_A100_v4", profile.cheap_tier)


def test_lifecycle_in_order_and_every_call_repeatable(full_run_harness: Harness) -> None:
    harness = full_run_harness
    backend = harness.backend()
    record = new_record(harness)
    record = apply_update(harness, record, backend.provision(record))
    again = apply_update(harness, record, backend.provision(record), repeat=True)
    assert again.backend_state == record.backend_state, "provision twice is provision once"
    record = apply_update(harness, again, backend.submit(again))
    started = harness.live(record)
    record = apply_update(harness, record, backend.submit(record), repeat=True)
    assert harness.live(record) == started, "a repeated submit starts nothing more"
    record, status = poll(harness, record)
    assert status.state in {RunState.PENDING, RunState.RUNNING, RunState.SUCCEEDED}
    harness.finish(record, RunState.SUCCEEDED)
    record, status = poll(harness, harness.ctx.store.get_experiment(record.id))
    assert status.state is RunState.SUCCEEDED, status
    stored_by_run = bool(harness.ctx.store.list_artifacts(record.id, MODEL_PREFIX))
    assert stored_by_run == (backend.capabilities.model_from == "driver"), "model_from says who stores the model"
    for repeat in (False, True):
        record = apply_update(harness, record, backend.finalize(record), repeat=repeat)
    assert harness.ctx.store.list_artifacts(record.id, MODEL_PREFIX), "finalize leaves the best model stored"
    for repeat in (False, True):
        record = apply_update(harness, record, backend.teardown(record), repeat=repeat)
    assert harness.live(record) == 0


@pytest.mark.parametrize("stage", ["provisioned", "submitted", "terminal"])
def test_cancel_at_each_state_then_teardown_leaves_nothing(harness: Harness, stage: str) -> None:
    backend = harness.backend()
    record = new_record(harness)
    record = apply_update(harness, record, backend.provision(record))
    if stage != "provisioned":
        record = apply_update(harness, record, backend.submit(record))
    if stage == "terminal":
        record = _run_to_cancelled_or_failed(harness, record)
    for repeat in (False, True):  # cancel is idempotent, in every state
        record = apply_update(harness, record, backend.cancel(record), repeat=repeat)
    for repeat in (False, True):
        record = apply_update(harness, record, backend.teardown(record), repeat=repeat)
    assert harness.live(record) == 0


def _run_to_cancelled_or_failed(h: Harness, record: ExperimentRecord) -> ExperimentRecord:
    h.finish(record, RunState.FAILED)
    record, status = poll(h, h.ctx.store.get_experiment(record.id))
    assert status.state is RunState.FAILED
    return record


def test_teardown_after_failure(harness: Harness) -> None:
    _teardown_after(harness, RunState.FAILED)


def test_teardown_after_a_cancel(full_run_harness: Harness) -> None:
    _teardown_after(full_run_harness, RunState.CANCELLED)


def test_teardown_after_success(full_run_harness: Harness) -> None:
    _teardown_after(full_run_harness, RunState.SUCCEEDED)


def _teardown_after(harness: Harness, state: RunState) -> None:
    record = run_to(harness, state)
    if state is RunState.SUCCEEDED:
        record = apply_update(harness, record, harness.backend().finalize(record))
    for repeat in (False, True):
        record = apply_update(harness, record, harness.backend().teardown(record), repeat=repeat)
    assert harness.live(record) == 0
    record, status = poll(harness, record)  # a late poll still reports how the run ended
    assert status.state is state


LOSS_LIMITS = {"max_total_trials": 6, "max_concurrent_trials": 1}
"""Trials one at a time, several of them: the driver is lost with trials still to run."""


def test_a_lost_driver_is_started_again_or_reported(full_run_harness: Harness) -> None:
    """``capabilities.restarts_driver``: a driver lost mid-run without an outcome is started again by
    ``poll`` and the run resumes from the store, losing no finished trial; without it, ``poll`` reports
    the loss as FAILED with a reason instead of RUNNING for ever."""
    harness = full_run_harness
    backend = harness.backend()
    record = submitted(harness, limits=LOSS_LIMITS)
    finished = harness.lose_driver(harness.ctx.store.get_experiment(record.id))
    assert finished, "the harness lost the driver before any trial finished"
    record, status = poll(harness, harness.ctx.store.get_experiment(record.id))
    if backend.capabilities.restarts_driver:
        assert status.state is RunState.RUNNING and status.updates, f"poll did not start the driver again: {status}"
        assert harness.live(record) > 0
        harness.finish(record, RunState.SUCCEEDED)
        record, status = poll(harness, harness.ctx.store.get_experiment(record.id))
        assert status.state is RunState.SUCCEEDED, status
        trials = harness.ctx.store.list_trials(record.id)
        assert [t.number for t in trials] == list(range(LOSS_LIMITS["max_total_trials"])), "numbers resumed"
    else:
        assert status.state is RunState.FAILED and status.error, f"the loss was not reported: {status}"
        record, again = poll(harness, record)
        assert again.state is RunState.FAILED, "a lost run stays failed"
    after = {t.number: t for t in harness.ctx.store.list_trials(record.id)}
    assert all(after[n] == trial for n, trial in finished.items()), "a trial finished before the loss changed"
    for repeat in (False, True):
        record = apply_update(harness, record, backend.teardown(record), repeat=repeat)
    assert harness.live(record) == 0


KEEPS_MODEL = sorted(name for name in HARNESSES if REGISTRY[name].capabilities.model_on_cancel)
"""The backends that declare ``model_on_cancel`` (the others are cancelled and torn down at once)."""


@pytest.fixture(params=[pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_RUNS else []) for n in KEEPS_MODEL])
def keeps_model_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from _harness(request, tmp_path)


def test_a_cancelled_run_ends_with_the_best_finished_trials_model(keeps_model_harness: Harness) -> None:
    """``capabilities.model_on_cancel``: asked to stop once a trial finished (the experiment CANCELLING), the
    run ends by itself; ``poll`` reports it (starting nothing new) and ``finalize`` brings the best finished
    trial's model into the store, as the state machine's wait expects (``shared.handlers.cancelling``)."""
    harness = keeps_model_harness
    backend = harness.backend()
    assert backend.capabilities.model_on_cancel
    record = submitted(harness, limits=LOSS_LIMITS)
    harness.first_trial(harness.ctx.store.get_experiment(record.id))
    current = harness.ctx.store.get_experiment(record.id)
    record = harness.ctx.store.update_experiment(current.model_copy(update={"status": ExperimentStatus.CANCELLING}))
    record = apply_update(harness, record, backend.cancel(record))
    harness.end_cancelled(record)
    before = harness.live(record)
    record, status = poll(harness, harness.ctx.store.get_experiment(record.id))
    assert status.state is RunState.CANCELLED, status
    assert harness.live(record) <= before, "poll started something new after the cancel"
    record = apply_update(harness, record, backend.finalize(record))
    assert harness.ctx.store.list_artifacts(record.id, MODEL_PREFIX), "the best finished trial's model is stored"
    trials = harness.ctx.store.list_trials(record.id)
    assert any(t.state.value == "COMPLETED" for t in trials)
    assert not any(t.state.value == "RUNNING" for t in trials), "the trials the cancel stopped were ended"
    for repeat in (False, True):
        record = apply_update(harness, record, backend.teardown(record), repeat=repeat)
    assert harness.live(record) == 0
