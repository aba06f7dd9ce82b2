"""The three ports of the control plane. Each has a local and an Azure adapter and one conformance suite.

- ``Store``: experiment status records, trial records and artifacts (local: SQLite + folder;
  Azure: Table Storage + Blob Storage). ``update_experiment`` is optimistic: it succeeds only if the
  record's ``version`` is still the one the caller read, else raises ``ConcurrencyConflict``.
- ``EventQueue``: at-least-once messages with visibility timeout and dequeue count, the semantics of
  Azure Storage queues (local: SQLite; Azure: azure-storage-queue with base64 text).
- ``ComputeBackend``: where the HPO driver runs (local process + Dask LocalCluster, AzureVMCluster,
  AzureML sweep). Every method is idempotent and short; long work happens on the compute. Each backend
  has a typed handle (``BackendHandle``), declares its ``Capabilities``, offers an offline ``Planner``
  (dry run, description) and, where it creates cloud resources, an ``OrphanFinder``. The registry of
  backends is ``shared.backends`` (the one place that names them); ``tests/conformance/test_backend.py``
  runs the same suite over each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from shared.compute_report import ComputeReport

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from datetime import timedelta

    from shared.compute_spec import ComputeSection
    from shared.config import Settings
    from shared.records import (
        ExperimentRecord,
        ExperimentStatus,
        RunOutcome,
        TrialRecord,
        UnreadableRecord,
    )
    from shared.spec import ExperimentSpec


@dataclass(frozen=True)
class ComputeCredential:
    """What an experiment's compute holds: one area, one experiment, an expiry. ``token`` is a SAS
    (a secret: pass it only to that compute); a ``folder`` credential (local store) has none; a
    ``blob-identity`` one holds the client id of the managed identity the compute runs as (no secret: the
    identity's role on that one container is the access)."""

    experiment_id: str
    kind: Literal["blob-sas", "blob-identity", "folder"]
    url: str
    """The area: a container URL without query, or a folder path."""
    token: str
    expires_at: datetime

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "expires_at": self.expires_at.isoformat()})

    @classmethod
    def from_json(cls, text: str) -> ComputeCredential:
        data = json.loads(text)
        return cls(**{**data, "expires_at": datetime.fromisoformat(data["expires_at"])})

    def __repr__(self) -> str:  # never print the token
        return f"ComputeCredential({self.experiment_id!r}, {self.kind}, {self.url!r}, expires {self.expires_at:%c})"


@dataclass
class IngestReport:
    """What one ingestion took in: trial numbers, artifact names, refused blobs (with why), the quota
    breach (if any), and the watermark (``watermark`` and ``seen``) to pass back next time."""

    trials: list[int] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    over_quota: str | None = None
    watermark: datetime | None = None
    seen: str = ""

    def problem(self, limit: int = 3) -> str | None:
        """One line saying what was refused (None when nothing was): what a backend fails the run with."""
        if self.over_quota:
            return f"the compute wrote more than allowed: {self.over_quota}"
        if not self.refused:
            return None
        shown = "; ".join(f"{name}: {why}" for name, why in list(self.refused.items())[:limit])
        more = f" (and {len(self.refused) - limit} more)" if len(self.refused) > limit else ""
        return f"the compute wrote what was refused: {shown}{more}"


@runtime_checkable
class TrialStore(Protocol):
    """What the HPO engine needs: record trials as they end, read them back to resume, keep models."""

    def put_trial(self, trial: TrialRecord) -> None:
        """Insert or replace trial ``(experiment_id, number)``."""

    def list_trials(self, experiment_id: str, *, after: int = -1, limit: int | None = None) -> list[TrialRecord]:
        """The trials of an experiment numbered above ``after``, ordered by number, at most ``limit`` (all
        when None); a stored trial that does not validate is left out (and logged), never raised."""

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        """Store bytes under ``name`` (a relative path like ``model/model.json``); return its URI."""


