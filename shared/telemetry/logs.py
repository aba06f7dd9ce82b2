"""Log records that say which experiment and which span they belong to.

A record factory (not a filter: a logger's filters miss records propagated from child loggers) gives
every record ``experiment_id``, ``trace_id`` and ``span_id``; :data:`LOG_FORMAT` prints them, and the
OpenTelemetry log handler exports them (the ids as the record's trace context, ``experiment_id`` as an
attribute: ``customDimensions`` in Application Insights). Off, the ids are ``-`` and cost one check.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from shared.telemetry.api import current_ids

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(experiment_id)s %(trace_id)s/%(span_id)s]: %(message)s"
_experiment: contextvars.ContextVar[str] = contextvars.ContextVar("rapids_hpo_experiment", default="-")


@contextlib.contextmanager
def experiment_scope(experiment_id: str) -> Iterator[None]:
    """Log records made inside carry ``experiment_id`` (this thread or task only)."""
    token = _experiment.set(experiment_id)
    try:
        yield
    finally:
        _experiment.reset(token)


def set_experiment(experiment_id: str) -> None:
    """For a process that serves one experiment (the driver): every record carries it from now on."""
    install_record_factory()
    _experiment.set(experiment_id)


def install_record_factory() -> None:
    """Add the three fields to every log record from now on (once per process)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "rapids_hpo", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.experiment_id = _experiment.get()
        record.trace_id, record.span_id = current_ids()
        return record

    factory.rapids_hpo = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
