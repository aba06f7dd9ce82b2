"""The W3C ``traceparent`` that carries an experiment's trace across queues and onto the compute, parsed
strictly and with the standard library only: the control plane's records and queue events
(``shared.telemetry.traceparent``) and the compute's trials (``gpu_jobs.telemetry``) read it here, and
nothing of OpenTelemetry is needed to read or drop one.

Only version ``00`` is accepted, in its exact 55-character lowercase form, with a trace id and a parent id
that are not all zeros (W3C Trace Context, level 1). Anything else is *dropped*: an event or record carrying
a hostile or malformed value loses only its place in the trace, never its step.
"""

from __future__ import annotations

import re
from typing import Any

TRACEPARENT_LENGTH = 55
_PATTERN = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse_traceparent(value: Any) -> str | None:
    """``value`` if it is a valid version-00 traceparent, else None (never raises, whatever the input)."""
    if not isinstance(value, str) or len(value) != TRACEPARENT_LENGTH:
        return None
    match = _PATTERN.fullmatch(value)
    if match is None or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return None
    return value


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a valid traceparent (None for anything else)."""
    valid = parse_traceparent(traceparent)
    return None if valid is None else valid[3:35]


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str | None:
    """A traceparent from OpenTelemetry's integer ids (None where either id is invalid)."""
    return parse_traceparent(f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}")
