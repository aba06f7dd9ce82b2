"""AzureML sweep children -> TrialRecords: numbering, draws, state and the record of each trial."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gpu_jobs.params import HYPERPARAMETERS, validate_params
from shared.backends.azureml.sweep_job import finish_draw
from shared.backends.azureml.workspace import JobInfo, RunMetrics
from shared.bounded import MAX_ENTRIES, MAX_NAME
from shared.records import TrialRecord, TrialState
from shared.spec import ExperimentSpec

TIMEOUT_SLACK_S = 30.0
"""A run this close to its time limit is taken to have been stopped by it."""
TERMINAL_JOB_STATUSES = frozenset({"Completed", "Failed", "Canceled"})
_STOPPED_SWEEP = frozenset({"CancelRequested", "Canceled", "Failed"})


def number_children(parent_name: str, children: Sequence[JobInfo]) -> list[tuple[int, JobInfo]]:
    """Trial numbers for the sweep's children: the ``<sweep>_<index>`` suffix (other children, such as
    a preparation run, are skipped), or creation order when no child is named that way."""
    pattern = re.compile(rf"^{re.escape(parent_name)}_(\d+)$")
    indexed = [(int(m.group(1)), c) for c in children if (m := pattern.match(c.name))]
    if indexed:
        return sorted(indexed, key=lambda pair: pair[0])
    epoch = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(children, key=lambda c: (c.created_at or epoch, c.name))
    return list(enumerate(ordered))


def draws_from_tags(parent: JobInfo) -> dict[str, dict[str, Any]]:
    """HyperDrive's record of each child's draw: sweep tags/properties ``<sweep>_<index>: {json}``."""
    draws: dict[str, dict[str, Any]] = {}
    pattern = re.compile(rf"^{re.escape(parent.name)}_\d+$")
    for source in (parent.properties, parent.tags):
        for key, value in source.items():
            if pattern.match(key) and key not in draws:
                try:
                    decoded = json.loads(value) if isinstance(value, str) else value
                except ValueError:
                    continue
                if isinstance(decoded, dict):
                    draws[key] = {str(k).lstrip("-"): v for k, v in decoded.items()}
    return draws


def trial_params(
    spec: ExperimentSpec, draw: Mapping[str, Any] | None, logged: Mapping[str, str] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, sampler_params)`` of a trial: the hyperparameters it trained with and AzureML's draw.

    From the draw, finished as the trial's command finishes it; else from the MLflow params the trial
    logged. With every searched value known, ``params`` is the full set (fixed, searched, defaults) as
    in the local engines; else only what is known (never a default posing as a searched value).
    """
    table = HYPERPARAMETERS[spec.trial.model]
    searched: dict[str, Any] = {}
    sampler: dict[str, Any] = {}
    for name, dist in spec.search_space.items():
        hp = table[name]
        try:
            if draw is not None and name in draw:
                sampler[name] = draw[name]
                searched[name] = finish_draw(draw[name], dist, hp)
            elif logged is not None and name in logged:
                searched[name] = hp.check(float(logged[name]))
        except (TypeError, ValueError):
            continue
    known = {**spec.trial.params, **searched}
    if len(searched) == len(spec.search_space):
        return validate_params(spec.trial.model, known), sampler
    return known, sampler


def child_state(
    status: str,
    *,
    spec: ExperimentSpec,
    sweep_status: str,
    sweep_timed_out: bool,
    duration_s: float | None,
    steps: int,
) -> tuple[TrialState, str | None]:
    """A trial's state (and error) from its AzureML status, by the rules in the module docstring."""
    if status == "Completed":
        return TrialState.COMPLETED, None
    if status == "Failed":
        return TrialState.FAILED, "the trial job failed; its logs are in the AzureML studio"
    if status != "Canceled":
        return TrialState.RUNNING, None
    trial_timeout = spec.limits.trial_timeout
    if trial_timeout is not None and duration_s is not None and duration_s >= trial_timeout - TIMEOUT_SLACK_S:
        return TrialState.TIMED_OUT, f"stopped at trial_timeout ({trial_timeout} s)"
    if sweep_timed_out:
        return TrialState.TIMED_OUT, f"stopped at the experiment timeout ({spec.limits.timeout} s)"
    if sweep_status in _STOPPED_SWEEP:
        state = TrialState.FAILED if sweep_status == "Failed" else TrialState.CANCELLED
        return state, f"cancelled with the sweep job (sweep status {sweep_status})"
    if spec.early_termination is not None:
        return TrialState.PRUNED, f"stopped by the {spec.early_termination.type} policy after step {steps}"
    return TrialState.FAILED, "cancelled outside the control plane (no early-termination policy is set)"


def sweep_timed_out(spec: ExperimentSpec, sweep: JobInfo, now: datetime) -> bool:
    """Whether a stopped sweep ran for ``limits.timeout`` (AzureML cancels it then)."""
    timeout = spec.limits.timeout
    if timeout is None or sweep.status not in _STOPPED_SWEEP or sweep.created_at is None:
        return False
    end = sweep.modified_at or now
    return (end - sweep.created_at).total_seconds() >= timeout - TIMEOUT_SLACK_S


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else max((end - start).total_seconds(), 0.0)


def trial_record(
    spec: ExperimentSpec,
    experiment_id: str,
    number: int,
    child: JobInfo,
    *,
    sweep: JobInfo,
    timed_out: bool,
    draw: Mapping[str, Any] | None,
    run: RunMetrics | None,
    previous: TrialRecord | None,
) -> TrialRecord:
    """The TrialRecord of one child job."""
    primary = spec.objective.primary_metric
    history = dict(run.history) if run is not None else {}
    started = (run.start_time if run is not None else None) or child.created_at
    ended = run.end_time if run is not None else None
    if ended is None and child.status in TERMINAL_JOB_STATUSES:
        ended = child.modified_at
    duration = seconds_between(started, ended)
    if duration is None and child.status == "Canceled":
        duration = seconds_between(child.created_at, child.modified_at)
    state, error = child_state(
        child.status,
        spec=spec,
        sweep_status=sweep.status,
        sweep_timed_out=timed_out,
        duration_s=duration,
        steps=max(history, default=0),
    )
    # What the trial logged is the compute's word: finite numbers under short names, as many as a record holds.
    logged = run.metrics.items() if run is not None else ()
    kept = [(k, v) for k, v in logged if len(k) <= MAX_NAME and isinstance(v, int | float) and math.isfinite(v)]
    metrics = dict(kept[:MAX_ENTRIES])
    value: float | None = None
    if state is TrialState.COMPLETED:
        final = metrics.get(primary)
        if final is None or not math.isfinite(final):
            state, error = TrialState.FAILED, f"the trial completed without a finite {primary}"
        else:
            value = float(final)
    params, sampler = trial_params(spec, draw, run.params if run is not None else None)
    fields: dict[str, Any] = {
        "experiment_id": experiment_id,
        "number": number,
        "params": params,
        "sampler_params": sampler,
        "state": state,
        "intermediate": history,
        "metrics": metrics,
        "value": value,
        "error": error,
        "engine": run.params.get("engine") if run is not None else None,
        "ended_at": ended if state.finished else None,
        "duration_s": duration if state.finished else None,
    }
    if started is not None:
        fields["started_at"] = started
    elif previous is not None:
        fields["started_at"] = previous.started_at
    return TrialRecord(**fields)
