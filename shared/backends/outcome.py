"""The HPO driver's artifacts as the control plane reads them: its outcome (the backends whose driver writes
one, local and vmcluster) and its data check.

The compute writes them, so each is parsed into a bounded model before anything reads a field of it: the
outcome into :class:`DriverOutcome` (finite, the ``error`` clipped; one that is not an outcome fails the run
with a reason that says so), the data check into ``DataCheckReport``.
"""

from __future__ import annotations

from pydantic import ValidationError

from shared.config import DATA_CHECK_ARTIFACT, DRIVER_OUTCOME_ARTIFACT
from shared.errors import NotFound
from shared.ports import HandleUpdate, RunState, RunStatus, Store
from shared.records import DataCheckReport, RunOutcome
from shared.store.ingest import MAX_OUTCOME_BYTES

DriverOutcome = RunOutcome
"""``driver/outcome.json`` as the control plane reads it (:class:`shared.records.RunOutcome`)."""


def parse_outcome(data: bytes) -> DriverOutcome:
    """The outcome ``data`` holds; one that is oversized or malformed is a FAILED outcome saying why."""
    if len(data) > MAX_OUTCOME_BYTES:
        return DriverOutcome(status="FAILED", error=f"the driver's outcome is {len(data)} bytes, over the limit")
    try:
        return DriverOutcome.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        why = f"the driver's outcome is not valid ({exc.error_count()} errors; {where}: {first['msg']})"
        return DriverOutcome(status="FAILED", reason="invalid outcome", error=why)


def read_outcome(store: Store, experiment_id: str) -> DriverOutcome | None:
    """The driver's ``driver/outcome.json`` for the experiment, or None while it has not ended."""
    try:
        return parse_outcome(store.get_artifact(experiment_id, DRIVER_OUTCOME_ARTIFACT))
    except NotFound:
        return None


def outcome_status(outcome: DriverOutcome, updates: HandleUpdate | None = None) -> RunStatus:
    """The run state an outcome means: COMPLETED succeeded, CANCELLED was cancelled, FAILED failed."""
    state = {"COMPLETED": RunState.SUCCEEDED, "CANCELLED": RunState.CANCELLED, "FAILED": RunState.FAILED}
    error = outcome.error or (outcome.reason if outcome.status == "FAILED" else None)
    return RunStatus(state[outcome.status], error=error, updates=dict(updates or {}), outcome=outcome)


def read_data_check(store: Store, experiment_id: str) -> DataCheckReport | None:
    """What the driver's data check learned (task and why, rows), or None before it ran (or unreadable)."""
    try:
        return DataCheckReport.model_validate_json(store.get_artifact(experiment_id, DATA_CHECK_ARTIFACT))
    except (NotFound, ValidationError):
        return None
