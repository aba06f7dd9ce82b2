"""One run of the HPO driver on a Dask cluster, whichever backend started it (:func:`run_experiment`).

Given the compute's store (its area) and a client, it checks the data once on the cluster
(:func:`check_data_first`), runs (or resumes) the experiment, refits the best trial's model, and writes
``driver/outcome.json``, which the control plane's poll step reads once it has ingested the area. Which
cluster, and how the process gets its credential, is its backend's (``shared.backends.local.driver``);
nothing here asks which backend a spec names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Protocol

from distributed import Client

from shared.config import DATA_CHECK_ARTIFACT, DRIVER_OUTCOME_ARTIFACT
from shared.cost.catalogue import load_catalogue
from shared.cost.ledger import BudgetGuard, rates_for
from shared.hpo.driver import HpoDriver
from shared.hpo.outcome import ExperimentOutcome
from shared.hpo.patient_store import patient
from shared.hpo.refit import refit_best_model, refit_front_models
from shared.ports import Store
from shared.records import DataCheckReport, ExperimentRecord, ExperimentStatus, TrialRecord
from shared.spec import ExperimentSpec
from shared.telemetry import span
from shared.telemetry.driver import compute_traceparent
from shared.telemetry.setup import flush

log = logging.getLogger("rapids_hpo.driver")


class CancelWatch:
    """True once SIGTERM arrived or the experiment's status says CANCELLING (checked at most 1/s)."""

    def __init__(self, store: Store, experiment_id: str) -> None:
        self.store = store
        self.experiment_id = experiment_id
        self.signalled = threading.Event()
        self._checked = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        if self.signalled.is_set() or self._cancelled:
            return True
        if time.monotonic() - self._checked >= 1.0:
            self._checked = time.monotonic()
            with contextlib.suppress(Exception):
                status = self.store.get_experiment(self.experiment_id).status
                self._cancelled = status in {ExperimentStatus.CANCELLING, ExperimentStatus.CANCELLED}
        return self._cancelled


def budget_guard(record: ExperimentRecord) -> BudgetGuard | None:
    """The guard of ``limits.max_cost``, pricing the run from its start (None without a budget)."""
    spec = record.run_spec
    if spec.limits.max_cost is None:
        return None
    rates = rates_for(spec, load_catalogue())
    if rates is None:  # the spec check makes this unreachable; the control plane's hard stop still holds
        log.warning("limits.max_cost is set but the run has no price; the driver does not guard it")
        return None
    return BudgetGuard(rates, spec.limits.max_cost, record.started_at or datetime.now(UTC))


DATA_CHECK_FAILED = "data check failed"


def check_data_first(spec: ExperimentSpec, experiment_id: str, store: Store, client: Client) -> str | None:
    """Check the data once, as a task on a worker (where the trials will read it), before any trial; store
    what it learned as ``driver/data_check.json``. Returns why the experiment cannot run, or None.

    Only a :class:`gpu_jobs.errors.UserError` (bad data or spec) is such a reason; anything else (a lost
    worker) propagates as a driver error."""
    from gpu_jobs.data_check import check_data
    from gpu_jobs.errors import UserError

    arguments = {
        "data": spec.dataset.uri,
        "target": spec.dataset.target,
        "task": spec.dataset.task,
        "features": spec.dataset.feature_columns(),
        "model": spec.trial.model,
        "primary_metric": spec.objective.primary_metric,
        "cv_folds": spec.trial.cv_folds,
        "engine": spec.trial.engine,
        "data_format": spec.dataset.format,
        "max_rows": spec.dataset.max_rows,
        "seed": spec.sampling_algorithm.seed or 0,
    }
    try:
        with span("data check"):
            check = client.submit(check_data, **arguments, pure=False).result()
    except UserError as exc:
        return " ".join(str(exc).split())
    log.info("data check: %s", DataCheckReport.model_validate(check).describe())
    store.put_artifact(experiment_id, DATA_CHECK_ARTIFACT, json.dumps(check, indent=2).encode())
    return None


class Reports(Protocol):
    """What the run makes for people beside its trials (the dashboard's importances and plots): given by
    the caller, so the engine imports no dashboard."""

    def on_trial_end(self, trial: TrialRecord) -> None: ...

    def at_end(self) -> None: ...


