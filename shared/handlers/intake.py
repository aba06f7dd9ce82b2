"""Request intake: a spec from HTTP or the request queue becomes a stored experiment and its first event;
a cancel request becomes a CANCELLING transition."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
from typing import Any, NoReturn

from shared.config import EXPERIMENT_ID_PATTERN, QUEUE_REQUESTS
from shared.context import Context
from shared.errors import AlreadyExists, NotFound
from shared.handlers.machine import status_message
from shared.handlers.warm_start import ReadRule, read_seed, same_sender
from shared.handlers.writer import S, send_event, transition
from shared.queues import MAX_MESSAGE_BYTES, poison_queue_name
from shared.records import TERMINAL_STATUSES, EventType, ExperimentRecord, SubmittedBy, Transition, utcnow
from shared.spec import ExperimentSpec, SpecError, SpecPolicy, read_document, validate_spec
from shared.telemetry import current_traceparent, traced
from shared.telemetry import steps as telemetry_steps

log = logging.getLogger(__name__)

RESERVED_KEY_PREFIXES: tuple[str, ...] = ("queue:",)
"""Idempotency keys the control plane makes itself (``queue:<message id>``): a caller never sends one."""


class InvalidRequest(ValueError):
    """A request message that can never succeed; ``errors`` name the fields."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class IdempotencyConflict(ValueError):
    """The idempotency key was first used with another spec: a replay must send the same spec."""


def reserved_key_problem(key: str | None) -> str | None:
    """Why a caller may not send ``key`` (a prefix the control plane reserves), or None."""
    if key is not None and key.startswith(RESERVED_KEY_PREFIXES):
        return f"keys starting with {' or '.join(RESERVED_KEY_PREFIXES)} are reserved for the control plane's own use"
    return None


def spec_fingerprint(spec: ExperimentSpec | None) -> str:
    """SHA-256 of a spec's normalized document (keys sorted): equal for the same spec however it was written
    (YAML or JSON, key order, defaults spelled out or not, stored or just admitted)."""
    document = spec.to_document() if spec is not None else {}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_experiment_id() -> str:
    """Sortable, unique, valid as a table key, blob prefix and Azure resource-name part."""
    return f"exp-{utcnow():%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------------------------- submit
def _submitted_reason(spec: ExperimentSpec) -> str:
    """ "submitted", with a warning for each VM size the price catalogue does not know (allowed, unpriced)
    and for GPUs the concurrency leaves idle."""
    from shared.cost.catalogue import load_catalogue
    from shared.cost.estimate import spec_warnings

    warnings = spec_warnings(spec, load_catalogue())
    for warning in warnings:
        log.warning("%s: %s", spec.name, warning)
    return "; warning: ".join(["submitted", *warnings])


@traced("submit experiment")
def submit_experiment(
    ctx: Context,
    spec: ExperimentSpec,
    *,
    idempotency_key: str | None = None,
    experiment_id: str | None = None,
    submitted_by: SubmittedBy | None = None,
    may_read: ReadRule | None = None,
) -> tuple[ExperimentRecord, bool]:
    """Store a new experiment, recording who submitted it, and send its first event. Returns ``(record,
    created)``; a retried request (same idempotency key or id) returns the existing experiment with
    ``created=False``. An Entra principal's idempotency keys are their own: another caller's equal key
    claims a different experiment (a key is no way to read someone else's).

    Under a key, the key's claim and the experiment are stored in one transaction
    (:meth:`~shared.ports.Store.create_keyed_experiment`): the first writer makes no other storage round
    trip than an unkeyed submit, a replay reads the claim and the experiment it names.

    ``spec.warm_start``'s experiment is read here (:mod:`shared.handlers.warm_start`; ``may_read``: whom the
    caller may read, by default :func:`~shared.handlers.warm_start.same_sender`); ``SpecError`` when it
    cannot seed this one."""
    fresh = experiment_id is None
    experiment_id = experiment_id or new_experiment_id()
    if idempotency_key and submitted_by is not None and submitted_by.object_id:
        idempotency_key = f"{submitted_by.tenant_id}/{submitted_by.object_id}/{idempotency_key}"
    if not fresh and not idempotency_key:  # a new random id cannot exist yet: skip the round trip
        try:
            return _replayed(ctx, ctx.store.get_experiment(experiment_id), spec, idempotency_key), False
        except NotFound:
            pass
    seed = read_seed(ctx.store, spec, may_read or same_sender(submitted_by))
    record = ExperimentRecord(
        id=experiment_id,
        name=spec.name,
        warm_start=seed,
        spec=spec,
        backend=spec.compute.backend,
        trials_total=spec.effective_total_trials(),
        idempotency_key=idempotency_key,
        submitted_by=submitted_by,
        event_seq=1,
        history=[Transition(at=utcnow(), status=S.SUBMITTED, reason=_submitted_reason(spec))],
        traceparent=current_traceparent(),  # this submit's span: the experiment's trace starts here
    )
    try:  # SUBMITTED is announced with the first step's events (no publish on the HTTP path)
        staged = ctx.announcer.stage_status(record)
        if idempotency_key:
            record, created = ctx.store.create_keyed_experiment(staged)
            if not created:  # the key was bound first, perhaps by a concurrent request
                return _replayed(ctx, record, spec, idempotency_key), False
        else:
            record = ctx.store.create_experiment(staged)
    except AlreadyExists:  # a retry, or the store's own retry after a lost reply: the first write won
        return _replayed(ctx, ctx.store.get_experiment(experiment_id), spec, idempotency_key), False
    telemetry_steps.submitted(record.id, record.backend)
    send_event(ctx, EventType.PROVISION, record)
    return record, True


