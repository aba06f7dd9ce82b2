"""The three ports of the control plane. Each has a local and an Azure adapter and one conformance suite.

- ``Store``: experiment status records, trial records and artifacts (local: SQLite + folder;
  Azure: Table Storage + Blob Storage). ``update_experiment`` is optimistic: it succeeds only if the
  record's ``version`` is still the one the caller read, else raises ``ConcurrencyConflict``.
- ``EventQueue``: at-least-once messages with visibility timeout and dequeue count, the semantics of
  Azure Storage queues (local: SQLite; Azure: azure-storage-queue with base64 text).
- ``ComputeBackend``: where the HPO driver runs (local process + Dask LocalCluster, AzureVMCluster,
  AzureML sweep). Every method is idempotent and short; long work happens on the compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord


@runtime_checkable
class TrialStore(Protocol):
    """What the HPO engine needs: record trials as they end, read them back to resume, keep models."""

    def put_trial(self, trial: TrialRecord) -> None:
        """Insert or replace trial ``(experiment_id, number)``."""

    def list_trials(self, experiment_id: str) -> list[TrialRecord]:
        """All trials of an experiment, ordered by number."""

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
    ) -> tuple[list[ExperimentRecord], str | None]:
        """Newest first; returns a page and the token of the next page (None at the end)."""

    def claim_idempotency_key(self, key: str, experiment_id: str) -> str:
        """Bind ``key`` to ``experiment_id`` unless already bound; return the id it is bound to."""

    def get_artifact(self, experiment_id: str, name: str) -> bytes:
        """Raise ``NotFound`` if absent."""

    def list_artifacts(self, experiment_id: str, prefix: str = "") -> list[str]:
        """Names of an experiment's artifacts under ``prefix``, sorted."""

    def put_secret(self, experiment_id: str, name: str, data: bytes) -> None:
        """Keep a credential apart from the artifacts (never listed or served; the compute cannot read it)."""

    def get_secret(self, experiment_id: str, name: str) -> bytes:
        """Raise ``NotFound`` if absent."""


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


@dataclass
class RunStatus:
    """What ``ComputeBackend.poll`` saw of a run."""

    state: RunState
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ComputeBackend(Protocol):
    """Where an experiment's HPO work runs. ``handle`` is the backend's own state, kept in the store
    (``ExperimentRecord.backend_state``); every method is idempotent."""

    name: str

    def provision(self, record: ExperimentRecord) -> dict[str, Any]:
        """Create (or find) what the run needs; return the updated handle."""

    def submit(self, record: ExperimentRecord) -> dict[str, Any]:
        """Start the run unless already started; return the updated handle."""

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """Report the run's state; trial records reach the store on the way."""

    def finalize(self, record: ExperimentRecord) -> dict[str, Any]:
        """Bring the best model into the store (no-op where the run stored it); return handle updates."""

    def cancel(self, record: ExperimentRecord) -> None:
        """Stop the run's trials (no-op if not running)."""

    def teardown(self, record: ExperimentRecord) -> None:
        """Remove compute this experiment created ("not found" counts as success)."""
