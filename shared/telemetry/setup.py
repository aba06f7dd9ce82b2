"""Starting telemetry for a control-plane process (the Function App, ``rapids-hpo``, a driver) from the
environment, once: the exporters are chosen by :mod:`gpu_jobs.exporters` (the distro with an Entra
credential, OTLP or the console, or nothing: no SDK imported), which the compute's trials share; this module
turns ``shared.telemetry``'s hooks on over them, gives log records their ids, and says what a compute gets
(:func:`compute_environment`).

Exports never block a step: spans, metrics and logs are batched and sent from background threads;
:func:`flush` waits (bounded) where a process must not lose them, before the driver reports its outcome.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from gpu_jobs import exporters
from gpu_jobs.exporters import entra_credential, telemetry_mode
from shared.telemetry import api
from shared.telemetry.logs import install_record_factory

__all__ = ["compute_environment", "configure", "entra_credential", "flush", "telemetry_mode"]
log = logging.getLogger(__name__)
FORWARDED_PREFIXES = ("OTEL_", "APPLICATIONINSIGHTS_")
"""Settings a remote compute gets from the control plane, so its driver exports where the app does."""


def configure(service_name: str, environ: Mapping[str, str] | None = None) -> str:
    """Start telemetry as the environment says (once; later calls return the mode in force)."""
    install_record_factory()
    if api.enabled():
        return api.mode()
    environ = os.environ if environ is None else environ
    mode = telemetry_mode(environ)
    if mode == "off":
        return mode
    try:
        exporters.start(service_name, environ)
    except Exception:  # telemetry must never stop the app: run without it, and say why
        log.exception("telemetry (%s) could not start; running without it", mode)
        return "off"
    from opentelemetry import metrics, trace

    api.activate(trace.get_tracer_provider(), metrics.get_meter_provider(), mode)
    return mode


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered, waiting at most about ``timeout_s`` per signal (nothing when off)."""
    if api.enabled():
        exporters.flush(timeout_s)


def compute_environment(
    traceparent: str | None, environ: Mapping[str, str] | None = None, *, prefixes: tuple[str, ...] = FORWARDED_PREFIXES
) -> dict[str, str]:
    """What a compute's driver needs to join the experiment's trace and export where the app does:
    ``TRACEPARENT`` (when there is one) and the settings named by ``prefixes`` (``OTEL_*``,
    ``APPLICATIONINSIGHTS_*``; a VM's custom data takes ``OTEL_*`` only)."""
    environ = os.environ if environ is None else environ
    forwarded = {k: v for k, v in environ.items() if k.startswith(prefixes)}
    carried = api.traceparent_for(traceparent)
    if carried is not None:
        forwarded["TRACEPARENT"] = carried
    return forwarded