@runtime_checkable
class Store(TrialStore, Protocol):
    """Experiments, trials and artifacts."""

    def create_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        """Insert a new record; raise ``AlreadyExists`` if the id is taken. Returns it with a version."""

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        """Raise ``NotFound`` if absent."""

    def update_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        """Replace the record if its ``version`` is current; return it with a new version.

        Raise ``ConcurrencyConflict`` if the stored version differs, ``NotFound`` if absent.
        """

    def list_experiments(
        self, status: ExperimentStatus | None = None, limit: int = 50, page_token: str | None = None
    ) -> tuple[list[ExperimentRecord | UnreadableRecord], str | None]:
        """Newest first; returns a page and the token of the next page (None at the end). A stored record
        that does not validate is an ``UnreadableRecord`` in its place (never raised: one bad record harms
        only itself); ``get_experiment`` of it raises ``CorruptRecord``.

        Raise ``InvalidPageToken`` for a token this store did not make (any shape, size or nesting)."""

    def create_keyed_experiment(self, record: ExperimentRecord) -> tuple[ExperimentRecord, bool]:
        """Insert ``record`` and bind its ``idempotency_key`` to it, both or neither (one transaction):
        ``(record with a version, True)``. If the key is bound already, insert nothing and return
        ``(the experiment it is bound to, False)``: concurrent calls with one key store one experiment and
        all return it. Raise ``AlreadyExists`` if the id is taken and the key is not bound."""

    def get_artifact(self, experiment_id: str, name: str) -> bytes:
        """Raise ``NotFound`` if absent."""

    def put_artifact_stream(self, experiment_id: str, name: str, chunks: Iterable[bytes]) -> str:
        """Store what ``chunks`` yields under ``name`` without holding it whole; if the iterator raises,
        the artifact stays as it was."""

    def artifact_chunks(self, experiment_id: str, name: str) -> Iterator[bytes]:
        """The artifact in pieces (a few MiB at most each); raise ``NotFound`` if absent."""

    def list_artifacts(self, experiment_id: str, prefix: str = "") -> list[str]:
        """Names of an experiment's artifacts under ``prefix``, sorted."""

    def put_secret(self, experiment_id: str, name: str, data: bytes) -> None:
        """Keep a credential apart from the artifacts (never listed or served; the compute cannot read it)."""

    def get_secret(self, experiment_id: str, name: str) -> bytes:
        """Raise ``NotFound`` if absent."""


@runtime_checkable
class ComputeAreas(Protocol):
    """Each experiment's compute area (``shared.store.compute``): what its compute may hold (one area, one
    experiment, an expiry) and the one validated, bounded path back into the store. A port apart from
    :class:`Store`: the state machine and the backends that run a driver use it, nothing else. Both storage
    adapters implement it beside ``Store`` (the area lives in their account or folder)."""

    def issue_compute_credential(self, experiment_id: str, ttl: timedelta) -> ComputeCredential:
        """Mint what one experiment's compute may hold: access to that experiment's own area only,
        expiring after ``ttl`` (on Azure a SAS on the experiment's container; never the tables or secrets)."""

    def ingest_compute_output(
        self, experiment_id: str, since: datetime | None = None, *, seen: str = "", quota_bytes: int | None = None
    ) -> IngestReport:
        """Take the trials and artifacts the compute wrote into its area (past the watermark ``since`` and
        ``seen``) into the store, each validated and bounded (``shared.store.ingest``): refuse what names
        another experiment, is malformed, oversized or over the area's quota; report what was taken and
        refused. Never raises for what the compute wrote."""

    def revoke_compute_credential(self, experiment_id: str) -> None:
        """Invalidate every credential issued for the experiment (no-op if none was issued)."""


def areas_of(store: Store) -> ComputeAreas:
    """The compute areas kept beside ``store`` (its adapter implements both ports)."""
    if not isinstance(store, ComputeAreas):
        raise TypeError(f"{type(store).__name__} keeps no compute areas")
    return store


