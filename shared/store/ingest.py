"""Ingestion: the one path by which what an experiment's compute wrote reaches the control plane's store.

The compute holds a SAS on its own area (:mod:`shared.store.compute`) and may write anything there, so
every blob is judged before a byte of it is trusted:

- the whole area is held to quotas first: at most the spec's trial budget of trial blobs plus
  :data:`MAX_OTHER_BLOBS` others, at most ``quota_bytes`` in all (``RAPIDS_HPO_MAX_ARTIFACT_BYTES``);
  an area over either is not ingested at all and the report says why (:attr:`IngestReport.over_quota`);
- a trial is ``trials/<number>.json`` with a number inside the budget (a retry reuses its number), read
  with a size limit and parsed as a bounded :class:`~shared.records.TrialRecord` naming this experiment;
- an artifact is ``artifacts/<name>`` under an allowed prefix (:data:`ARTIFACT_LIMITS`) within that
  prefix's size limit, copied as a stream (a model is never held in memory whole);
- a Pareto front member's model, ``front-models/<number>/<file>``, only for a trial that is among the kept
  members (:func:`shared.pareto.kept_members`: at most ``output.front_models``) by the trials stored once
  this pass's trials are in: none with one objective, none for a dominated or unknown trial. Its
  ``metrics.json`` attests the model whole (:func:`shared.pareto.member_model_problem`), so it must be
  written last: one modified before another file of its member, or a file modified after it, is refused;
  and within a pass it is copied after the member's other files.

Whatever fails is refused and named in the report (the backend fails the run with it); nothing here
raises for what the compute wrote. Blobs already taken in are skipped by a watermark: the newest
modification time seen and short tags (name and etag) of the blobs modified at that very time (storage
clocks tick in whole seconds), so the last blob is not copied again on every poll and one written in the
same second still is.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.config import DATA_CHECK_ARTIFACT, DRIVER_OUTCOME_ARTIFACT, FRONT_MODEL_PREFIX
from shared.errors import NotFound
from shared.pareto import MEMBER_METRICS_FILE, kept_members
from shared.ports import IngestReport
from shared.records import ExperimentRecord, TrialRecord, updated
from shared.store._common import check_artifact_name
from shared.store.compute import (
    ARTIFACTS_PREFIX,
    RECORD_BLOB,
    TRIALS_PREFIX,
    Area,
    BlobInfo,
    TooLarge,
    publish_record,
)

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

log = logging.getLogger(__name__)

MAX_TRIAL_BYTES = 256 * 1024
"""Largest trial record read (a real one is a few KiB)."""
MAX_OUTCOME_BYTES = 256 * 1024
"""Largest ``driver/outcome.json`` (a real one is a few KiB; its best trial is bounded like a trial)."""
ARTIFACT_LIMITS: dict[str, int] = {
    DRIVER_OUTCOME_ARTIFACT: MAX_OUTCOME_BYTES,
    DATA_CHECK_ARTIFACT: 64 * 1024,
    "driver/heartbeat.json": 4 * 1024,
    "boot/": 64 * 1024,  # a VM's note of a failed start (shared/backends/vmcluster/boot.py)
    "plots/": 16 * 1024 * 1024,
    "model/": 1024 * 1024 * 1024,
    FRONT_MODEL_PREFIX: 1024 * 1024 * 1024,  # a model each, for the kept front members only (KeptMembers)
}
"""What the compute may write under ``artifacts/``: exact names or prefixes, each with its size limit."""
DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024
"""Default for ``RAPIDS_HPO_MAX_ARTIFACT_BYTES``: everything one experiment's compute may write, in bytes."""
MAX_OTHER_BLOBS = 1000
"""Blobs an area may hold beside its trials (model files, plots, the driver's documents)."""
CONTROL_BLOBS = frozenset({RECORD_BLOB, "compute/code.zip", "compute/tls.json", "compute/telemetry.json"})
"""What the control plane itself writes into the area: never ingested, never counted."""


def artifact_limit(name: str) -> int | None:
    """The size limit of artifact ``name``, or None when the compute may not write it."""
    for allowed, limit in ARTIFACT_LIMITS.items():
        if name == allowed or (allowed.endswith("/") and name.startswith(allowed)):
            return limit
    return None


def _tag(blob: BlobInfo) -> str:
    """Eight hex digits naming one version of one blob (its name and etag)."""
    return hashlib.sha256(f"{blob.name}\x00{blob.etag}".encode()).hexdigest()[:8]


def trial_budget(spec: ExperimentSpec | None) -> int:
    """How many trial numbers the spec allows (0..budget-1; none without a spec); a retried trial keeps its number."""
    return spec.effective_total_trials() if spec is not None else 0


