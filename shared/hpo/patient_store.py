"""The driver's store calls ride out a storage outage instead of failing the experiment.

Every call the driver makes (a trial written, the record read, an artifact put) is idempotent: an upsert,
an overwrite or a read. So a call that fails on a transient error (the account unreachable, a timeout, a
throttle or 5xx) is tried again with backoff for up to ``PATIENCE_S``; only then does it raise. Before, one
minute of storage outage failed every running driver's step ("driver error"), and the local backend spent
a restart per outage until the experiment FAILED (found by ``bench/chaos.py``'s Azurite kills).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar, cast

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_delay, wait_exponential_jitter

log = logging.getLogger(__name__)

PATIENCE_S = 900.0
"""How long one call is tried before the driver gives up (longer than a storage account's bad minutes)."""
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A connection that failed or timed out, a throttle, a server error: worth another try."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in TRANSIENT_STATUS


class PatientStore:
    """A store (any of its methods) whose calls are retried on transient errors for ``patience`` seconds."""

    def __init__(self, store: object, patience: float = PATIENCE_S, max_wait: float = 15.0) -> None:
        self._store = store
        self._retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(patience),
            wait=wait_exponential_jitter(initial=0.5, max=max_wait),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def patient(*args: Any, **kwargs: Any) -> Any:
            return self._retrying.copy()(attribute, *args, **kwargs)  # a copy: calls come from several threads

        return patient


def patient(store: T, patience: float = PATIENCE_S) -> T:
    """``store`` with every call retried on transient errors (typed as the store it wraps)."""
    if isinstance(store, PatientStore):
        return cast(T, store)
    return cast(T, PatientStore(store, patience))
