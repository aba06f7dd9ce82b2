"""Hyperparameter importances with Optuna's evaluators, computed where Optuna lives: on the compute.

The Function App does not install Optuna (nor scikit-learn, which Optuna's default fANOVA evaluator
needs); the driver, which already runs Optuna, writes ``plots/importances.json`` as trials end (at most
every :data:`REFRESH_SECONDS`) and once more at the end, and the dashboard only reads that document.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.records import ExperimentRecord, TrialRecord, TrialState

IMPORTANCES_ARTIFACT = "plots/importances.json"
REFRESH_SECONDS = 30.0
log = logging.getLogger("rapids_hpo.dashboard")


class ImportanceDocument(BaseModel):
    """``plots/importances.json`` as the Function App reads it: the compute wrote it, so it is checked."""

    model_config = ConfigDict(extra="ignore")

    evaluator: str = Field(default="", max_length=100)
    trials: int = Field(default=0, ge=0)
    importances: dict[str, float] = Field(default_factory=dict, max_length=1000)
    computed_at: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=2000)

    @classmethod
    def read(cls, data: bytes) -> dict[str, Any]:
        """The checked document, or one whose ``error`` says why it could not be read."""
        try:
            document = cls.model_validate_json(data)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return {"error": f"plots/importances.json is not readable ({type(exc).__name__})"}
        finite = {k: v for k, v in document.importances.items() if math.isfinite(v) and v >= 0}
        return document.model_copy(update={"importances": finite}).model_dump()


def compute_importances(record: ExperimentRecord, trials: list[TrialRecord]) -> dict[str, Any]:
    """``{"evaluator", "trials", "importances": {param: share}, "computed_at"[, "error"]}``.

    fANOVA (Optuna's default, seeded) when scikit-learn is installed, else PED-ANOVA (no extra
    dependency). Fewer than two completed trials, or nothing that varied, gives an ``error`` instead.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    from shared.dashboard.study import build_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    completed = sum(1 for t in trials if t.state is TrialState.COMPLETED and t.value is not None)
    document: dict[str, Any] = {
        "evaluator": "",
        "trials": completed,
        "importances": {},
        "computed_at": datetime.now(UTC).isoformat(),
    }
    if completed < 2:
        document["error"] = f"needs 2 completed trials, has {completed}"
        return document
    study = build_study(record, trials)
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)

        evaluator: Any = FanovaImportanceEvaluator(seed=0)
    except ImportError:
        evaluator = PedAnovaImportanceEvaluator()
    document["evaluator"] = type(evaluator).__name__
    try:
        values = get_param_importances(study, evaluator=evaluator, normalize=True)
    except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied across the completed trials
        document["error"] = f"{type(exc).__name__}: {exc}"
        return document
    document["importances"] = {name: round(float(v), 6) for name, v in values.items()}
    return document


class ImportanceRefresher:
    """The driver's ``on_trial_end`` hook: rewrite the importances at most every ``interval`` s."""

    def __init__(self, store: Any, record: ExperimentRecord, interval: float = REFRESH_SECONDS) -> None:
        self.store = store
        self.record = record
        self.interval = interval
        self._last = float("-inf")

    def __call__(self, trial: TrialRecord) -> None:
        if trial.state is not TrialState.COMPLETED or time.monotonic() - self._last < self.interval:
            return
        self._last = time.monotonic()
        try:
            document = compute_importances(self.record, self.store.list_trials(self.record.id))
            if not document.get("error"):
                import json

                self.store.put_artifact(self.record.id, IMPORTANCES_ARTIFACT, json.dumps(document).encode())
        except Exception:  # a chart must never stop the search
            log.warning("importances not refreshed", exc_info=True)
