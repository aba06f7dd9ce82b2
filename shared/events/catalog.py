"""The events this control plane announces, built from its records.

| type | subject | id (stable across redeliveries) |
|---|---|---|
| ``RapidsHpo.ExperimentStatusChanged`` | ``/experiments/{id}`` | ``{id}/status/{n}`` (n-th history entry) |
| ``RapidsHpo.TrialFinished`` | ``/experiments/{id}/trials/{number}`` | ``{id}/trials/{number}/{attempt}`` |
| ``RapidsHpo.BestTrialImproved`` | ``/experiments/{id}/trials/{number}`` | ``{id}/best/{number}`` |

Payloads are bounded whatever the compute or the caller wrote: strings are clipped (``error`` to
:data:`MAX_ERROR_CHARS`, names and other text to :data:`MAX_TEXT_CHARS`), ``params`` and ``metrics`` keep
at most :data:`MAX_PARAMS` entries (``params_clipped`` says when some were left out) whose values are finite
numbers, booleans, ``None`` or clipped text, so an event stays a few KiB of valid JSON.

Every id names a fact that happens once (a history entry is appended once; a trial number and attempt
ends once; a trial becomes the best at most once, as the best only improves), so an event sent twice
carries one id and subscribers dedupe on it. ``time`` is when the fact happened, not when it was sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from shared.cost.ledger import public_cost
from shared.events.port import Event
from shared.records import ExperimentRecord, TrialRecord, TrialState

PREFIX = "RapidsHpo."
STATUS_CHANGED = f"{PREFIX}ExperimentStatusChanged"
TRIAL_FINISHED = f"{PREFIX}TrialFinished"
BEST_TRIAL_IMPROVED = f"{PREFIX}BestTrialImproved"
EVENT_TYPES = (STATUS_CHANGED, TRIAL_FINISHED, BEST_TRIAL_IMPROVED)
MAX_ERROR_CHARS = 500
MAX_TEXT_CHARS = 200
"""Longest name, reason or parameter value an event repeats."""
MAX_PARAMS = 64
"""Most ``params`` (or ``metrics``) entries an event carries; a model here has at most ten."""
MAX_EXACT_INT = 2**53


def experiment_subject(experiment_id: str) -> str:
    return f"/experiments/{experiment_id}"


def trial_subject(experiment_id: str, number: int) -> str:
    return f"/experiments/{experiment_id}/trials/{number}"


def status_changed(record: ExperimentRecord, source: str) -> Event:
    """The event for the record's latest history entry (the transition just written)."""
    sequence = len(record.history)
    entry = record.history[-1]
    previous = record.history[-2].status.value if sequence > 1 else None
    return Event(
        id=f"{record.id}/status/{sequence}",
        type=STATUS_CHANGED,
        source=source,
        subject=experiment_subject(record.id),
        time=entry.at.isoformat(),
        data={
            "experiment_id": record.id,
            "name": record.name,
            "sequence": sequence,
            "status": entry.status.value,
            "previous_status": previous,
            "reason": _clip(entry.reason, MAX_TEXT_CHARS),
            "error": _clip(record.error),
            "backend": record.backend,
            "progress": {"done": record.trials_done, "total": record.trials_total},
            "best": _best(record),
            "cost": public_cost(record.cost),
            "submitted_by": record.submitted_by.model_dump(mode="json") if record.submitted_by else None,
        },
    )


def trial_finished(record: ExperimentRecord, trial: TrialRecord, source: str) -> Event:
    return Event(
        id=f"{record.id}/trials/{trial.number}/{trial.attempt}",
        type=TRIAL_FINISHED,
        source=source,
        subject=trial_subject(record.id, trial.number),
        time=_trial_time(trial),
        data={
            "experiment_id": record.id,
            "number": trial.number,
            "attempt": trial.attempt,
            "state": trial.state.value,
            "value": _scalar(trial.value),
            **_params(trial.params),
            "duration_s": _scalar(trial.duration_s),
            "engine": _clip(trial.engine, MAX_TEXT_CHARS),
            "error": _clip(trial.error),
        },
    )


