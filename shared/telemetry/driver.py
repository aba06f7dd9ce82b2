"""The driver's spans on the compute: the driver joins the experiment's trace through ``TRACEPARENT``
(its node config, job environment or process environment), and each trial is a span under it, with a
span per cross-validation fold as its reports arrive (duration: the worker's fit and predict seconds,
ending when the driver heard of it). Trials run on Dask workers; their spans are made here, in the one
process that already hears of every fold and result, so no worker needs an exporter."""

from __future__ import annotations

import os
from typing import Any

from shared.telemetry import api, metrics
from shared.telemetry.steps import BACKEND, EXPERIMENT_ID, TRIAL_NUMBER, TRIAL_STATE
from shared.telemetry.traceparent import parse_traceparent


def compute_traceparent() -> str | None:
    """The experiment's trace as the control plane handed it to this compute (``TRACEPARENT``), if valid."""
    return parse_traceparent(os.environ.get("TRACEPARENT"))


class TrialSpans:
    """Spans of the trials in flight, keyed by (number, attempt); every method is a no-op when off."""

    def __init__(self, experiment_id: str, backend: str) -> None:
        self.experiment_id = experiment_id
        self.backend = backend
        self._open: dict[tuple[int, int], Any] = {}

    def started(self, number: int, attempt: int) -> None:
        """The trial was submitted to the cluster: its span starts, a child of the current (driver) span."""
        state = api._state
        if state is None:
            return
        attributes = {EXPERIMENT_ID: self.experiment_id, BACKEND: self.backend, TRIAL_NUMBER: number}
        self._open[(number, attempt)] = state.tracer.start_span(
            f"trial {number}", attributes={**attributes, "rapids_hpo.trial.attempt": attempt}
        )

    def fold(self, number: int, attempt: int, step: int, fold: dict[str, Any] | None) -> None:
        """A fold's report arrived: a child span of its trial lasting the worker's fit and predict time."""
        parent = self._open.get((number, attempt))
        if parent is None:
            return
        import time

        from opentelemetry import trace

        seconds = 0.0
        if isinstance(fold, dict):
            seconds = sum(float(fold.get(k) or 0.0) for k in ("fit_seconds", "predict_seconds"))
        end = time.time_ns()
        state = api._state
        assert state is not None
        span = state.tracer.start_span(
            f"fold {step}",
            context=trace.set_span_in_context(parent),
            start_time=end - int(max(seconds, 0.0) * 1e9),
            attributes={TRIAL_NUMBER: number, "rapids_hpo.fold": step},
        )
        span.end(end_time=end)

    def ended(self, number: int, attempt: int, state: str, value: float | None, error: str | None) -> None:
        """The trial's record was written: its span ends with the outcome; the trial is counted."""
        api.count(metrics.TRIALS_FINISHED, 1, {TRIAL_STATE: state, BACKEND: self.backend})
        span = self._open.pop((number, attempt), None)
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute(TRIAL_STATE, state)
        if value is not None:
            span.set_attribute("rapids_hpo.trial.value", value)
        if state == "FAILED":
            span.set_status(Status(StatusCode.ERROR, (error or "failed")[:200]))
        span.end()

    def close(self) -> None:
        """End what is still open (the driver stopped): those trials' spans say so."""
        for (number, attempt), span in list(self._open.items()):
            span.set_attribute(TRIAL_STATE, "INTERRUPTED")
            span.end()
            self._open.pop((number, attempt), None)
