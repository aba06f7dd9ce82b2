"""Spans of a trial that runs as a job of its own (an AzureML sweep's child: ``python -m gpu_jobs.train``):
the trial, its data read, and each fold's fit and score, in the experiment's trace.

The control plane puts the experiment's trace in the job's environment as ``TRACEPARENT`` (strictly parsed:
:mod:`gpu_jobs.traceparent`; a malformed one costs the trial its place in the trace, never its run) and the
exporter settings beside it (``APPLICATIONINSIGHTS_*`` with the cluster's managed identity, or ``OTEL_*``;
:mod:`gpu_jobs.exporters`). The trial's number is its AzureML run id's suffix (``<sweep>_<index>``, the
number the control plane gives the trial: ``shared.backends.azureml.trials.number_children``).

Off unless :func:`start` (the CLI) or :func:`activate` (tests) turned it on: each hook is then one check of a
module global, and nothing of OpenTelemetry is imported. A trial the HPO driver runs on a Dask worker never
turns it on: the driver makes those trials' spans from their reports (``shared.telemetry.driver``), in the
one process that exports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from gpu_jobs.traceparent import parse_traceparent

log = logging.getLogger(__name__)
SCOPE = "rapids_hpo.trial"
EXPERIMENT_ID = "rapids_hpo.experiment.id"
TRIAL_NUMBER = "rapids_hpo.trial.number"
TRIAL_VALUE = "rapids_hpo.trial.value"
FOLD = "rapids_hpo.fold"
METRIC = "rapids_hpo.metric"
METRIC_VALUE = "rapids_hpo.metric.value"
"""The span attributes (the control plane's spans use the same names: ``shared.telemetry.steps``)."""
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}_(\d{1,6})")
_tracer: Any = None


def activate(tracer_provider: Any) -> None:
    """Turn the hooks on over this provider (:func:`start` does; tests pass an in-memory one)."""
    global _tracer
    _tracer = tracer_provider.get_tracer(SCOPE)


def deactivate() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def start(environ: Mapping[str, str] | None = None) -> str:
    """The exporters this job's environment names, and the hooks on over them; ``off`` when it names none
    or they cannot start (a trial never fails for its telemetry: it runs without, and says why)."""
    from gpu_jobs import exporters

    environ = os.environ if environ is None else environ
    mode = exporters.telemetry_mode(environ)
    if mode == "off":
        return mode
    try:
        exporters.start("rapids-hpo-trial", environ)
    except Exception:
        log.exception("telemetry (%s) could not start; the trial runs without it", mode)
        return "off"
    from opentelemetry import trace

    activate(trace.get_tracer_provider())
    return mode


def flush(timeout_s: float = 10.0) -> None:
    """Export what the trial's spans left buffered before the process ends (nothing when off)."""
    if _tracer is not None:
        from gpu_jobs import exporters

        exporters.flush(timeout_s)


def trial_attributes(environ: Mapping[str, str]) -> dict[str, Any]:
    """The experiment id and trial number this job's environment gives (each only if well formed)."""
    attributes: dict[str, Any] = {}
    experiment = environ.get("RAPIDS_HPO_EXPERIMENT_ID", "")
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", experiment):
        attributes[EXPERIMENT_ID] = experiment
    run = _RUN_ID.fullmatch(environ.get("AZUREML_RUN_ID", ""))
    if run is not None:
        attributes[TRIAL_NUMBER] = int(run.group(1))
    return attributes


def clean_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int and float values: None is left out, anything else a string."""
    return {
        k: v if isinstance(v, str | bool | int | float) else str(v)
        for k, v in (attributes or {}).items()
        if v is not None
    }


def remote_context(traceparent: str | None) -> Any:
    """OpenTelemetry's context of a valid traceparent (imports the API), or None for anything else."""
    valid = parse_traceparent(traceparent)
    if valid is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": valid})


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, parent: str | None = None) -> Iterator[Any]:
    """A span current for the block (None when off): a child of ``parent`` when that is a valid
    traceparent, else of the current span. An exception is recorded on it and re-raised."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, context=remote_context(parent), attributes=clean_attributes(attributes)
    ) as current:
        yield current


def annotate(current: Any, attributes: Mapping[str, Any]) -> None:
    """Set attributes on a span :func:`span` gave (nothing for None)."""
    if current is not None:
        current.set_attributes(clean_attributes(attributes))