def _replayed(
    ctx: Context, record: ExperimentRecord, spec: ExperimentSpec, idempotency_key: str | None
) -> ExperimentRecord:
    """A repeated submit of ``record``: its first event is sent again while it is still SUBMITTED (the
    attempt that stored it may have died before sending it; a duplicate is stale or a no-op, the fencing
    token sees to that), so a retried request never leaves an experiment waiting for the sweep.

    Under an idempotency key the spec must be the one stored (:func:`spec_fingerprint`): the same key
    with another spec is :class:`IdempotencyConflict`, never the first experiment passed off as the second.
    """
    if idempotency_key and spec_fingerprint(record.spec) != spec_fingerprint(spec):
        raise IdempotencyConflict(
            f"this idempotency key was first used for experiment {record.id} with another spec: "
            "send the same spec to replay it, or a new key for a new experiment"
        )
    if record.status is S.SUBMITTED:
        send_event(ctx, EventType.PROVISION, record)
    return record


QUEUE_SENDER = SubmittedBy(kind="queue", name=QUEUE_REQUESTS)
"""Who submitted a spec from the shared request queue: storage does not say which identity sent a message,
so the queue itself is recorded; such experiments are cancelled and downloaded by admins."""


def handle_request_message(
    ctx: Context, body: str | bytes, *, message_id: str | None = None, trusted_sender: bool = False
) -> ExperimentRecord:
    """Handle one ``experiment-requests`` message: a spec, or ``{"spec": ..., "id"?, "idempotency_key"?,
    "submitted_by"?}``.

    ``submitted_by`` (a :class:`SubmittedBy` of kind ``user`` or ``service``) is recorded only from a
    ``trusted_sender`` queue: one whose send right (Storage Queue Data Message Sender scoped to that queue)
    only one service holds, so the queue vouches for the sender and the sender for whom it names. On the
    shared queue anyone with the send right could name anyone: the field is refused there, and the
    experiment belongs to :data:`QUEUE_SENDER`.

    The message is read by the same strict reader as HTTP bodies and CLI files, and hosted mode's rules
    apply. An invalid request raises ``InvalidRequest`` (the trigger, :func:`take_request_message`, moves it
    to the poison queue); when the message named an experiment id, that experiment is also recorded as
    FAILED with the reason (for a JSON envelope the strict reader refused, its ``id`` is still recovered).
    """
    try:
        document = read_document(body)
    except SpecError as exc:
        _fail_request(ctx, _envelope_id(body), f"unreadable request: {exc}", exc.errors)
    experiment_id: str | None = None
    key: str | None = None
    submitted_by = QUEUE_SENDER
    if "spec" in document:
        key = _optional_str(document.get("idempotency_key"), "idempotency_key")
        experiment_id = _optional_str(document.get("id"), "id")
        reserved = reserved_key_problem(key)
        if reserved:
            raise InvalidRequest(f"idempotency_key: {reserved}", [{"loc": "idempotency_key", "msg": reserved}])
        if experiment_id is not None and not re.match(EXPERIMENT_ID_PATTERN, experiment_id):
            raise InvalidRequest(
                f"invalid experiment id {experiment_id!r}: expected {EXPERIMENT_ID_PATTERN}",
                [{"loc": "id", "msg": f"does not match {EXPERIMENT_ID_PATTERN}"}],
            )
        extra = set(document) - {"spec", "id", "idempotency_key", "submitted_by"}
        if extra:
            _fail_request(ctx, experiment_id, f"unknown envelope field(s): {', '.join(sorted(extra))}", [])
        if "submitted_by" in document:
            submitted_by = _named_sender(ctx, experiment_id, document["submitted_by"], trusted_sender)
        document = document["spec"]
    try:
        spec = validate_spec(read_document(document), SpecPolicy.from_settings(ctx.settings))
    except SpecError as exc:
        _fail_request(ctx, experiment_id, str(exc), exc.errors)
    if key is None and experiment_id is None and message_id:
        key = f"queue:{message_id}"  # a redelivered message must not start a second experiment
    try:
        record, _ = submit_experiment(
            ctx, spec, idempotency_key=key, experiment_id=experiment_id, submitted_by=submitted_by
        )
    except IdempotencyConflict as exc:
        _fail_request(ctx, experiment_id, str(exc), [{"loc": "idempotency_key", "msg": str(exc)}])
    except SpecError as exc:  # warm_start names an experiment this sender cannot start from
        _fail_request(ctx, experiment_id, str(exc), exc.errors)
    return record


