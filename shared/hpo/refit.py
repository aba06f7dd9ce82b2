"""Refit the best parameters on all rows, as a task on the cluster, and store the model."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Client

from shared.config import MODEL_PREFIX, front_model_prefix
from shared.errors import NotFound
from shared.pareto import MEMBER_METRICS_FILE, cross_validation_of, front_member, kept_members, metrics_problem
from shared.ports import Store, TrialStore
from shared.records import BestTrial
from shared.spec import ExperimentSpec
from shared.telemetry import span

log = logging.getLogger("rapids_hpo.driver")


def refit_task(kwargs: dict[str, Any], cross_validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Refit on all rows in a temporary folder; return the metrics and the model's files as bytes, so
    the model reaches the store from any worker, local or remote.

    The files' ``metrics.json`` names the model's files relative to itself (the folder is gone once this
    returns) and, under ``cross_validation``, carries the scores that chose these parameters (the refit
    itself is scored on nothing: every row trained it)."""
    from gpu_jobs.model_files import METRICS_FILE
    from gpu_jobs.train import fit_final_model

    with tempfile.TemporaryDirectory(prefix="rapids-hpo-refit-") as folder:
        root = Path(folder)
        metrics = {name: _inside(value, root) for name, value in fit_final_model(**kwargs, output=folder).items()}
        if cross_validation is not None:
            metrics["cross_validation"] = cross_validation
        (root / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return {"metrics": metrics, "files": files}


def _inside(value: Any, root: Path) -> Any:
    """A path under ``root`` as relative to it (``model.json``); anything else as it is."""
    if isinstance(value, str) and Path(value).is_relative_to(root):
        return Path(value).relative_to(root).as_posix() or "."
    return value


def written_last(names: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """A model's files in the order they are stored: ``metrics.json`` last, so its presence says every other
    file is there (each put is whole or absent; a driver killed in between leaves no metrics.json)."""
    from gpu_jobs.model_files import METRICS_FILE

    return sorted(names.items(), key=lambda item: (item[0] == METRICS_FILE, item[0]))


def refit_trial_model(
    spec: ExperimentSpec, experiment_id: str, trial: BestTrial, store: TrialStore, client: Client, prefix: str
) -> str:
    """Refit ``trial``'s parameters on all rows (as a task on the cluster) and store its files under
    ``prefix``, ``metrics.json`` carrying the trial's cross-validated scores and written last
    (:func:`written_last`); returns the model's URI."""
    kwargs = {
        "data": spec.dataset.uri,
        "target": spec.dataset.target,
        "task": spec.dataset.task,
        "features": spec.dataset.feature_columns(),
        "model": spec.trial.model,
        "params": trial.params,
        "seed": spec.sampling_algorithm.seed or 0,
        "engine": spec.trial.engine,
        "data_format": spec.dataset.format,
        "max_rows": spec.dataset.max_rows,
    }
    result = client.submit(refit_task, kwargs, cross_validation_of(spec, trial), pure=False).result()
    uri = None
    with span("model upload", attributes={"rapids_hpo.files": len(result["files"])}):
        for name, data in written_last(result["files"]):
            uri = store.put_artifact(experiment_id, f"{prefix}{name}", data)
    if uri is None:
        raise RuntimeError("the refit produced no model files")
    return uri.rsplit("/", 1)[0]


def refit_best_model(
    spec: ExperimentSpec, experiment_id: str, best: BestTrial, store: Store, client: Client
) -> BestTrial:
    """Refit the best parameters on all rows (as a task on the cluster) and store the model under
    ``model/``; returns ``best`` with its ``model_uri``. A driver restarted after it had stored that model
    whole (:func:`stored_complete`) and recorded its URI on the trial keeps it: a refit is a trial's worth of
    GPU time."""
    record = next((t for t in store.list_trials(experiment_id) if t.number == best.number), None)
    if record is not None and record.model_uri and stored_complete(spec, experiment_id, best, store, MODEL_PREFIX):
        log.info("trial %d's model is already stored whole under %s; not refit", best.number, MODEL_PREFIX)
        return best.model_copy(update={"model_uri": record.model_uri})
    model_uri = refit_trial_model(spec, experiment_id, best, store, client, MODEL_PREFIX)
    if record is not None:  # the best trial's record says where its model is
        store.put_trial(record.model_copy(update={"model_uri": model_uri}))
    return best.model_copy(update={"model_uri": model_uri})


def stored_complete(
    spec: ExperimentSpec, experiment_id: str, member: BestTrial, store: Store, prefix: str | None = None
) -> bool:
    """Whether ``prefix`` (``front-models/<number>/`` by default) already holds ``member``'s whole model, stored
    before a restart:
    its ``metrics.json`` (written last) is there and names this member's cross-validated scores
    (:func:`shared.pareto.metrics_problem`, the control plane's rule too). Anything else (absent,
    unreadable, another trial's) is refit, its files overwritten."""
    try:
        folder = front_model_prefix(member.number) if prefix is None else prefix
        body = store.get_artifact(experiment_id, folder + MEMBER_METRICS_FILE)
    except NotFound:
        return False
    return metrics_problem(spec, member, body) is None


def refit_front_models(
    spec: ExperimentSpec,
    experiment_id: str,
    best_number: int,
    store: Store,
    client: Client,
    blocked: Callable[[], str | None],
) -> list[int]:
    """Refit the kept Pareto front members other than the best (:func:`shared.pareto.kept_members`, in the
    front's order) under ``front-models/<number>/``, one after another; returns the numbers refit.

    ``blocked`` is asked before each refit and says why none may start now (a cancel, the budget): the
    remaining members then keep no model. A member whose refit fails loses only its own model (logged): the
    run's result and the best model stand, and the next member is tried. A member whose model a driver
    before a restart stored whole (:func:`stored_complete`) is not refit, so a restarted driver resumes
    at the first member it had not finished."""
    trials = store.list_trials(experiment_id)
    done = []
    for number in kept_members(spec, trials):
        if number == best_number:
            continue
        member = front_member(spec, trials, number)  # a kept member is on the front: no LookupError
        if stored_complete(spec, experiment_id, member, store):
            log.info("front models: trial %d's model is already stored whole; not refit", number)
            continue
        why = blocked()
        if why is not None:
            log.warning("front models: no refit of trial %d or later members: %s", number, why)
            break
        try:
            with span("front refit", attributes={"rapids_hpo.trial.number": number}):
                refit_trial_model(spec, experiment_id, member, store, client, front_model_prefix(number))
        except Exception:
            log.exception("front models: the refit of trial %d failed; it keeps no model", number)
            continue
        done.append(number)
    return done
