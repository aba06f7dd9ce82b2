"""Azure Resource Manager plumbing shared by the Azure backends: auth for test endpoints and retries.

Who retries: **we do, not azure-core.** Clients built here pass ``retry_total=0``, so azure-core's
``RetryPolicy`` sends each request exactly once, and :func:`arm_call` retries the whole operation
(for a long-running operation: the initial PUT/DELETE *and* its polling) with ``tenacity``:

* 409 (another operation in progress, resource in use), 429 (throttled) and 5xx, plus connection
  errors, are retried with exponential backoff and jitter; a ``Retry-After`` header (seconds or an
  HTTP date, or ``retry-after-ms``) replaces the computed wait, capped at ``max_wait_s``; a 409 whose
  code says it will not change by waiting (``SkuNotAvailable``, a quota) is not;
* at most ``attempts`` tries and ``max_total_s`` seconds (no sleep starts that would pass it);
* any other 4xx (400, 401, 403, 404, ...) and a long-running operation that ends ``Failed`` are
  not retried here.

Either way the caller gets :class:`~shared.errors.BackendError` whose message names the action,
the HTTP status, and Azure's error code and message, with ``code`` set and a classification the
caller can act on (:func:`classify`): ``retryable`` when waiting may help (throttling or 5xx that
outlasted this call's budget, a capacity shortage), not when it cannot (a size the region does not
offer, a quota, a bad request); a 403 says that role assignments take minutes to propagate. A client
made elsewhere with the SDK's own retries left on would multiply the two budgets (10 SDK retries per
try); don't.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import tenacity
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

from shared.errors import BackendError

log = logging.getLogger(__name__)

T = TypeVar("T")

ARM_SCOPE = "https://management.azure.com/.default"
RETRYABLE_STATUS = frozenset({409, 429})
CAPACITY_CODES = frozenset(
    {
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
    }
)
"""Azure had no capacity for the VM at that moment ("Troubleshoot allocation failures"): worth trying later.
For a Spot VM, ``SkuNotAvailable`` means the same ("Error messages for Azure Spot Virtual Machines")."""
QUOTA_CODES = frozenset({"QuotaExceeded"})
PERMANENT_CONFLICTS = frozenset({"SkuNotAvailable", "OperationNotAllowed", *QUOTA_CODES})
"""409s that waiting within one call does not fix."""
AUTHORIZATION_CODES = frozenset({"AuthorizationFailed", "LinkedAuthorizationFailed"})


@dataclass(frozen=True)
class RetrySettings:
    """How :func:`arm_call` retries transient ARM failures; ``sleep`` is injectable for tests."""

    attempts: int = 5
    initial_wait_s: float = 2.0
    max_wait_s: float = 60.0
    jitter_s: float = 1.0
    max_total_s: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


DEFAULT_RETRY = RetrySettings()


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an azure-core error (None for connection errors and the like)."""
    return getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is ARM's 404."""
    return status_of(exc) == 404


def error_code(exc: BaseException) -> str | None:
    """Azure's error code of an ARM error (``SkuNotAvailable``, ...), or None."""
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) if isinstance(exc, HttpResponseError) else None


def is_quota(exc: BaseException) -> bool:
    """Whether ``exc`` is Azure's "exceeding approved ... quota" (``OperationNotAllowed`` or ``QuotaExceeded``)."""
    code = error_code(exc)
    return code in QUOTA_CODES or (code == "OperationNotAllowed" and "quota" in str(exc).lower())


def is_transient(exc: BaseException) -> bool:
    """409, 429, 5xx and connection failures are worth another try; everything else is not, nor a 409
    whose code waiting does not change (:data:`PERMANENT_CONFLICTS`)."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    status = status_of(exc)
    if status == 409 and error_code(exc) in PERMANENT_CONFLICTS:
        return False
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


def classify(exc: BaseException, *, exhausted: bool) -> tuple[bool, str]:
    """(retryable, hint) for an ARM failure: whether another step later may succeed, and what a user can
    do about it. ``exhausted``: a transient failure that outlasted one call's retries."""
    code = error_code(exc)
    if exhausted or code in CAPACITY_CODES:
        return True, ""
    if code == "SkuNotAvailable":
        return False, (
            " (the size is not offered to this subscription in this region, or, for Spot, there is no Spot "
            "capacity now: `az vm list-skus --location <region> --size <size>` shows the restrictions; "
            "choose another size or region)"
        )
    if is_quota(exc):
        return False, (
            " (request a quota increase for the size's family in this region, Spot quota apart: "
            "`az vm list-usage --location <region>`)"
        )
    if code in AUTHORIZATION_CODES:
        return False, (
            " (the Function App's identity lacks this role: deploy infra/ (an Owner or User Access "
            "Administrator must), and allow up to 10 minutes for new role assignments to take effect)"
        )
    return False, ""


