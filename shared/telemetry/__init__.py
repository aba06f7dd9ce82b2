"""OpenTelemetry for the control plane and the compute, the Azure way (``shared.telemetry.setup``).

One trace per experiment: the submit starts it, the W3C ``traceparent`` rides in every queue message
(``ExperimentEvent.traceparent``, strictly parsed: :mod:`shared.telemetry.traceparent`) and reaches the
compute as ``TRACEPARENT``, so every step and the driver's trials, folds and refit are spans of it. Metrics
are named in :mod:`shared.telemetry.metrics`; log records carry the experiment and span ids
(:mod:`shared.telemetry.logs`). With no telemetry configured nothing of OpenTelemetry's SDK is imported.

This module imports only the standard library and the light modules below: ``shared.records`` imports
the traceparent parser through it.
"""

from shared.telemetry.api import (
    annotate,
    current_traceparent,
    enabled,
    host_trace,
    span,
    traced,
    traceparent_for,
)
from shared.telemetry.logs import LOG_FORMAT, experiment_scope, set_experiment
from shared.telemetry.traceparent import parse_traceparent, trace_id_of

__all__ = [
    "LOG_FORMAT",
    "annotate",
    "current_traceparent",
    "enabled",
    "experiment_scope",
    "host_trace",
    "parse_traceparent",
    "set_experiment",
    "span",
    "trace_id_of",
    "traced",
    "traceparent_for",
]
