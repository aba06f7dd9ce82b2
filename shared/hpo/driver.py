"""The HPO driver: Optuna ask/tell on the driver, each trial run on a Dask cluster.

The driver owns one Optuna study (in memory, rebuilt from the store on resume). Trials run in Dask
slot tasks calling ``gpu_jobs.train.run_trial``; after every fold a trial reports the running mean of the
primary metric to the driver on its slot's line (:mod:`shared.hpo.lines`: a direct comm from the driver to
the slot's worker) and waits there for the pruning decision, so AzureML-style early termination is decided
against every trial's history, on any cluster (a ``LocalCluster`` here, an ``AzureVMCluster`` of
``dask_cuda.CUDAWorker``s in Azure).

Round trips (issue 29): trials run in long-lived slot tasks, one per trial in flight, that take trial after
trial (:mod:`shared.hpo.slots`), so a trial costs no Dask task of its own, and its messages do not pass
through the scheduler. The driver waits on one local inbox that the slots' hellos (on the experiment's
topic), their lines' messages and closings, and the slot futures' done callbacks fill, so it polls nothing;
assignments and decisions go out at one wake-up per inbox batch without waiting for an answer; a trial's
record is written when it starts, when it ends and with its folds at most once per ``fold_write_interval``.
What a trial itself waits for is in :mod:`shared.hpo.trial_task`.

Limits: at most ``max_concurrent_trials`` tasks in flight, ``max_total_trials`` in all, the
experiment ``timeout`` stops everything, ``trial_timeout`` stops one trial: cooperatively at the next
fold boundary, and by restarting its worker if the fold itself overruns (Dask cannot interrupt a
running thread). Both clocks start when the trial starts on a worker (its ``started`` report), not when
it is asked: a trial waits in the driver until a slot is free. A hard stop restarts the worker of the slot a
trial was given to (a trial not given to a slot yet just ends). Every trial is written
to the ``TrialStore`` when it starts, when it ends, and as its folds finish (``TrialRecord.folds``, at
most once per report batch).

Resume: a restarted driver fails the trials the store shows RUNNING and retries each once under the
same number, from the folds it finished (:mod:`shared.hpo.resume`): it trains only the others and
reports the running means, pruning decisions and value of an uninterrupted run. The kept folds' values
go to the retry's Optuna trial up front, so the pruner sees each once. A trial whose worker was lost goes to
the next free slot from the folds its reports showed, and a step reported again gets the decision it got the
first time.

Reproducibility: the sampler is seeded and asked in trial-number order, so a sequential run
(``max_concurrent_trials: 1``) repeats exactly. With concurrency, random and grid sampling still
repeat (they ignore history); TPE sees completions in the order they happen, which varies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import optuna
from distributed import Client, Future

from shared.cost.ledger import BudgetGuard
from shared.hpo import stopping
from shared.hpo.cluster import optuna_state, own_worker
from shared.hpo.objectives import constraint_values, objective_values, signed_others
from shared.hpo.outcome import ExperimentOutcome, experiment_outcome
from shared.hpo.rebuild import rebuild_study
from shared.hpo.reports import BadReport, ReportedResult, TrialReport, expected_units, parse_report
from shared.hpo.resume import optuna_attrs, resumed_seconds, task_folds, with_fold
from shared.hpo.search_builders import CONSTRAINTS_ATTR
from shared.hpo.search_space import make_pruner, make_sampler, reseed_for_trial, suggest_params
from shared.hpo.slots import Slot, SlotPool, SlotReady, parse_ready
from shared.hpo.trial_task import TrialFunction, TrialResult, TrialTask, is_last_step
from shared.hpo.warm_start import next_config
from shared.ports import TrialStore
from shared.records import BestTrial, TrialRecord, TrialState, WarmStartSeed, best_of, utcnow
from shared.spec import ExperimentSpec
from shared.spec.pruning import row_factor
from shared.spec.search_table import missing_modules
from shared.telemetry.driver import TrialSpans

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

HARD_STOP_GRACE_S = 10.0
FOLD_WRITE_INTERVAL_S = 1.0
"""A running trial's finished folds are written at most this often: a crash loses at most about this much
fold work per trial, and trials of quick folds do not pay a store write per fold."""
"""How far past ``trial_timeout`` a trial may run before its worker is restarted."""


@dataclass
class _Running:
    """Driver-side state of a trial in flight."""

    record: TrialRecord
    trial: optuna.Trial
    task: TrialTask
    submitted: float
    slot: str | None = None
    """The slot it was given to (None: it waits for one)."""
    started: float | None = None
    """When it reported it started on a worker (``time.monotonic``); None while it waits."""
    worker: str | None = None
    """The worker it reported it runs on."""
    losses: int = 0
    """How many times its worker was lost while it ran (it is given to another slot, up to a limit)."""
    deadline: float | None = None
    """``trial_timeout`` (less the resumed folds' time) plus the grace, from ``started``."""
    decisions: dict[int, bool] = field(default_factory=dict)
    """step -> the pruning decision sent (a step reported again gets the same answer)."""
    first_step: int | None = None
    """The first step the task reported: the folds before it were resumed."""
    written: float = 0.0
    """When the record was last written (``time.monotonic``)."""
    bad_report: str | None = None
    """Why a report of this trial did not parse: the trial was stopped and ends FAILED with it."""


class HpoDriver:
    """Runs (or resumes) one experiment's HPO on a Dask cluster, recording trials in ``store``."""

    def __init__(
        self,
        spec: ExperimentSpec,
        experiment_id: str,
        store: TrialStore,
        client: Client,
        *,
        trial_fn: TrialFunction | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_trial_end: Callable[[TrialRecord], None] | None = None,
        poll_interval: float = 0.5,
        hard_stop_grace: float = HARD_STOP_GRACE_S,
        fold_write_interval: float = FOLD_WRITE_INTERVAL_S,
        budget: BudgetGuard | None = None,
        clock: Callable[[], datetime] | None = None,
        warm_start: WarmStartSeed | None = None,
    ) -> None:
        self.spec = spec
        self.experiment_id = experiment_id
        self.store = store
        self.client = client
        self.trial_fn = trial_fn
        self.should_cancel = should_cancel or (lambda: False)
        self.on_trial_end = on_trial_end
        self.poll_interval = poll_interval
        self.hard_stop_grace = hard_stop_grace
        self.fold_write_interval = fold_write_interval
        self.budget = budget
        self.warm_start = warm_start
        self._warm_configs: list[dict[str, Any]] = []
        self.clock = clock or utcnow
        self.primary_metric = spec.objective.primary_metric
        self.direction = spec.objective.goal
        self.seed = spec.sampling_algorithm.seed or 0
        self.channel = f"rapids-hpo-{experiment_id}"
        # Named by the seed: Hyperband puts a trial in a bracket by a hash of the study's name and the trial's
        # number, so a restarted driver (and a rerun of the same spec and seed) brackets every trial the same.
        self.multi = spec.objective.multi
        self.study = optuna.create_study(
            study_name=f"rapids-hpo-seed-{self.seed}",
            directions=spec.objective.directions,  # one for the primary metric, one more per objective.also
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
        )
        self._records: dict[int, TrialRecord] = {}
        self._retry: list[tuple[TrialRecord, optuna.Trial]] = []
        self._running: dict[int, _Running] = {}
        """The trials in flight by number: given to a slot, or waiting in ``_waiting`` for one."""
        self._waiting: deque[int] = deque()
        self._inbox: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        """In arrival order: ("hello", None, message) from the channel's topic, ("done", slot, None) from the
        slots' futures, ("line", (slot, run, worker), message) and ("line-closed", (slot, run, worker), None)
        from the slots' lines."""
        self.slots = SlotPool(client, self.channel, experiment_id, trial_fn, self._inbox.put)
        self._threads = self._threads_per_worker()
        self.stopped: stopping.Stop | None = None
        """The stopping rule that ended the run (no trial starts after it), if one did."""
        self._ended = 0
        self.awaits_decisions = not isinstance(self.study.pruner, optuna.pruners.NopPruner)
        self.spans = TrialSpans(experiment_id, spec.compute.backend)
        """A span per trial and fold under the driver's (``shared.telemetry``; nothing when it is off)."""

    # ----------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        """Rebuild the study from the store (:mod:`shared.hpo.rebuild`): keep finished trials, retry
        interrupted ones once."""
        rebuilt = rebuild_study(self.study, self.spec, self.store, self.experiment_id, self.warm_start)
        self._records.update(rebuilt.records)
        self._retry.extend(rebuilt.retries)
        self._warm_configs = rebuilt.warm_configs

    # -------------------------------------------------------------------------------------- main loop
    def run(self) -> ExperimentOutcome:
        """Run until the trial budget, the timeout or a cancel; return the outcome."""
        missing = missing_modules(self.spec) or stopping.missing_modules(self.spec)
        if missing is not None:  # before any trial, not at the sampler's first model fit
            raise RuntimeError(missing)
        self.stop_rules = stopping.StopRules(self.spec)
        self._resume()
        total = self.spec.effective_total_trials()
        concurrency = self.spec.limits.max_concurrent_trials
        deadline = _deadline(self.spec.limits.timeout)
        self.client.subscribe_topic(self.channel, self._on_event)
        next_number = max(self._records, default=-1) + 1
        stop_reason: str | None = None
        checked = -1
        try:
            while True:
                if stop_reason is None:
                    if self.should_cancel():
                        stop_reason = "cancelled"
                    elif deadline is not None and time.monotonic() >= deadline:
                        stop_reason = "timeout"
                    elif self.budget is not None and self.budget.exhausted(self._records.values(), self.clock()):
                        stop_reason = "budget"  # the hard stop: what runs is stopped
                    if stop_reason:
                        self._stop_all(stop_reason)
                held_back = False
                if stop_reason is None and self.stopped is None and self._ended != checked:
                    checked, self.stopped = self._ended, self.stop_rules.check(self._records.values(), self.study)
                if stop_reason is None and self.stopped is None:  # a stopping rule lets running trials finish
                    while len(self._running) < concurrency and (self._retry or next_number < total):
                        if self.budget is not None and not self.budget.can_launch(self._records.values(), self.clock()):
                            held_back = True  # the next trial's worst case would pass limits.max_cost
                            break
                        if self._retry:
                            self._launch(self._retry.pop(0))
                        else:
                            self._launch_new(next_number)
                            next_number += 1
                if not self._running:
                    if held_back and stop_reason is None:
                        stop_reason = "budget"
                    break
                self._dispatch()
                self._handle(self._take(wait_s=self.poll_interval))
                self._enforce_trial_timeouts()
                for slot, number in self.slots.lost_workers():
                    self._lost(number, f"its worker {slot.worker} left the cluster")
        finally:
            self.spans.close()
            self.slots.close()
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.channel)
        return experiment_outcome(self._records.values(), self.direction, stop_reason, self.stopped)

    def _launch_new(self, number: int) -> None:
        reseed_for_trial(self.study.sampler, self.seed, number)
        config = next_config(self.study, self._warm_configs)
        if config is not None:  # a warm start's configuration, run before anything the sampler proposes
            self.study.enqueue_trial(config, skip_if_exists=False)
        trial = self.study.ask()
        params = suggest_params(trial, self.spec)
        record = TrialRecord(
            experiment_id=self.experiment_id,
            number=number,
            params=params,
            sampler_params=dict(trial.params),
            optuna_attrs=optuna_attrs(self.study, trial),  # the sampler's, from its ask (QMC's index, CMA's generation)
            state=TrialState.RUNNING,
        )
        self._submit(record, trial)

    def _launch(self, retry: tuple[TrialRecord, optuna.Trial]) -> None:
        """Launch a retry asked by :meth:`_resume`."""
        self._submit(*retry)

    def _submit(self, record: TrialRecord, trial: optuna.Trial) -> None:
        self.spans.started(record.number, record.attempt)
        self.store.put_trial(record)
        self._records[record.number] = record
        task = TrialTask(
            experiment_id=self.experiment_id,
            number=record.number,
            attempt=record.attempt,
            params=record.params,
            data=self.spec.dataset.uri,
            target=self.spec.dataset.target,
            task=self.spec.dataset.task,
            features=self.spec.dataset.feature_columns(),
            data_format=self.spec.dataset.format,
            max_rows=self.spec.dataset.max_rows,
            model=self.spec.trial.model,
            cv_folds=self.spec.trial.cv_folds,
            seed=self.seed,
            engine=self.spec.trial.engine,
            primary_metric=self.primary_metric,
            trial_timeout=self.spec.limits.trial_timeout,
            n_jobs=self._threads,
            awaits_decisions=self.awaits_decisions,
            measure=self.spec.objective.measured,
            completed_folds=task_folds(record),
            report_every=self.spec.trial.report_every,
            fidelity=self.spec.trial.fidelity,
            row_factor=row_factor(self.spec),
        )
        now = time.monotonic()
        self._running[record.number] = _Running(record=record, trial=trial, task=task, submitted=now, written=now)
        self._waiting.append(record.number)

    def _dispatch(self) -> None:
        """Give waiting trials to idle slots, starting slots (up to the concurrency) while trials wait."""
        if not self._waiting:
            return
        self.slots.grow(min(len(self._running), self.spec.limits.max_concurrent_trials), self._on_done)
        for slot in list(self.slots.idle()):
            running = self._next_waiting()
            if running is None:
                break
            self.slots.assign(slot, running.record.number, running.task)
            running.slot = slot.name
        self.slots.lines.flush()

    def _next_waiting(self) -> _Running | None:
        while self._waiting:
            running = self._running.get(self._waiting.popleft())
            if running is not None and running.slot is None:
                return running
        return None

    def _on_event(self, event: tuple[float, Any]) -> None:
        """The topic's handler (on the client's event loop): a slot's hello, to the inbox."""
        self._inbox.put(("hello", None, event[1] if isinstance(event, tuple | list) and len(event) == 2 else event))

    def _on_done(self, future: Future[Any]) -> None:
        """A slot future's done callback (it erred, idled out or was cancelled): after its messages."""
        self._inbox.put(("done", str(future.key), None))

    def _take(self, wait_s: float) -> list[tuple[str, Any, Any]]:
        """What the inbox holds, after waiting up to ``wait_s`` for its first item."""
        items: list[tuple[str, Any, Any]] = []
        with contextlib.suppress(queue.Empty):
            items.append(self._inbox.get(timeout=wait_s) if wait_s > 0 else self._inbox.get_nowait())
            while True:
                items.append(self._inbox.get_nowait())
        return items

    def _start(self, running: _Running, worker: str | None) -> None:
        """The trial's task started on ``worker``: its clock runs from now (again, if Dask reran the task)."""
        now = time.monotonic()
        running.started, running.worker = now, worker
        limit = self.spec.limits.trial_timeout
        if limit is not None:  # the resumed folds' time counts, as it does on the worker
            running.deadline = now + max(limit - resumed_seconds(running.record), 0.0) + self.hard_stop_grace

    def _handle(self, items: list[tuple[str, Any, Any]]) -> None:
        """Handle the inbox's items in order: a trial's end finishes its record (its reports came before it);
        each step report is recorded and answered with the pruner's decision. Every message is parsed
        strictly (:mod:`shared.hpo.reports`) and counts only on the line of the slot holding its trial: a
        malformed one stops that trial, which ends FAILED saying why."""
        progressed: dict[int, _Running] = {}
        for kind, key, payload in items:
            if kind == "done":
                held, why = self.slots.ended(key)
                if held is not None:
                    self._lost(held, why, counted=True)
            elif kind == "hello":
                self._hello(payload)
            elif kind == "line-closed":
                held = self.slots.line_closed(key[0], key[1])
                if held is not None:
                    self._lost(held, f"its line to {key[2]} closed")
            else:
                self._on_line(key, payload, progressed)
        self.slots.lines.flush()  # before the store writes: the trials wait for these
        now = time.monotonic()
        for running in progressed.values():  # so that a driver restarted after a crash resumes from them
            current = self._running.get(running.record.number) is running
            if current and now - running.written >= self.fold_write_interval:
                self.store.put_trial(running.record)
                running.written = now

    def _hello(self, raw: object) -> None:
        """A message on the experiment's channel: only a slot's hello belongs there."""
        ready = parse_ready(raw) if isinstance(raw, dict) and "slot" in raw else "not a slot's hello"
        if isinstance(ready, str):
            log.warning("dropped a message on the experiment's channel: %s", ready)
        else:
            self.slots.hello(ready)

    def _on_line(self, key: tuple[str, str, str], raw: object, progressed: dict[int, _Running]) -> None:
        """A message on slot run ``key``'s line (slot, run, worker): its announcement or its trial's report."""
        slot = self.slots.holder(key[0], key[1])
        if slot is None or not isinstance(raw, dict):
            return  # a line the slot no longer holds (its run was dropped), or not a message at all
        running = self._running.get(slot.trial) if slot.trial is not None else None
        running = running if running is not None and running.slot == slot.name else None
        if "ready" in raw or "slot" in raw:
            ready = parse_ready(raw)
            if not isinstance(ready, str) and ready.failed is not None:  # its last word: the line closes next
                self.slots.forget(slot.name)
                if running is not None:
                    self._lost(running.record.number, f"its slot task failed: {ready.failed}", counted=True)
            elif not isinstance(ready, str) and (ready.slot, ready.run) == key[:2]:
                self._announced(slot, ready)
            elif running is not None:
                running.bad_report = running.bad_report or f"its slot sent a bad announcement: {ready}"
            return
        if running is None:
            log.warning("dropped a trial message on slot %s's line, which holds no trial", slot.name)
            return
        report = parse_report({**raw, "worker": key[2]})  # the worker is the line's, whatever the trial says
        if isinstance(report, TrialReport) and (report.number, report.attempt) != (
            running.record.number,
            running.record.attempt,
        ):
            report = BadReport(reason=f"a message on its slot's line named trial {report.number}", step=report.step)
        if isinstance(report, BadReport):
            self._bad_report(running, report, final=raw.get("final") is True)
        elif report.started:
            self._start(running, report.worker)
        elif report.final:  # the trial's work is over
            self._running.pop(running.record.number, None)
            if report.result is None:
                self._finish(running, self._stopped(running, TrialState.FAILED, "its final message had no result"))
            else:
                self._finish(running, _result(report.result))
        else:
            assert report.step is not None
            prune = self._decide(running, report)
            if not prune and self._add_fold(running, report):
                progressed[running.record.number] = running
            if not is_last_step(report.unit, report.step, self.spec.trial.cv_folds, report.last):  # none awaited
                self._answer(running, report.step, prune)

    def _answer(self, running: _Running, step: int, prune: bool) -> None:
        """Queue the decision on the trial's line; :meth:`_handle` flushes the batch's at once (the trial waits
        for it, not the driver: one lost with the line costs the trial ``REPORT_TIMEOUT_S``, then it goes on)."""
        if self.awaits_decisions:
            number, attempt = running.record.number, running.record.attempt
            self.slots.answer(running.slot, {"number": number, "attempt": attempt, "step": step, "prune": prune})

    def _bad_report(self, running: _Running, report: BadReport, final: bool) -> None:
        """A message on ``running``'s line did not parse: a final one ends the trial FAILED with the reason; any
        other stops it (answered "stop" at the step it names), and it ends FAILED with the reason."""
        if final:
            self._running.pop(running.record.number, None)
            why = f"the trial's final message did not parse: {report.reason}"
            self._finish(running, self._stopped(running, TrialState.FAILED, running.bad_report or why))
            return
        running.bad_report = running.bad_report or report.reason
        if report.step is not None:
            self._answer(running, report.step, True)

    def _decide(self, running: _Running, report: TrialReport) -> bool:
        """Record one step report and return the pruner's decision (the first one, for a step seen before)."""
        step, value = int(report.step or 0), float(report.value if report.value is not None else math.nan)
        if step in running.decisions:  # Dask ran the task again after its worker was lost
            return running.decisions[step]
        expected = expected_units(self.spec.trial.model, self.spec.trial.report_every, self.spec.trial.fidelity)
        unit_changed = running.first_step is not None and report.unit != running.record.step_unit
        backwards = report.unit != "fold" and any(earlier > step for earlier in running.decisions)
        if report.unit not in expected or unit_changed or backwards:
            running.bad_report = running.bad_report or (
                f"malformed step report from the trial (a {report.unit} step {step} after steps "
                f"{sorted(running.decisions)[-3:]}; the spec asks for {' or '.join(expected)} steps)"
            )
            running.decisions[step] = True
            return True
        if running.first_step is None:
            running.first_step = step
            running.record.step_unit = report.unit
        running.record.intermediate[step] = value
        prune = False
        if math.isfinite(value) and not self.multi:  # several objectives: recorded, never pruned
            running.trial.report(value, step)  # ignored by Optuna (with a warning) for a resumed step
            # After the last step the work is done: keep the result rather than prune it.
            last = is_last_step(report.unit, step, self.spec.trial.cv_folds, report.last)
            prune = not last and running.trial.should_prune()
            if not prune:  # kept with the step it goes on from; a pruned trial's is written when it ends
                running.record.optuna_attrs = optuna_attrs(self.study, running.trial)
        running.decisions[step] = prune
        return prune

    def _add_fold(self, running: _Running, report: TrialReport) -> bool:
        """Keep the fold of a report the trial goes on from; whether the record gained one."""
        folds = with_fold(running.record, int(report.step or 0), report.fold)
        if folds is not None:
            running.record.folds = folds
            self.spans.fold(running.record.number, running.record.attempt, len(folds), report.fold)
        return folds is not None

    def _announced(self, slot: Slot, ready: SlotReady) -> None:
        """``slot`` announced on its line that it is ready for its next trial: the trial it held, if that has
        not ended, ended without a final message."""
        held = self.slots.announced(slot, ready)
        running = None if held is None else self._running.get(held)
        if running is None or running.slot != slot.name:
            return
        del self._running[running.record.number]
        why = running.bad_report or "the trial ended without a final message"
        self._finish(running, self._stopped(running, TrialState.FAILED, why))

    def _lost(self, number: int, why: str, counted: bool = False) -> None:
        """Trial ``number``'s worker was lost: it waits for the next free slot, from the folds it reported it
        went on from, unless that happened more than Dask's ``allowed-failures`` times. A loss counts once the
        trial started, or when its slot task itself ended (``counted``: a slot that fails every trial it is
        given must not be replaced forever); a new run announced before the trial started costs it nothing."""
        running = self._running.get(number)
        if running is None or running.slot is None:
            return
        running.losses += counted or running.started is not None
        if running.losses > self.slots.allowed_failures:
            del self._running[number]
            error = f"worker lost while running the trial {running.losses} times (KilledWorker): {why}"
            self._finish(running, self._stopped(running, TrialState.FAILED, error))
            return
        log.warning("trial %d: %s; it runs again from %d folds", number, why, len(running.record.folds))
        running.slot = running.worker = None
        running.started = running.deadline = None
        running.task = replace(running.task, completed_folds=task_folds(running.record))
        self._waiting.appendleft(number)

    def _stopped(self, running: _Running, state: TrialState, error: str) -> TrialResult:
        """The result of a trial the driver stopped (or lost), by the driver's clock."""
        return TrialResult(
            state=state,
            error=error,
            step=len(running.record.intermediate),
            duration_s=0.0 if running.started is None else time.monotonic() - running.started,
            resumed_folds=running.first_step - 1 if running.first_step and running.record.step_unit == "fold" else 0,
        )

    def _finish(self, running: _Running, result: TrialResult) -> None:
        state, error = result.state, result.error
        if running.bad_report is not None:
            state, error, result = TrialState.FAILED, running.bad_report, replace(result, metrics={})
        values: list[float] | str | None = None
        constraints: list[float] | str = []
        if state is TrialState.COMPLETED:
            values = objective_values(self.spec, result.metrics)
            if self.spec.objective.constraints:
                constraints = constraint_values(self.spec, result.metrics)
            problem = next((p for p in (values, constraints) if isinstance(p, str)), None)
            if problem is not None:
                state, values, error = TrialState.FAILED, None, problem
        told = values if isinstance(values, list) else None
        bounds = constraints if isinstance(constraints, list) and told is not None else []
        if bounds:
            running.trial.set_user_attr(CONSTRAINTS_ATTR, bounds)  # the samplers' constraints_func reads it
        record = running.record.model_copy(
            update={
                "state": state,
                "value": None if told is None else told[0],
                "feasible": all(c <= 0 for c in bounds) if bounds else None,
                "objective_key": signed_others(self.spec, told),
                "metrics": {k: v for k, v in result.metrics.items() if k != "params"},
                "error": error,
                "engine": result.metrics.get("engine"),
                "started_at": result.started_at or running.record.started_at,  # on the worker, if it began
                "ended_at": result.ended_at or utcnow(),
                "duration_s": result.duration_s,
                "resumed_folds": result.resumed_folds,
                "optuna_attrs": optuna_attrs(self.study, running.trial),
            }
        )
        scores = stopping.fold_scores(record, self.primary_metric) if state is TrialState.COMPLETED else None
        if scores is not None:  # the terminator's noise estimate of this trial
            self.study._storage.set_trial_system_attr(running.trial._trial_id, stopping.CV_SCORES_KEY, scores)
        self.study.tell(running.trial, values=told, state=optuna_state(state))
        self.slots.release(running.slot, running.record.number)  # its slot is free once it announces itself
        self._ended += 1
        self.store.put_trial(record)
        self.spans.ended(record.number, record.attempt, state.value, record.value, error)
        self._records[record.number] = record
        if self.on_trial_end is not None:
            self.on_trial_end(record)

    def _enforce_trial_timeouts(self) -> None:
        now = time.monotonic()
        for number, running in list(self._running.items()):
            if running.deadline is not None and now >= running.deadline:
                del self._running[number]
                self._hard_stop([running])
                why = f"trial_timeout of {self.spec.limits.trial_timeout:g} s exceeded; its worker was restarted"
                self._finish(running, self._stopped(running, TrialState.TIMED_OUT, why))

    def _stop_all(self, reason: str) -> None:
        """Stop every trial in flight (cancel, experiment timeout, budget)."""
        self._handle(self._take(wait_s=0))  # the ends already on their way count as ends
        stopping = list(self._running.values())
        self._running.clear()
        self._waiting.clear()
        self._hard_stop(stopping)
        for running in stopping:
            if reason == "timeout":
                result = self._stopped(running, TrialState.TIMED_OUT, "the experiment's timeout was reached")
            elif reason == "budget":
                result = self._stopped(running, TrialState.FAILED, "stopped: the budget (limits.max_cost) was reached")
            else:
                result = self._stopped(running, TrialState.CANCELLED, "cancelled")
            self._finish(running, result)

    def _hard_stop(self, stopping: list[_Running]) -> None:
        """Restart the workers of the slots these trials were given to (the other trials there run again
        elsewhere); a trial that waits for a slot has nothing to stop. A driver running as a task keeps its
        own worker: a trial there runs to its end, unheard."""
        workers: set[str] = set()
        for running in stopping:
            slot = self.slots.slots.get(running.slot) if running.slot is not None else None
            worker = running.worker or (slot.worker if slot is not None else None)
            if slot is not None and slot.trial == running.record.number:
                self.slots.forget(slot.name)
            if worker is not None and worker != own_worker():
                workers.add(worker)
        if workers:
            with contextlib.suppress(Exception):
                self.client.restart_workers(sorted(workers), timeout=60)

    def _threads_per_worker(self) -> int | None:
        threads = self.client.nthreads()
        return min(threads.values()) if threads else None

    def best_trial(self) -> BestTrial | None:
        """The best completed trial so far, by the objective."""
        return best_of(self._records.values(), self.direction)


def _result(told: ReportedResult) -> TrialResult:
    return TrialResult(
        state=TrialState(told.state),
        metrics=dict(told.metrics),
        error=told.error,
        step=told.step,
        duration_s=told.duration_s,
        started_at=told.started_at,
        ended_at=told.ended_at,
        resumed_folds=told.resumed_folds,
    )


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout
