"""Staging events with the transitions they describe, and sending them without holding up a step.

The outbox is the record itself (``ExperimentRecord.event_log.pending``): a step stages its events in
the same optimistic write as its transition, so an event exists exactly when its fact was committed
(no event for a write that lost a race, none lost to a crash after the write). ``flush`` then sends
them with a bounded retry budget and clears what the topic accepted in one more write; what it could
not send stays staged, counted in ``failures``, and the sweep re-sends it. Every event id is
deterministic, so a batch sent twice (accepted, then the clearing write lost) is deduped downstream.

Why the record and not a separate outbox table: no new store primitive, table or role, and the
transition and its events are one atomic write on both store adapters. The outbox is capped
(``MAX_PENDING``); past the cap the oldest events are dropped and counted in ``dropped``. Finished
trials never reach the cap: they are staged only while the outbox has room (``TRIAL_ROOM``), the
rest stay unannounced in the store (``behind``) for the next step, or the sweep once the experiment
ended, so a long outage or a thousand trials ending at once loses none of them.

A flush that finds the topic down opens a breaker for ``cooldown_s``: the steps that follow skip
sending (their events stay staged, at no extra write), so an outage costs one retry budget per
process and cooldown, not one per step. The sweep sends regardless (``force``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.events import catalog
from shared.events.disabled import DisabledPublisher
from shared.events.port import Event, EventPublisher, PublishError
from shared.ports import Store
from shared.records import EventLog, ExperimentRecord, TrialRecord
from shared.telemetry.steps import events_delivered

log = logging.getLogger(__name__)

MAX_PENDING = 500
TRIAL_ROOM = 400
"""Trials are staged only while fewer events than this are pending (status events always are)."""
DEFAULT_SOURCE = "/rapids-hpo-control"


@dataclass
class Announcer:
    """Builds this control plane's events, stages them on records and flushes the outbox."""

    publisher: EventPublisher = field(default_factory=DisabledPublisher)
    source: str = DEFAULT_SOURCE
    attempts: int = 3
    """Tries per batch within one flush (the sweep tries again later)."""
    budget_s: float = 10.0
    """Wall-clock limit on one batch's retries."""
    backoff_s: float = 0.2
    cooldown_s: float = 30.0
    """After a flush that left events staged, later flushes wait this long before trying again."""
    _closed_at: float = field(default=0.0, init=False, repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        return self.publisher.delivers

    # ---------------------------------------------------------------------------------------- staging
    def stage_status(self, record: ExperimentRecord) -> ExperimentRecord:
        """``record`` (about to be written, its last history entry new) with its status event staged."""
        if not self.enabled or not record.history:
            return record
        event = catalog.status_changed(record, self.source)
        return record.model_copy(update={"event_log": _staged(record.event_log, [event])})

    def stage_trials(self, record: ExperimentRecord, trials: Iterable[TrialRecord]) -> EventLog:
        """The ``event_log`` that announces the trials finished since the last announcement.

        The markers advance even when no topic is configured, so turning events on later does not
        replay every old trial.
        """
        # Each trial makes at most two events (finished, and maybe a better best).
        room = max(0, (TRIAL_ROOM - len(record.event_log.pending)) // 2) if self.enabled else None
        events, markers = catalog.trial_events(record, trials, self.source, limit=room)
        if not markers:
            return record.event_log
        staged = _staged(record.event_log, events) if self.enabled else record.event_log
        return staged.model_copy(update=markers)

    def catch_up(self, store: Store, record: ExperimentRecord, rounds: int = 10) -> ExperimentRecord:
        """Sweep step for an ended experiment whose finished trials waited for room: stage them a room
        at a time and send each, until none wait or the topic stops taking them. Never raises."""
        trials = None
        for _ in range(rounds):
            if not record.event_log.behind or not record.status.terminal or record.event_log.pending:
                return record
            try:
                trials = trials if trials is not None else store.list_trials(record.id)
                staged = record.model_copy(update={"event_log": self.stage_trials(record, trials)})
                record = store.update_experiment(staged)
            except Exception as exc:  # lost a race, or the store is away: the next sweep tries again
                log.info("could not stage the remaining trial events of %s: %s", record.id, exc)
                return record
            record = self.flush(store, record, force=True)
        return record

    # ---------------------------------------------------------------------------------------- sending
    def flush(self, store: Store, record: ExperimentRecord, *, force: bool = False) -> ExperimentRecord:
        """Send ``record``'s staged events; return the record as stored afterwards. Never raises.

        While the breaker is open (the topic was down less than ``cooldown_s`` ago) nothing is sent
        unless ``force``."""
        outbox = record.event_log
        if not outbox.pending or (not force and time.monotonic() < self._closed_at):
            return record
        try:
            updated = self._deliver(outbox)
        except Exception as exc:  # a bug here must not stop the state machine either
            log.exception("event delivery for %s failed unexpectedly", record.id)
            updated = outbox.model_copy(update={"failures": outbox.failures + 1, "last_error": repr(exc)[:300]})
        self._closed_at = time.monotonic() + self.cooldown_s if updated.pending else 0.0
        events_delivered(
            sent=updated.sent - outbox.sent,
            failed=updated.failures - outbox.failures,
            dropped=updated.dropped - outbox.dropped,
        )
        if updated == outbox:
            return record
        try:
            return store.update_experiment(record.model_copy(update={"event_log": updated}))
        except Exception as exc:  # lost a race: the events stay staged and are re-sent (same ids)
            log.info("could not record event delivery for %s: %s", record.id, exc)
            return record

    def _deliver(self, outbox: EventLog) -> EventLog:
        pending = list(outbox.pending)
        sent = failures = dropped = 0
        error: str | None = None
        while pending:
            batch = pending[: self.publisher.max_batch]
            failed, exc = self._send([Event.from_json(d) for d in batch])
            failures += failed
            if exc is None:
                sent += len(batch)
                del pending[: len(batch)]
                continue
            error = str(exc)
            if not exc.permanent:
                log.warning("events not sent (%d staged, kept for the sweep): %s", len(pending), exc)
                break
            # The topic refuses something in this batch: send its events one by one, drop the refused.
            kept: list[dict[str, Any]] = []
            for document in batch:
                failed, single = self._send([Event.from_json(document)], attempts=1)
                failures += failed
                if single is None:
                    sent += 1
                elif single.permanent:
                    dropped += 1
                    log.error("event %s refused by the topic and dropped: %s", document.get("id"), single)
                else:
                    kept.append(document)
            pending = kept + pending[len(batch) :]
            if kept:
                break
        return outbox.model_copy(
            update={
                "pending": pending,
                "sent": outbox.sent + sent,
                "failures": outbox.failures + failures,
                "dropped": outbox.dropped + dropped,
                "last_error": error if error is not None else outbox.last_error,
            }
        )

    def _send(self, events: list[Event], attempts: int | None = None) -> tuple[int, PublishError | None]:
        """Publish one batch with the retry budget; returns (failed attempts, the last error or None)."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

        failed = 0
        retrying = Retrying(
            stop=stop_after_attempt(attempts or self.attempts) | stop_after_delay(self.budget_s),
            wait=wait_exponential(multiplier=self.backoff_s, max=1.0),
            retry=retry_if_exception(lambda e: isinstance(e, PublishError) and e.retryable),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        self.publisher.publish(events)
                    except PublishError:
                        failed += 1
                        raise
        except PublishError as exc:
            return failed, exc
        return failed, None


def _staged(outbox: EventLog, events: list[Event]) -> EventLog:
    pending = outbox.pending + [e.to_json() for e in events]
    over = max(0, len(pending) - MAX_PENDING)
    events_delivered(staged=len(events), dropped=over)
    if over:
        log.error("event outbox over %d events: dropping the %d oldest", MAX_PENDING, over)
    return outbox.model_copy(update={"pending": pending[over:], "dropped": outbox.dropped + over})
