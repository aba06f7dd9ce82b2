"""Timer steps: re-drive experiments whose events were lost, and delete compute no experiment owns."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from shared.backends import ORPHAN_FINDERS
from shared.context import Context
from shared.handlers.machine import EVENT_FOR_STATUS, MAX_REDRIVES
from shared.handlers.writer import S, StepUpdate, transition
from shared.ports import OrphanFinder
from shared.records import TERMINAL_STATUSES, EventType, ExperimentRecord, ExperimentStatus, UnreadableRecord, utcnow

log = logging.getLogger(__name__)


def sweep(ctx: Context, *, stall_seconds: int | None = None) -> dict[str, list[str]]:
    """Timer step: re-drive experiments whose events were lost, tear down finished ones' compute, and
    re-send CloudEvents a step could not deliver (``announced``: experiments whose outbox is now empty).
    Records that do not validate are skipped and reported (``unreadable``)."""
    stall = timedelta(seconds=stall_seconds if stall_seconds is not None else ctx.settings.stall_seconds)
    cutoff = utcnow() - stall
    report: dict[str, list[str]] = {"redriven": [], "failed": [], "teardown": [], "announced": [], "unreadable": []}
    for stored in swept_experiments(ctx):
        if isinstance(stored, UnreadableRecord):
            log.warning("experiment %s skipped: %s", stored.id, stored.reason)
            report["unreadable"].append(stored.id)
            continue
        record = ctx.announcer.flush(ctx.store, stored, force=True)  # no-op unless events are staged
        if not record.event_log.pending:
            record = ctx.announcer.catch_up(ctx.store, record)  # no-op unless trials wait for room
        caught_up = not record.event_log.pending and not record.event_log.behind
        if (stored.event_log.pending or stored.event_log.behind) and caught_up:
            report["announced"].append(record.id)
        if record.updated_at > cutoff:
            continue
        if record.status in TERMINAL_STATUSES:
            if not record.torn_down:
                transition(ctx, record, record.status, "sweep", next_event=EventType.TEARDOWN)
                report["teardown"].append(record.id)
            continue
        if record.redrives >= MAX_REDRIVES:
            reason = f"stalled: no progress for {stall.total_seconds():.0f} s after {MAX_REDRIVES} re-drives"
            transition(ctx, record, S.FAILED, reason, next_event=EventType.TEARDOWN, update=StepUpdate(error=reason))
            report["failed"].append(record.id)
            continue
        transition(
            ctx,
            record,
            record.status,
            "re-driven by sweep",
            next_event=EVENT_FOR_STATUS[record.status],
            update=StepUpdate(redrives=record.redrives + 1),
        )
        report["redriven"].append(record.id)
    return report


def sweep_orphans(ctx: Context) -> list[str]:
    """Timer step: every backend that finds orphans deletes the compute of experiments that are gone or
    torn down (each returns nothing where it is not configured for Azure). Only those backends are built:
    a fresh instance's first timer run imports no other backend's SDK (azure-ai-ml takes seconds). An
    unreadable record counts as live: what cannot be judged is not deleted (its events revoke its credential)."""
    records, unreadable = all_experiments(ctx)
    live = {record.id for record in records if not record.torn_down} | {u.id for u in unreadable}
    deleted: list[str] = []
    for name in ORPHAN_FINDERS:
        backend = ctx.backend(name)
        if backend.capabilities.finds_orphans and isinstance(backend, OrphanFinder):
            deleted += backend.sweep_orphans(live)
    return deleted


SWEEP_HORIZON = timedelta(days=8)
"""How far back the sweeps page through ended experiments: past the longest run a spec may ask for
(``MAX_RUN_SECONDS``, under 7 days) plus the cost guard's grace. Older records ended long ago and were
settled by earlier sweeps; an active record of any age is still found, by its status."""
ACTIVE = tuple(s for s in ExperimentStatus if s not in TERMINAL_STATUSES)


def swept_experiments(
    ctx: Context, horizon: timedelta = SWEEP_HORIZON
) -> Iterator[ExperimentRecord | UnreadableRecord]:
    """The records a sweep must look at, one page in memory at a time: every active one (a status-filtered
    listing: the store returns only those) and every one created within ``horizon`` (newest first, the
    listing's order, stopping at the first older one). The cost of a sweep grows with the recent and the
    active experiments, not with the whole history the table keeps."""
    seen: set[str] = set()
    for status in ACTIVE:
        for record in _pages(ctx, status):
            seen.add(record.id)
            yield record
    oldest = utcnow() - horizon
    for record in _pages(ctx, None):
        if isinstance(record, ExperimentRecord) and record.created_at < oldest:
            return
        if record.id not in seen:
            yield record


def _pages(ctx: Context, status: ExperimentStatus | None) -> Iterator[ExperimentRecord | UnreadableRecord]:
    """Pages of 25, 50, 100, then 200 records: a listing stopped early (at the horizon) read little past it."""
    token: str | None = None
    limit = 25
    while True:
        page, token = ctx.store.list_experiments(status=status, limit=limit, page_token=token)
        limit = min(limit * 2, 200)
        yield from page
        if token is None:
            return


def all_experiments(ctx: Context) -> tuple[list[ExperimentRecord], list[UnreadableRecord]]:
    """The records the sweeps look at (:func:`swept_experiments`), and apart those whose record does not
    validate (each logged, none raised)."""
    records: list[ExperimentRecord] = []
    unreadable: list[UnreadableRecord] = []
    for item in swept_experiments(ctx):
        if isinstance(item, UnreadableRecord):
            log.warning("experiment %s skipped: %s", item.id, item.reason)
            unreadable.append(item)
        else:
            records.append(item)
    return records, unreadable
