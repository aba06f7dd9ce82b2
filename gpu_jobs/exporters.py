"""The exporters, chosen from the environment once per process: shared by the control plane
(``shared.telemetry.setup``) and the compute (``gpu_jobs.telemetry``: an AzureML trial, which has only
``gpu_jobs``), so both export the same way. Only the standard library is imported until :func:`start`.

- ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set: Microsoft's distro (``azure-monitor-opentelemetry``), with
  Entra ID authentication where ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` says ``Authorization=AAD``
  (as infra/ deploys it: the component refuses its key, ``DisableLocalAuth``), the managed identity named by
  ``ClientId`` (a user-assigned one: the Function App's, the VMs', the AzureML clusters') or the
  system-assigned one. The distro traces the Azure SDKs (azure-core's OpenTelemetry plugin) and exports
  traces, metrics and logs. Its FastAPI instrumentation stays off: FastAPI traces its own requests through
  the global providers.
- Else any standard ``OTEL_*`` exporter variable: the OpenTelemetry SDK with OTLP over HTTP
  (``OTEL_EXPORTER_OTLP_ENDPOINT``...) or the console (``OTEL_TRACES_EXPORTER=console``, a quick look).
  A signal whose ``OTEL_<SIGNAL>_EXPORTER`` is unset is exported by OTLP only when an endpoint is set.
- Else nothing: no SDK is imported (``OTEL_SDK_DISABLED=true`` forces this).

Exports never block the caller: spans, metrics and logs are batched and sent from background threads;
:func:`flush` waits (bounded) where a process must not lose them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SIGNALS = ("TRACES", "METRICS", "LOGS")


def telemetry_mode(environ: Mapping[str, str]) -> str:
    """``azure``, ``otel`` or ``off`` for this environment (nothing imported to decide)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "off"
    if environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip():
        return "azure"
    exporters = [environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() for signal in SIGNALS]
    if any(e and e != "none" for e in exporters) or any(environ.get(v, "").strip() for v in OTLP_ENDPOINT_VARIABLES):
        return "otel"
    return "off"


COMPUTE_PACKAGES: dict[str, tuple[str, ...]] = {
    "azure": ("azure-monitor-opentelemetry",),
    "otel": ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"),
}
"""What a compute whose image lacks them (RAPIDS') installs to export in each mode (the VMs' extra pip
packages, an AzureML trial's install line; gpu_jobs/Dockerfile has them): bare names, shell-safe."""


def compute_packages(environ: Mapping[str, str]) -> tuple[str, ...]:
    return COMPUTE_PACKAGES.get(telemetry_mode(environ), ())


def start(service_name: str, environ: Mapping[str, str]) -> str:
    """Install the global providers this environment asks for; the mode (``azure``, ``otel`` or ``off``).
    Raises what the exporters raise (the caller decides whether to run without telemetry)."""
    mode = telemetry_mode(environ)
    if mode == "azure":
        _configure_azure(service_name, environ)
    elif mode == "otel":
        _configure_otel(service_name, environ)
    return mode


def entra_credential(environ: Mapping[str, str]) -> Any:
    """The credential ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` asks for (``Authorization=AAD[;ClientId=..]``),
    or None (the connection string's key is used: only where the component allows local auth)."""
    setting = environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    parts = (part.partition("=") for part in setting.split(";") if "=" in part)
    pairs = {key.strip().lower(): value.strip() for key, _, value in parts}
    if pairs.get("authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = pairs.get("clientid")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def _configure_azure(service_name: str, environ: Mapping[str, str]) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry.sdk.resources import Resource

    configure_azure_monitor(
        connection_string=environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
        credential=entra_credential(environ),
        resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", service_name)}),
        instrumentation_options={"fastapi": {"enabled": False}},  # FastAPI's own telemetry traces requests
        enable_live_metrics=False,
        # Every span, unless OTEL_TRACES_SAMPLER says otherwise: the distro's default (1.8) is a rate-limited
        # sampler (5 spans a second) deciding span by span, which cut a trial's folds out of its trace.
        **({} if environ.get("OTEL_TRACES_SAMPLER", "").strip() else {"sampling_ratio": 1.0}),
    )
    logging.getLogger("azure").setLevel(max(logging.getLogger("azure").getEffectiveLevel(), logging.WARNING))
    # The exporter's own complaints stay local (stderr): exported through the root logger's OpenTelemetry
    # handler, a refused export logged a warning, whose export was refused, which logged... and a flush never
    # ended (an identity without the role on the component hung the process at its end).
    logging.getLogger("azure.monitor.opentelemetry").propagate = False


def _exporters(signal: str, environ: Mapping[str, str]) -> list[str]:
    default = "otlp" if any(environ.get(v, "").strip() for v in OTLP_ENDPOINT_VARIABLES) else "none"
    names = environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() or default
    chosen = [name.strip() for name in names.split(",") if name.strip() and name.strip() != "none"]
    unknown = set(chosen) - {"otlp", "console"}
    if unknown:
        raise ValueError(f"OTEL_{signal}_EXPORTER: {sorted(unknown)} unknown here (otlp, console or none)")
    return chosen


def _configure_otel(service_name: str, environ: Mapping[str, str]) -> None:
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", service_name)})
    tracer_provider = TracerProvider(resource=resource)
    for name in _exporters("TRACES", environ):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    readers = []
    for name in _exporters("METRICS", environ):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        else:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    logger_provider = LoggerProvider(resource=resource)
    log_exporters = _exporters("LOGS", environ)
    for name in log_exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

            logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
        else:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(ConsoleLogRecordExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _logs.set_logger_provider(logger_provider)
    if log_exporters:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))
    _trace_azure_sdk()


def _trace_azure_sdk() -> None:
    """Azure SDK calls as child spans (azure-core's OpenTelemetry plugin); the distro does this itself."""
    try:
        from azure.core.settings import settings
        from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan

        settings.tracing_implementation = OpenTelemetrySpan
    except ImportError:  # the compute's image may lack the plugin: its driver traces without SDK spans
        log.info("azure-core-tracing-opentelemetry is not installed: Azure SDK calls are not traced")


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered, waiting at most about ``timeout_s`` per signal (what the global providers hold)."""
    from opentelemetry import _logs, metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            try:
                force_flush(int(timeout_s * 1000))
            except Exception as exc:  # an exporter's failure is its own
                log.info("telemetry flush: %s", exc)