def describe_error(exc: BaseException) -> str:
    """``"429 TooManyRequests: <Azure's message>"`` for an ARM error, the exception text otherwise."""
    if not isinstance(exc, HttpResponseError):
        return f"{type(exc).__name__}: {exc}"
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or exc.reason or "Error"
    message = getattr(error, "message", None) or exc.message or ""
    message = message.strip().splitlines()[0] if message.strip() else ""
    status = status_of(exc)
    # A long-running operation that ends "Failed" raises with the status of the (200) status poll.
    head = f"{status} {code}" if status and status >= 400 else f"operation failed: {code}"
    return f"{head}: {message}" if message else head


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait from ``retry-after-ms``/``x-ms-retry-after-ms``/``Retry-After``."""
    response = getattr(exc, "response", None)
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) / 1000.0, 0.0)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class _ArmWait(tenacity.wait.wait_base):
    """Exponential backoff with jitter, unless the server said how long to wait."""

    def __init__(self, settings: RetrySettings) -> None:
        self._settings = settings
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=settings.initial_wait_s, max=settings.max_wait_s, jitter=settings.jitter_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        requested = retry_after_seconds(exc) if exc is not None else None
        if requested is not None:
            return min(requested, self._settings.max_wait_s)
        return float(self._backoff(retry_state))


def arm_call(action: str, fn: Callable[[], T], retry: RetrySettings = DEFAULT_RETRY) -> T:
    """Run ``fn`` (one ARM operation, LRO included) with retries; raise BackendError on failure.

    ``action`` reads as a gerund phrase naming the resource ("creating network security group
    nsg-exp-1"); it starts every error message.
    """

    def _log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1fs",
            action,
            state.attempt_number,
            describe_error(exc) if exc else "?",
            wait,
        )

    retrying = tenacity.Retrying(
        sleep=retry.sleep,
        stop=tenacity.stop_after_attempt(retry.attempts) | tenacity.stop_before_delay(retry.max_total_s),
        wait=_ArmWait(retry),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=_log_retry,
        reraise=False,
    )
    try:
        return retrying(fn)
    except tenacity.RetryError as exhausted:
        last = exhausted.last_attempt
        exc = last.exception()
        raise BackendError(
            f"{action} failed after {last.attempt_number} attempts: {describe_error(exc) if exc else '?'}",
            retryable=True,
            code=error_code(exc) if exc else None,
        ) from exc
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        retryable, hint = classify(exc, exhausted=False)
        raise BackendError(
            f"{action} failed: {describe_error(exc)}{hint}", retryable=retryable, code=error_code(exc)
        ) from exc


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackARMAuthenticationPolicy(ARMChallengeAuthenticationPolicy):
    """ARM's own bearer-token policy with https not enforced, for a local (test) ARM endpoint.

    It sets azure-core's documented per-request ``enforce_https=False`` option on every request,
    including the LRO poller's, so token caching and challenge handling stay the SDK's.
    """

    def on_request(self, request: Any) -> None:
        """Authorize the request, allowing plain http (the client only reaches loopback)."""
        request.context.options["enforce_https"] = False
        super().on_request(request)


def client_kwargs(credential: Any, base_url: str | None, polling_interval: float | None) -> dict[str, Any]:
    """Keyword arguments for an ``azure-mgmt-*`` client: our retry policy, and test endpoints.

    A plain-http ``base_url`` is accepted only for loopback hosts (a bearer token never crosses a
    network unencrypted).
    """
    kwargs: dict[str, Any] = {"retry_total": 0}
    if polling_interval is not None:
        kwargs["polling_interval"] = polling_interval
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if parts.scheme == "http":
            if not _is_loopback(parts.hostname):
                raise ValueError(f"plain http is allowed only for a loopback ARM endpoint, not {base_url!r}")
            kwargs["authentication_policy"] = LoopbackARMAuthenticationPolicy(credential, ARM_SCOPE)
        kwargs["base_url"] = base_url.rstrip("/")
    return kwargs


def make_arm_client(
    client_class: Callable[..., T],
    subscription_id: str,
    credential: Any = None,
    base_url: str | None = None,
    *,
    polling_interval: float | None = None,
) -> T:
    """An ``azure-mgmt-*`` client with the SDK's retries off (:func:`arm_call` retries).

    ``credential`` defaults to ``DefaultAzureCredential``; ``base_url`` points it at another ARM
    endpoint (plain http only for loopback, e.g. a test server).
    """
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return client_class(credential, subscription_id, **client_kwargs(credential, base_url, polling_interval))
