"""In-memory OpenTelemetry for tests: the SDK's own in-memory span exporter and metric reader, installed
as the global providers once per test process (OpenTelemetry allows one global provider per process),
and ``shared.telemetry``'s hooks turned on over them for the test that asks (off again afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter, _Gauge
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry import api


@dataclass
class InMemory:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def collect(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        """Each metric's (attributes, value) data points recorded since the last collect (deltas; a
        histogram's value is its count)."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        found.setdefault(metric.name, []).append(
                            (dict(point.attributes), float(point.count if value is None else value))
                        )
        return found


_installed: InMemory | None = None


def _install() -> InMemory:
    global _installed
    if _installed is None:
        delta = AggregationTemporality.DELTA
        exporter = InMemorySpanExporter()
        reader = InMemoryMetricReader(
            preferred_temporality={Counter: delta, Histogram: delta, UpDownCounter: delta, _Gauge: delta}
        )
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _installed = InMemory(exporter, reader)
    return _installed


@pytest.fixture
def otel() -> Iterator[InMemory]:
    """Telemetry on, into memory, for this test; Azure SDK calls traced as azure-core's plugin does."""
    from azure.core.settings import settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan

    memory = _install()
    memory.spans.clear()
    memory.collect()  # and so forget what earlier tests recorded (deltas)
    api.activate(trace.get_tracer_provider(), metrics.get_meter_provider(), "otel")
    settings.tracing_implementation = OpenTelemetrySpan
    try:
        yield memory
    finally:
        api.deactivate()
        settings.tracing_implementation = None
