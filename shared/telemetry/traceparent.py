"""The strict W3C ``traceparent`` parser (:mod:`gpu_jobs.traceparent`, where the compute's trials, which
have only ``gpu_jobs``, read it too): records and queue events drop a malformed or hostile value."""

from gpu_jobs.traceparent import TRACEPARENT_LENGTH, format_traceparent, parse_traceparent, trace_id_of

__all__ = ["TRACEPARENT_LENGTH", "format_traceparent", "parse_traceparent", "trace_id_of"]
