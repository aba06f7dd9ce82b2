"""A local OTLP/HTTP receiver: what an OpenTelemetry collector does with ``/v1/traces``, ``/v1/metrics`` and
``/v1/logs`` (protobuf bodies), decoded with the OTLP protos, kept for the test to read. A stand-in for a
collector, which cannot run here; the exporters are the real ones. Like a collector it refuses a body
that is not an OTLP request (400), so an exporter sending something else fails the test.

``hold()`` makes it accept requests and answer none until ``release()``: an exporter stuck on a slow or
unreachable endpoint, deterministically.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

REQUESTS = {
    "/v1/traces": ExportTraceServiceRequest,
    "/v1/metrics": ExportMetricsServiceRequest,
    "/v1/logs": ExportLogsServiceRequest,
}


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    service: str
    links: list[tuple[str, str]] = field(default_factory=list)
    """(trace id, span id) of each linked span."""


@dataclass
class OtlpReceiver:
    spans: list[Span] = field(default_factory=list)
    metrics: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    """(name, attributes, value) of every data point received."""
    logs: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """(trace id, body, attributes) of every log record."""
    requests: int = 0
    _held: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.requests += 1
                if receiver._held.is_set():
                    receiver._release.wait(60)
                kind = REQUESTS.get(self.path)
                try:
                    if kind is None or self.headers.get("content-type") != "application/x-protobuf":
                        raise DecodeError("not an OTLP/HTTP protobuf request")
                    receiver._take(self.path, kind.FromString(body))
                except DecodeError:
                    self.send_response(400)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hold(self) -> None:
        self._release.clear()
        self._held.set()

    def release(self) -> None:
        self._held.clear()
        self._release.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def _take(self, path: str, request: Any) -> None:
        if path == "/v1/traces":
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            Span(
                                span.name,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                {a.key: _value(a.value) for a in span.attributes},
                                str(resource.get("service.name")),
                                [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            )
                        )
        elif path == "/v1/metrics":
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        data = getattr(metric, metric.WhichOneof("data"))
                        for point in data.data_points:
                            value = getattr(point, "as_double", 0.0) or getattr(point, "as_int", 0)
                            if hasattr(point, "count") and not hasattr(point, "as_int"):
                                value = point.count  # a histogram point: how many were recorded
                            attributes = {a.key: _value(a.value) for a in point.attributes}
                            self.metrics.append((metric.name, attributes, float(value)))
        else:
            for resource_logs in request.resource_logs:
                for scope in resource_logs.scope_logs:
                    for record in scope.log_records:
                        attributes = {a.key: _value(a.value) for a in record.attributes}
                        self.logs.append((record.trace_id.hex(), str(_value(record.body)), attributes))
