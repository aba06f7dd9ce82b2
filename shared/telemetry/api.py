"""What the control plane and the driver call: spans, the current traceparent, metrics. Nothing here
imports OpenTelemetry until telemetry is on (:func:`activate`, called by ``shared.telemetry.setup``): off,
every call is a check of one module global and a return, and ``import function_app`` loads no SDK.

A span's ``parent`` is a traceparent string (a queue message's, the compute's ``TRACEPARENT``): the span
joins that trace even when another context is current (the Functions worker attaches the host's
invocation), and links to that current span instead, so the host's telemetry stays one click away.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from gpu_jobs.telemetry import clean_attributes, remote_context
from shared.telemetry.metrics import INSTRUMENTS
from shared.telemetry.traceparent import format_traceparent, parse_traceparent, trace_id_of

P = ParamSpec("P")
R = TypeVar("R")
Attributes = Mapping[str, Any]
SCOPE = "rapids_hpo"


@dataclass
class _Active:
    tracer: Any
    meter: Any
    mode: str
    instruments: dict[str, Any] = field(default_factory=dict)


_state: _Active | None = None


def activate(tracer_provider: Any, meter_provider: Any, mode: str) -> None:
    """Turn the hooks on over these providers (``setup.configure`` does; tests pass in-memory ones)."""
    global _state
    _state = _Active(tracer_provider.get_tracer(SCOPE), meter_provider.get_meter(SCOPE), mode)


def deactivate() -> None:
    """Turn the hooks off again (tests); the providers are left as they are."""
    global _state
    _state = None


def enabled() -> bool:
    return _state is not None


def mode() -> str:
    """``azure``, ``otel``, or ``off``."""
    return "off" if _state is None else _state.mode


@contextlib.contextmanager
def span(
    name: str, *, parent: str | None = None, attributes: Attributes | None = None, kind: str = "internal"
) -> Iterator[Any]:
    """A span, current while the block runs (None when off): a child of ``parent`` when that is a valid
    traceparent, else of the current span. An exception is recorded on it and re-raised."""
    state = _state
    if state is None:
        yield None
        return
    from opentelemetry import trace

    context = remote_context(parent)
    links = []
    if context is not None:
        here = trace.get_current_span().get_span_context()
        if here.is_valid and f"{here.trace_id:032x}" != trace_id_of(parent):
            links.append(trace.Link(here, {"rapids_hpo.link": "invocation"}))
    with state.tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes=clean_attributes(attributes),
        links=links,
    ) as current:
        yield current


@contextlib.contextmanager
def host_trace(invocation: Any) -> Iterator[None]:
    """The Functions host's trace context of this invocation (``azure.functions.Context.trace_context``)
    current for the block, so what the app records is a child of the host's execution span. The Functions
    docs' way for a Python function; the worker attaches it too (``PYTHON_ENABLE_OPENTELEMETRY``), but not on
    the thread a synchronous function runs on. Nothing when off, or without a valid context."""
    trace_context = getattr(invocation, "trace_context", None) if _state is not None else None
    context = remote_context(getattr(trace_context, "trace_parent", None))
    if context is None:
        yield
        return
    from opentelemetry import context as otel_context

    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the call runs in a span called ``name`` (a plain call when off)."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _state is None:
                return function(*args, **kwargs)
            with span(name):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def annotate(attributes: Attributes) -> None:
    """Set attributes on the current span (nothing when off or outside a span)."""
    if _state is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(clean_attributes(attributes))


def add_event(name: str, attributes: Attributes | None = None) -> None:
    if _state is None:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(name, clean_attributes(attributes))


def current_traceparent() -> str | None:
    """The current span as a traceparent (None when off or outside a span)."""
    if _state is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format_traceparent(context.trace_id, context.span_id, context.trace_flags.sampled)


def current_ids() -> tuple[str, str]:
    """``(trace id, span id)`` in hex for log lines; ``("-", "-")`` when off or outside a span."""
    if _state is None:
        return "-", "-"
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "-", "-"
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent_for(stored: str | None) -> str | None:
    """What a message about an experiment carries: the current span when it belongs to the experiment's
    trace (``stored``, the record's) or the experiment has none; else the stored one (a sweep re-drive,
    which runs in a trace of its own, keeps the experiment in its trace)."""
    here = current_traceparent()
    if here is not None and (stored is None or trace_id_of(here) == trace_id_of(stored)):
        return here
    return parse_traceparent(stored)


# ------------------------------------------------------------------------------------------- metrics
def _instrument(name: str) -> Any:
    state = _state
    assert state is not None
    found = state.instruments.get(name)
    if found is None:
        kind, unit, description = INSTRUMENTS[name]
        factory = {
            "counter": state.meter.create_counter,
            "histogram": state.meter.create_histogram,
            "gauge": state.meter.create_gauge,
        }[kind]
        found = state.instruments[name] = factory(name, unit=unit, description=description)
    return found


def count(name: str, value: float = 1, attributes: Attributes | None = None) -> None:
    """Add to a counter of :data:`~shared.telemetry.metrics.INSTRUMENTS` (nothing when off)."""
    if _state is not None and value:
        _instrument(name).add(value, clean_attributes(attributes))


def record(name: str, value: float, attributes: Attributes | None = None) -> None:
    """Record a histogram value or set a gauge (nothing when off)."""
    if _state is None:
        return
    instrument = _instrument(name)
    (instrument.set if INSTRUMENTS[name][0] == "gauge" else instrument.record)(value, clean_attributes(attributes))