@dataclass(frozen=True)
class Message:
    """A received queue message. ``receipt`` identifies this delivery for delete/update."""

    id: str
    receipt: str
    body: str
    dequeue_count: int


@runtime_checkable
class EventQueue(Protocol):
    """One named queue with Azure Storage queue semantics."""

    name: str

    def send(self, body: str, delay_seconds: int = 0) -> None:
        """Enqueue ``body``; it becomes visible after ``delay_seconds``."""

    def receive(self, max_messages: int = 16, visibility_timeout: int = 30) -> list[Message]:
        """Dequeue up to ``max_messages`` visible messages, hiding each for ``visibility_timeout`` s
        and incrementing its dequeue count."""

    def delete(self, message: Message) -> None:
        """Remove a received message (raise ``NotFound`` if its receipt is stale)."""

    def count(self) -> int:
        """Approximate number of messages, visible or not."""


@runtime_checkable
class QueueService(Protocol):
    """Hands out named queues, creating them on first use."""

    def queue(self, name: str) -> EventQueue: ...


class RunState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


HandleUpdate = dict[str, Any]
"""Fields of a backend's handle that a call changed, and only those (``{}``: none, as a repeated call
returns). Every ``ComputeBackend`` method returns one; the state machine merges it into
``ExperimentRecord.backend_state`` (:func:`merge_handle`); :func:`handle_changes` computes one."""


class BackendHandle(BaseModel):
    """A backend's own state of one experiment, kept in the store as ``ExperimentRecord.backend_state``.

    Each backend subclasses it with its fields (all optional or defaulted: a handle grows step by step).
    Control-plane flags (``torn_down``, ``status_emitted``) live on the record, never here.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str

    def compute_report(self) -> ComputeReport:
        """What users see of the compute (restarts, evictions, heartbeat, a link); the state machine copies
        it onto the record whenever the handle changes. Override to report what the backend tracks."""
        return ComputeReport()


class RunDetails(BaseModel):
    """What a poll saw beside the run's state, for logs, the CLI and tests (the state machine reads none of it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    waiting_for: str | None = Field(default=None, description="what a pending run waits for, in words")
    reason: str | None = Field(
        default=None, description="why the run ended as it did, when the state alone does not say"
    )
    compute_status: str | None = Field(
        default=None, description="the compute's own word for the run (AzureML's status)"
    )
    job_name: str | None = None
    trials: dict[str, int] = Field(default_factory=dict, description="trials by state, as the compute reports them")
    restarted: bool = Field(default=False, description="this poll started a dead driver again")
    heartbeat_at: datetime | None = None
    evictions: int = Field(default=0, ge=0)


@dataclass
class RunStatus:
    """What ``ComputeBackend.poll`` saw of a run, and the handle updates it made on the way; ``outcome`` is
    the driver's own account of how the run ended, where the backend's driver writes one."""

    state: RunState
    error: str | None = None
    details: RunDetails = field(default_factory=RunDetails)
    updates: HandleUpdate = field(default_factory=dict)
    outcome: RunOutcome | None = None


class Capabilities(BaseModel):
    """What a backend does, declared once; the conformance suite checks each declaration."""

    model_config = ConfigDict(frozen=True)

    model_from: str
    """``"driver"``: the run stores the best model itself (``finalize`` only checks); ``"finalize"``:
    ``finalize`` brings the best trial's model into the store."""
    cloud_resources: bool
    """``provision``/``submit`` create Azure resources that ``teardown`` deletes (and may be billed)."""
    finds_orphans: bool
    """The backend is an ``OrphanFinder``: the timer sweep asks it to delete what no experiment owns."""
    restarts_driver: bool
    """A driver that died without an outcome is started again by ``poll`` (it resumes from the store)."""
    model_on_cancel: bool = False
    """After ``cancel`` the run ends its trials, refits the best finished one and writes its outcome; ``poll``
    reports it while the experiment is CANCELLING and starts nothing new then (no restarted driver). The
    state machine waits for that outcome (``Settings.cancel_wait_seconds``) before the teardown."""
    reasons: dict[str, str] = Field(default_factory=dict)
    """Why each declaration holds, by field name (``rapids-hpo backends`` and the docs show them; a
    registered backend gives one for every field: ``tests/test_architecture.py``)."""