def ingest(
    store: Any,
    area: Area,
    experiment_id: str,
    since: datetime | None = None,
    *,
    seen: str = "",
    quota_bytes: int = DEFAULT_QUOTA_BYTES,
) -> IngestReport:
    """Copy what the compute wrote since the watermark (``since``, ``seen``) into ``store``, judging each
    blob as the module says; then refresh the record the compute reads. Raises only for the store's own
    failures (the message is retried), never for what the compute wrote."""
    record = store.get_experiment(experiment_id)
    budget = trial_budget(record.spec)
    most = budget + MAX_OTHER_BLOBS + len(CONTROL_BLOBS)  # more than this is over a count quota, whatever they are
    listed = area.list(limit=most + 1)
    blobs = [b for b in listed if b.name not in CONTROL_BLOBS]
    report = IngestReport(watermark=since, seen=seen)
    report.over_quota = (
        f"more than {most} blobs; the spec allows {budget} trials and {MAX_OTHER_BLOBS} others"
        if len(listed) > most
        else _quota(blobs, budget, quota_bytes)
    )
    if report.over_quota is None:
        fresh = _fresh(blobs, since, seen)
        kept = KeptMembers(store, record, blobs)
        for blob in sorted(fresh, key=_order):
            if blob.name.startswith(TRIALS_PREFIX):
                _ingest_trial(store, area, experiment_id, budget, blob, report)
            elif blob.name.startswith(ARTIFACTS_PREFIX):
                _ingest_artifact(store, area, experiment_id, blob, report, kept)
            else:
                report.refused[blob.name] = "not under trials/ or artifacts/"
        if blobs:
            newest = max(b.modified for b in blobs)
            if since is None or newest >= since:
                report.watermark = newest
                report.seen = ",".join(sorted(_tag(b) for b in blobs if b.modified == newest))
    publish_record(area, record)
    return report


def _order(blob: BlobInfo) -> tuple[bool, bool]:
    """Trials first (they make the front), a front member's ``metrics.json`` after every other artifact (its
    presence in the store then says the member's other files are there)."""
    return not blob.name.startswith(TRIALS_PREFIX), _is_member_metrics(blob.name.removeprefix(ARTIFACTS_PREFIX))


def _is_member_metrics(name: str) -> bool:
    return name.startswith(FRONT_MODEL_PREFIX) and name.endswith("/" + MEMBER_METRICS_FILE) and name.count("/") == 2


def _quota(blobs: list[BlobInfo], budget: int, quota_bytes: int) -> str | None:
    trials = sum(1 for b in blobs if b.name.startswith(TRIALS_PREFIX))
    others = len(blobs) - trials
    if trials > budget:
        return f"{trials} trial blobs; the spec allows {budget} trials"
    if others > MAX_OTHER_BLOBS:
        return f"{others} blobs beside the trials; at most {MAX_OTHER_BLOBS}"
    total = sum(b.size for b in blobs)
    if total > quota_bytes:
        return f"{total} bytes in all; at most {quota_bytes} (RAPIDS_HPO_MAX_ARTIFACT_BYTES)"
    return None


def _fresh(blobs: list[BlobInfo], since: datetime | None, seen: str) -> list[BlobInfo]:
    """The blobs not yet taken in: modified after ``since``, or at ``since`` and not among the versions
    ``seen`` names (the watermark's second may gain blobs after it was read)."""
    if since is None:
        return blobs
    taken = set(seen.split(","))
    return [b for b in blobs if b.modified > since or (b.modified == since and _tag(b) not in taken)]


def _ingest_trial(
    store: Any, area: Area, experiment_id: str, budget: int, blob: BlobInfo, report: IngestReport
) -> None:
    stem = blob.name.removeprefix(TRIALS_PREFIX).removesuffix(".json")
    if not (blob.name.endswith(".json") and stem.isdigit() and len(stem) <= 10 and int(stem) < budget):
        report.refused[blob.name] = f"not trials/<number>.json with a number below the budget of {budget}"
        return
    if blob.size > MAX_TRIAL_BYTES:
        report.refused[blob.name] = f"{blob.size} bytes; a trial record is at most {MAX_TRIAL_BYTES}"
        return
    try:
        trial = TrialRecord.model_validate_json(area.get(blob.name, MAX_TRIAL_BYTES))
    except (ValidationError, NotFound, TooLarge) as exc:
        report.refused[blob.name] = f"not a trial record: {_first_line(exc)}"
        return
    if trial.experiment_id != experiment_id or int(stem) != trial.number:
        report.refused[blob.name] = f"names experiment {trial.experiment_id[:64]!r} trial {trial.number}"
        return
    # Where the compute says a model lives is a path in its area (which teardown deletes) or whatever a hostile
    # compute chose: never passed on. The control plane links the model it ingested (``with_model_uri``).
    store.put_trial(updated(trial, model_uri=None))
    report.trials.append(trial.number)