@traced("experiment request")
def take_request_message(
    ctx: Context,
    body: str | bytes,
    *,
    message_id: str | None = None,
    trusted_sender: bool = False,
    queue_name: str = QUEUE_REQUESTS,
) -> ExperimentRecord | None:
    """The queue trigger's entry: :func:`handle_request_message`, where a request that can never succeed
    (``InvalidRequest``) is final: its FAILED record (if it named an id) is written, its body goes to
    ``<queue>-poison`` once, and it is not raised, so the host does not redeliver it four more times to
    fail alike. Anything else (the store unreachable) still raises: the host retries what may succeed."""
    try:
        return handle_request_message(ctx, body, message_id=message_id, trusted_sender=trusted_sender)
    except InvalidRequest as exc:
        log.warning("request %s refused, dead-lettered without retries: %s", message_id, str(exc)[:500])
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        kept = text.encode("utf-8")[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")  # U+FFFD can triple a byte
        ctx.queues.queue(poison_queue_name(queue_name)).send(kept)
        return None


def _named_sender(ctx: Context, experiment_id: str | None, value: Any, trusted: bool) -> SubmittedBy:
    """The envelope's ``submitted_by``, from a trusted sender's queue only (see :func:`handle_request_message`)."""
    if not trusted:
        _fail_request(
            ctx,
            experiment_id,
            "submitted_by is accepted only on a trusted sender's queue: the shared request queue cannot tell "
            "who sent a message",
            [{"loc": "submitted_by", "msg": "not accepted on this queue"}],
        )
    try:
        named = SubmittedBy.model_validate(value)
    except ValueError as exc:
        _fail_request(ctx, experiment_id, f"invalid submitted_by: {exc}", [{"loc": "submitted_by", "msg": str(exc)}])
    if named.kind not in {"user", "service"} or not (named.object_id and named.tenant_id):
        _fail_request(
            ctx,
            experiment_id,
            "submitted_by must name an Entra principal (kind user or service, object_id, tenant_id)",
            [{"loc": "submitted_by", "msg": "must name an Entra principal"}],
        )
    return named


def _envelope_id(body: str | bytes) -> str | None:
    """The valid ``id`` of a JSON envelope the strict reader refused (duplicate keys, say), if any."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: YAML is never parsed leniently (aliases)
    candidate = document.get("id") if isinstance(document, dict) else None
    if isinstance(candidate, str) and re.match(EXPERIMENT_ID_PATTERN, candidate):
        return candidate
    return None


def _optional_str(value: Any, loc: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise InvalidRequest(
            f"{loc}: expected a non-empty string of at most 128 characters, got {value!r}",
            [{"loc": loc, "msg": "expected a non-empty string of at most 128 characters"}],
        )
    return value


def _fail_request(ctx: Context, experiment_id: str | None, reason: str, errors: list[Any]) -> NoReturn:
    if experiment_id is not None:
        record = ExperimentRecord(
            id=experiment_id,
            name=experiment_id,
            spec=None,
            status=S.FAILED,
            error=f"invalid request: {reason}",
            ended_at=utcnow(),
            torn_down=True,
            status_emitted=True,
            history=[Transition(at=utcnow(), status=S.FAILED, reason="invalid request")],
        )
        # AlreadyExists: a valid experiment with this id exists already, or the failure was recorded before.
        with contextlib.suppress(AlreadyExists):
            record = ctx.store.create_experiment(ctx.announcer.stage_status(record))
            ctx.status_queue.send(status_message(record))  # a FAILED experiment, like any other
            ctx.announcer.flush(ctx.store, record)
    raise InvalidRequest(reason, errors)


# --------------------------------------------------------------------------------------------- cancel
def request_cancel(ctx: Context, experiment_id: str) -> ExperimentRecord:
    """Ask for an experiment to stop (DELETE). Terminal experiments are returned unchanged."""
    record = ctx.store.get_experiment(experiment_id)
    if record.status in TERMINAL_STATUSES or record.status is S.CANCELLING:
        return record
    return transition(ctx, record, S.CANCELLING, "cancel requested", next_event=EventType.CANCEL, announce=False)
