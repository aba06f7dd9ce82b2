"""The HPO driver's artifacts as the control plane reads them: its outcome (the backends whose driver writes
one, local and vmcluster) and its data check."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from shared.config import DATA_CHECK_ARTIFACT, DRIVER_OUTCOME_ARTIFACT
from shared.errors import NotFound
from shared.ports import HandleUpdate, RunState, RunStatus, Store
from shared.records import DataCheckReport


def read_outcome(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """The driver's ``driver/outcome.json`` for the experiment, or None while it has not ended."""
    try:
        return json.loads(store.get_artifact(experiment_id, DRIVER_OUTCOME_ARTIFACT))
    except NotFound:
        return None


def outcome_status(outcome: dict[str, Any], updates: HandleUpdate | None = None) -> RunStatus:
    """The run state an outcome means: COMPLETED succeeded, CANCELLED was cancelled, anything else failed."""
    state = {"COMPLETED": RunState.SUCCEEDED, "CANCELLED": RunState.CANCELLED}.get(
        outcome.get("status", ""), RunState.FAILED
    )
    return RunStatus(state, error=outcome.get("error"), details={"outcome": outcome}, updates=dict(updates or {}))


def read_data_check(store: Store, experiment_id: str) -> DataCheckReport | None:
    """What the driver's data check learned (task and why, rows), or None before it ran (or unreadable)."""
    try:
        return DataCheckReport.model_validate_json(store.get_artifact(experiment_id, DATA_CHECK_ARTIFACT))
    except (NotFound, ValidationError):
        return None