@runtime_checkable
class Planner(Protocol):
    """What a backend would do for a spec, offline (no store, no Azure): ``rapids-hpo plan`` shows it.
    How a run bills is its compute section's ``billing`` (``shared.compute_spec``)."""

    @property
    def full_plan_shows(self) -> str | None:
        """What ``rapids-hpo plan --full`` adds to the summary (``"the VM arguments"``), None if nothing."""

    def dry_run(self, spec: ExperimentSpec) -> dict[str, Any]:
        """What ``provision``/``submit`` would create and its estimated node-hours (JSON-able)."""

    def describe(self, spec: ExperimentSpec) -> list[str]:
        """What a run of ``spec`` creates, in words (the plan's first lines)."""


@runtime_checkable
class OrphanFinder(Protocol):
    """A backend that can find (and delete) compute no live experiment owns."""

    def sweep_orphans(self, live_experiment_ids: set[str]) -> list[str]:
        """Delete what this backend created for experiments not in ``live_experiment_ids``; return the
        ids deleted. A backend not configured for Azure returns ``[]``."""


@runtime_checkable
class ComputeBackend(Protocol):
    """Where an experiment's HPO work runs. Every method is idempotent, short, and returns handle
    updates (``poll`` in ``RunStatus.updates``); the handle is the backend's ``handle_type``."""

    @property
    def name(self) -> str: ...

    @property
    def handle_type(self) -> type[BackendHandle]: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def planner(self) -> Planner: ...

    def provision(self, record: ExperimentRecord) -> HandleUpdate:
        """Create (or find) what the run needs."""

    def submit(self, record: ExperimentRecord) -> HandleUpdate:
        """Start the run unless already started."""

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """Report the run's state; trial records reach the store on the way."""

    def finalize(self, record: ExperimentRecord) -> HandleUpdate:
        """Bring the best model into the store (no-op where the run stored it)."""

    def cancel(self, record: ExperimentRecord) -> HandleUpdate:
        """Stop the run's trials (no-op if not running)."""

    def teardown(self, record: ExperimentRecord) -> HandleUpdate:
        """Remove compute this experiment created ("not found" counts as success)."""


def handle_changes(before: BackendHandle, after: BackendHandle) -> HandleUpdate:
    """The fields of ``after`` whose value differs from ``before`` (JSON form): what a step returns
    when it computed a whole new handle; ``{}`` when nothing changed."""
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    return {key: value for key, value in new.items() if old.get(key) != value}


def merge_handle(backend: ComputeBackend, current: dict[str, Any], update: HandleUpdate | None) -> dict[str, Any]:
    """``current`` with ``update`` applied, validated as the backend's handle; the stored form."""
    merged = {**current, **(update or {})}
    return backend.handle_type.model_validate(merged).model_dump(mode="json")


@dataclass(frozen=True)
class Registration:
    """How a backend package describes itself (its ``BACKEND``; :mod:`shared.backends` lists them): its
    ``compute`` section, what it does and why, and how to build it and its planner, imported only when
    called (the Azure SDKs are slow to import). Its name is its section's ``backend`` tag."""

    section: type[ComputeSection]
    capabilities: Capabilities
    create: Callable[[Store, Settings], ComputeBackend]
    planner: Callable[[], Planner]

    @property
    def name(self) -> str:
        return str(self.section.model_fields["backend"].default)