class KeptMembers:
    """Which ``front-models/<number>/`` the compute may write: the kept Pareto front members by the trials the
    store holds (read once, when the first such blob is judged, after this pass's trials)."""

    def __init__(self, store: Any, record: ExperimentRecord, listed: list[BlobInfo]) -> None:
        self.store = store
        self.record = record
        self.numbers: list[int] | None = None
        self.listed = listed

    def problem(self, name: str, blob: BlobInfo) -> str | None:
        """Why ``name`` (under ``front-models/``, ``blob`` in the area) is refused, or None."""
        number, _, rest = name.removeprefix(FRONT_MODEL_PREFIX).partition("/")
        if not (number.isdigit() and len(number) <= 10 and rest):
            return f"not {FRONT_MODEL_PREFIX}<trial number>/<file>"
        spec = self.record.spec
        if spec is None or not spec.objective.multi:
            return f"{FRONT_MODEL_PREFIX} holds Pareto front members' models: this experiment has one objective"
        if self.numbers is None:
            self.numbers = kept_members(spec, self.store.list_trials(self.record.id))
        if int(number) not in self.numbers:
            return (
                f"trial {int(number)} is not among the kept Pareto front members {self.numbers} "
                f"(the first output.front_models={spec.output.front_models} of the front)"
            )
        return self._order_problem(f"{ARTIFACTS_PREFIX}{FRONT_MODEL_PREFIX}{number}/", blob)

    def _order_problem(self, folder: str, blob: BlobInfo) -> str | None:
        """Why ``blob`` breaks "metrics.json is written last" in its member's ``folder`` of the area, or None
        (storage clocks tick in whole seconds: the same second is not out of order)."""
        siblings = [b for b in self.listed if b.name.startswith(folder) and b.name != blob.name]
        if blob.name == folder + MEMBER_METRICS_FILE:
            later = [b.name for b in siblings if b.modified > blob.modified]
            written_last = f"a member's {MEMBER_METRICS_FILE} is written last"
            return f"written before {later[0][:200]}: {written_last}" if later else None
        metrics = next((b for b in siblings if b.name == folder + MEMBER_METRICS_FILE), None)
        if metrics is not None and blob.modified > metrics.modified:
            return f"written after its member's {MEMBER_METRICS_FILE}, which is written last"
        return None


def _ingest_artifact(
    store: Any, area: Area, experiment_id: str, blob: BlobInfo, report: IngestReport, kept: KeptMembers
) -> None:
    name = blob.name.removeprefix(ARTIFACTS_PREFIX)
    try:
        check_artifact_name(name)
    except ValueError as exc:
        report.refused[blob.name] = str(exc)[:200]
        return
    limit = artifact_limit(name)
    if limit is None:
        report.refused[blob.name] = f"the compute may write only {', '.join(ARTIFACT_LIMITS)} under artifacts/"
        return
    if blob.size > limit:
        report.refused[blob.name] = f"{blob.size} bytes; at most {limit}"
        return
    problem = kept.problem(name, blob) if name.startswith(FRONT_MODEL_PREFIX) else None
    if problem is not None:
        report.refused[blob.name] = problem
        return
    try:
        store.put_artifact_stream(experiment_id, name, _capped(area.chunks(blob.name), blob.name, limit))
    except (NotFound, TooLarge) as exc:
        report.refused[blob.name] = _first_line(exc)
        return
    report.artifacts.append(name)


def _capped(chunks: Iterator[bytes], name: str, limit: int) -> Iterator[bytes]:
    """``chunks``, stopped with :class:`TooLarge` once more than ``limit`` bytes came (the blob grew)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"{name} grew past {limit} bytes while it was copied")
        yield chunk


def readable_trials(experiment_id: str, bodies: Iterable[str]) -> list[TrialRecord]:
    """The stored trial bodies that validate; one that does not (stored before a bound existed) is left out
    and logged, so one bad trial harms no reader of the others."""
    trials = []
    for body in bodies:
        try:
            trials.append(TrialRecord.model_validate_json(body))
        except ValidationError as exc:
            log.warning("experiment %s: a stored trial is unreadable, left out: %s", experiment_id, _first_line(exc))
    return trials


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        return f"{exc.error_count()} errors; {where}: {first['msg']}"[:300]
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