def best_trial_improved(
    record: ExperimentRecord, trial: TrialRecord, previous: tuple[int, float] | None, source: str
) -> Event:
    metric, goal = record.objective
    return Event(
        id=f"{record.id}/best/{trial.number}",
        type=BEST_TRIAL_IMPROVED,
        source=source,
        subject=trial_subject(record.id, trial.number),
        time=_trial_time(trial),
        data={
            "experiment_id": record.id,
            "number": trial.number,
            "value": _scalar(trial.value),
            **_params(trial.params),
            "primary_metric": metric,
            "goal": goal,
            "previous_number": previous[0] if previous else None,
            "previous_value": previous[1] if previous else None,
        },
    )


def newly_finished(record: ExperimentRecord, trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Finished trials (number, attempt) not yet announced, in the order they ended."""
    announced = decode_ranges(record.event_log.trials)
    retried = record.event_log.retried
    fresh = [
        t
        for t in trials
        if t.state is not TrialState.RUNNING
        and t.attempt > retried.get(str(t.number), 1 if t.number in announced else 0)
    ]
    return sorted(fresh, key=lambda t: (t.ended_at or t.started_at, t.number))


def improves(trial: TrialRecord, best: tuple[int, float] | None, goal: str) -> bool:
    """Whether ``trial`` would replace ``best`` under ``shared.records.best_of``'s order."""
    if trial.state is not TrialState.COMPLETED or trial.value is None:
        return False
    if best is None:
        return True
    sign = -1.0 if goal == "maximize" else 1.0
    return (sign * trial.value, trial.number) < (sign * best[1], best[0])


def trial_events(
    record: ExperimentRecord, trials: Iterable[TrialRecord], source: str, limit: int | None = None
) -> tuple[list[Event], dict[str, Any]]:
    """Events for the trials finished since the last announcement (the first ``limit`` of them), and the
    ``EventLog`` marker updates; ``behind`` says whether finished trials were left for later."""
    log = record.event_log
    fresh = newly_finished(record, trials)
    if not fresh:
        return [], ({"behind": False} if log.behind else {})
    behind = limit is not None and len(fresh) > limit
    fresh = fresh[:limit] if behind else fresh
    announced, retried = decode_ranges(log.trials), dict(log.retried)
    best = (log.best_number, log.best_value) if log.best_number is not None and log.best_value is not None else None
    goal = record.goal
    events: list[Event] = []
    for trial in fresh:
        events.append(trial_finished(record, trial, source))
        announced.add(trial.number)
        if trial.attempt > 1:
            retried[str(trial.number)] = trial.attempt
        if improves(trial, best, goal):
            events.append(best_trial_improved(record, trial, best, source))
            best = (trial.number, float(trial.value))  # type: ignore[arg-type]
    markers: dict[str, Any] = {"trials": encode_ranges(announced), "retried": retried, "behind": behind}
    if best is not None:
        markers.update(best_number=best[0], best_value=best[1])
    return events, markers


def encode_ranges(numbers: Iterable[int]) -> str:
    """``{0, 1, 2, 3, 7}`` -> ``"0-3,7"``: a thousand trials announced in order stay a few bytes."""
    parts: list[str] = []
    ordered = sorted(set(numbers))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def decode_ranges(text: str) -> set[int]:
    numbers: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        numbers.update(range(int(low), int(high or low) + 1))
    return numbers


def _trial_time(trial: TrialRecord) -> str:
    return (trial.ended_at or trial.started_at).isoformat()


def _clip(text: Any, limit: int = MAX_ERROR_CHARS) -> str | None:
    if text is None:
        return None
    shown = str(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _scalar(value: Any) -> Any:
    """``value`` as an event may carry it: a finite number, a bool, None, or clipped text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) <= MAX_EXACT_INT:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _clip(value, MAX_TEXT_CHARS)


def _bounded(entries: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """At most ``MAX_PARAMS`` entries with clipped names and scalar values; whether some were left out."""
    entries = entries if isinstance(entries, Mapping) else {}
    kept = {
        str(_clip(name, MAX_TEXT_CHARS)): _scalar(value)
        for _, (name, value) in zip(range(MAX_PARAMS), entries.items(), strict=False)
    }
    return kept, len(entries) > len(kept)


def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    kept, clipped = _bounded(params)
    return {"params": kept, **({"params_clipped": True} if clipped else {})}


def _best(record: ExperimentRecord) -> dict[str, Any] | None:
    best = record.best
    if best is None:
        return None
    metrics, _ = _bounded(best.metrics)
    return {
        "number": best.number,
        "value": _scalar(best.value),
        **_params(best.params),
        "metrics": metrics,
        "model_uri": _clip(best.model_uri, MAX_ERROR_CHARS),
    }