def run_experiment(
    store: Store,
    experiment_id: str,
    client: Client,
    cancel: CancelWatch,
    reports: Callable[[Store, ExperimentRecord], Reports] | None = None,
    *,
    restarted_on_error: bool = False,
) -> ExperimentOutcome:
    """Check the data, run the driver and store the best model; the outcome is also written as an artifact.
    Data the trials cannot use fails the experiment here, once, with no trial run; ``limits.max_cost`` is
    guarded from the run's start (:func:`budget_guard`). ``reports`` makes what people read beside the
    trials (refreshed after each trial, drawn at the end). Every backend whose compute runs our driver
    (the local process, the vmcluster head) comes through here, so none can skip the data check or the
    budget.

    A driver error (not the data, not the budget: a lost scheduler, a bug) ends as a FAILED outcome
    ("driver error"), unless ``restarted_on_error``: then it propagates and no outcome is written, for a
    process whose supervisor starts it again (the head's container restart policy), which resumes from
    the trials it wrote.

    All of it but the outcome is one span in the experiment's trace (``TRACEPARENT``), exported before the
    outcome is written: the control plane may tear this process down as soon as it reads the outcome."""
    store = patient(store)  # a storage outage is waited out, not a driver error
    record = store.get_experiment(experiment_id)
    spec = record.run_spec
    attributes = {"rapids_hpo.experiment.id": experiment_id, "rapids_hpo.backend": spec.compute.backend}
    try:
        with span("hpo driver", parent=compute_traceparent(), attributes=attributes):
            made = reports(store, record) if reports else None
            outcome = _drive(store, record, spec, client, cancel, made, restarted_on_error)
    finally:
        flush()
    document = asdict(outcome)
    document["best"] = outcome.best.model_dump(mode="json") if outcome.best else None
    store.put_artifact(experiment_id, DRIVER_OUTCOME_ARTIFACT, json.dumps(document, indent=2).encode())
    return outcome


def _drive(
    store: Store,
    record: ExperimentRecord,
    spec: ExperimentSpec,
    client: Client,
    cancel: CancelWatch,
    reports: Reports | None,
    restarted_on_error: bool,
) -> ExperimentOutcome:
    experiment_id = record.id
    budget = budget_guard(record)
    driver = HpoDriver(
        spec,
        experiment_id,
        store,
        client,
        should_cancel=cancel,
        on_trial_end=reports.on_trial_end if reports else None,
        budget=budget,
        warm_start=record.warm_start,
    )
    try:
        problem = check_data_first(spec, experiment_id, store, client)
        if problem is not None:
            outcome = ExperimentOutcome("FAILED", DATA_CHECK_FAILED, 0, None, f"{DATA_CHECK_FAILED}: {problem}")
        else:
            outcome = driver.run()
        refit_best(spec, experiment_id, outcome, store, client)
        refit_front(spec, experiment_id, outcome, store, client, cancel, budget)
    except Exception as exc:  # the driver itself failed: say why in the outcome, then exit non-zero
        if restarted_on_error:
            raise
        log.exception("driver failed")
        outcome = ExperimentOutcome("FAILED", "driver error", 0, None, f"{type(exc).__name__}: {exc}")
    if reports is not None:
        reports.at_end()  # charts, importances: on the compute, where Optuna and matplotlib are
    return outcome


def refit_best(
    spec: ExperimentSpec, experiment_id: str, outcome: ExperimentOutcome, store: Store, client: Client
) -> None:
    """Refit the best finished trial on all rows and store its model, for a completed run and for a cancelled
    one (a user who cancels wants the best model so far: the control plane waits for this outcome before it
    tears the compute down). A cancelled run's refit that fails loses only the model: the outcome stays
    CANCELLED and its ``error`` says why there is none."""
    if outcome.status not in {"COMPLETED", "CANCELLED"} or outcome.best is None:
        return
    try:
        with span("refit", attributes={"rapids_hpo.trial.number": outcome.best.number}):
            outcome.best = refit_best_model(spec, experiment_id, outcome.best, store, client)
    except Exception as exc:
        if outcome.status == "COMPLETED":
            raise
        log.exception("the best model so far could not be refit after the cancel")
        outcome.error = f"the refit of trial {outcome.best.number} failed: {type(exc).__name__}: {exc}"


def refit_front(
    spec: ExperimentSpec,
    experiment_id: str,
    outcome: ExperimentOutcome,
    store: Store,
    client: Client,
    cancel: Callable[[], bool],
    budget: BudgetGuard | None,
) -> None:
    """With several objectives, after the best model: refit the other kept Pareto front members
    (``output.front_models``), only for a COMPLETED run (a cancelled one keeps its best model and starts
    nothing more) and each only while no cancel came and one more trial's worst case fits
    ``limits.max_cost``; the compute is torn down once the outcome is written, so it is now or never. A
    driver restarted here (the head's restart policy, a local restart) refits only the members whose models
    are not yet stored whole (:func:`shared.hpo.refit.stored_complete`)."""
    if not spec.objective.multi or outcome.status != "COMPLETED" or outcome.best is None:
        return

    def blocked() -> str | None:
        if cancel():
            return "the experiment was cancelled"
        if budget is not None and not budget.can_launch(store.list_trials(experiment_id), datetime.now(UTC)):
            return "one more trial's worst case would pass limits.max_cost"
        return None

    refit_front_models(spec, experiment_id, outcome.best.number, store, client, blocked)
