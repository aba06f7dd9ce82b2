"""``Store`` on one machine: SQLite (WAL) for records, a folder for artifacts.

Safe across threads and processes (the HPO driver and the API share one store): every thread of every
process has its own SQLite connection, writes are single statements or ``BEGIN IMMEDIATE`` transactions.
Records are stored as JSON with the columns that queries need (id, status, creation time) beside it;
``version`` is an integer counter bumped by each successful update.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import Field

from shared.errors import AlreadyExists, ConcurrencyConflict, CorruptRecord, NotFound
from shared.ports import ComputeCredential, IngestReport
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, UnreadableRecord, validated
from shared.store import compute, ingest
from shared.store._common import (
    MAX_ID_LENGTH,
    PageState,
    check_artifact_name,
    check_experiment_id,
    check_idempotency_key,
    check_limit,
    decode_page_token,
    encode_page_token,
    epoch_micros,
)
from shared.store._sqlite import SQLiteConnections
from shared.store.ingest import readable_trials

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_newest ON experiments (created_us DESC, id);
CREATE INDEX IF NOT EXISTS experiments_status ON experiments (status, created_us DESC, id);
CREATE TABLE IF NOT EXISTS trials (
    experiment_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (experiment_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL
) WITHOUT ROWID
"""


class _ExperimentPage(PageState):
    """Where a listing resumes: after ``(created_us, id)`` in the listing's order."""

    created_us: int = Field(ge=-(2**63), lt=2**63)  # an SQLite INTEGER
    id: str = Field(max_length=MAX_ID_LENGTH)


class LocalStore:
    """``Store`` under ``root``: ``root/store.sqlite3`` and ``root/artifacts/<experiment_id>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.artifacts_root = self.root / "artifacts"
        self._tmp = self.root / "tmp"
        self._db = SQLiteConnections(self.root / "store.sqlite3", _SCHEMA)

    def close(self) -> None:
        """Close the calling thread's database connection."""
        self._db.close()

    # Experiments

    def create_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        record = validated(record)  # what is stored reads back (a model_copy validated nothing)
        check_experiment_id(record.id)
        return self._insert(self._db.connection(), record)

    def _insert(self, conn: sqlite3.Connection, record: ExperimentRecord) -> ExperimentRecord:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO experiments (id, status, created_us, version, body) VALUES (?, ?, ?, 1, ?)",
            (record.id, record.status.value, epoch_micros(record.created_at), _experiment_json(record)),
        )
        if cursor.rowcount == 0:  # raised inside a transaction, it rolls the claim back too
            raise AlreadyExists(f"experiment {record.id!r} exists already")
        return record.model_copy(update={"version": "1"})

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        check_experiment_id(experiment_id)
        row = (
            self._db.connection()
            .execute("SELECT body, version FROM experiments WHERE id = ?", (experiment_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"experiment {experiment_id!r} not found")
        found = _experiment_or_unreadable(experiment_id, *row)
        if isinstance(found, UnreadableRecord):
            raise CorruptRecord(experiment_id, found.reason)
        return found

    def update_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        record = validated(record)
        check_experiment_id(record.id)
        conn = self._db.connection()
        if record.version.isdigit():
            version = int(record.version)
            cursor = conn.execute(
                "UPDATE experiments SET status = ?, created_us = ?, version = ?, body = ? WHERE id = ? AND version = ?",
                (
                    record.status.value,
                    epoch_micros(record.created_at),
                    version + 1,
                    _experiment_json(record),
                    record.id,
                    version,
                ),
            )
            if cursor.rowcount == 1:
                return record.model_copy(update={"version": str(version + 1)})
        if conn.execute("SELECT 1 FROM experiments WHERE id = ?", (record.id,)).fetchone() is None:
            raise NotFound(f"experiment {record.id!r} not found")
        raise ConcurrencyConflict(f"experiment {record.id!r} changed since version {record.version!r}")

    def list_experiments(
        self, status: ExperimentStatus | None = None, limit: int = 50, page_token: str | None = None
    ) -> tuple[list[ExperimentRecord | UnreadableRecord], str | None]:
        check_limit(limit)
        where: list[str] = []
        params: list[str | int] = []
        if status is not None:
            where.append("status = ?")
            params.append(ExperimentStatus(status).value)
        if page_token is not None:
            after = decode_page_token(page_token, _ExperimentPage)
            where.append("(created_us < ? OR (created_us = ? AND id > ?))")
            params += [after.created_us, after.created_us, after.id]
        sql = "SELECT body, version, created_us, id FROM experiments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_us DESC, id ASC LIMIT ?"
        rows = self._db.connection().execute(sql, (*params, limit + 1)).fetchall()
        page = rows[:limit]
        token = None
        if len(rows) > limit:
            token = encode_page_token(_ExperimentPage(created_us=page[-1][2], id=page[-1][3]))
        return [_experiment_or_unreadable(id_, body, version) for body, version, _, id_ in page], token

    def create_keyed_experiment(self, record: ExperimentRecord) -> tuple[ExperimentRecord, bool]:
        """One ``BEGIN IMMEDIATE`` transaction: the claim and the insert, or the bound experiment's id."""
        record = validated(record)
        check_experiment_id(record.id)
        key = check_idempotency_key(record.idempotency_key or "")
        with self._db.transaction() as conn:
            row = conn.execute("SELECT experiment_id FROM idempotency WHERE key = ?", (key,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO idempotency (key, experiment_id) VALUES (?, ?)", (key, record.id))
                return self._insert(conn, record), True
            bound: str = row[0]
            if conn.execute("SELECT 1 FROM experiments WHERE id = ?", (bound,)).fetchone() is None:
                # bound by an earlier version's writer that stopped between its claim and its insert
                return self._insert(conn, record.model_copy(update={"id": bound})), True
        return self.get_experiment(bound), False

    # Trials

    def put_trial(self, trial: TrialRecord) -> None:
        trial = validated(trial)
        check_experiment_id(trial.experiment_id)
        self._db.connection().execute(
            "INSERT INTO trials (experiment_id, number, body) VALUES (?, ?, ?) "
            "ON CONFLICT (experiment_id, number) DO UPDATE SET body = excluded.body",
            (trial.experiment_id, trial.number, trial.model_dump_json()),
        )

    def list_trials(self, experiment_id: str, *, after: int = -1, limit: int | None = None) -> list[TrialRecord]:
        check_experiment_id(experiment_id)
        rows = self._db.connection().execute(
            "SELECT body FROM trials WHERE experiment_id = ? AND number > ? ORDER BY number LIMIT ?",
            (experiment_id, max(after, -1), -1 if limit is None else max(limit, 1)),
        )
        return readable_trials(experiment_id, (body for (body,) in rows))

    # Artifacts

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        return self.put_artifact_stream(experiment_id, name, [data])

    def put_artifact_stream(self, experiment_id: str, name: str, chunks: Iterable[bytes]) -> str:
        """Store what ``chunks`` yields under ``name``, written aside and renamed when complete."""
        path = self._artifact_path(experiment_id, name)
        self._write(path, chunks)
        return path.resolve().as_uri()

    def artifact_chunks(self, experiment_id: str, name: str) -> Iterator[bytes]:
        """The artifact in pieces of at most 4 MiB (``NotFound`` before the first if absent)."""
        path = self._artifact_path(experiment_id, name)
        if not path.is_file():
            raise NotFound(f"artifact {name!r} of experiment {experiment_id!r} not found")
        return compute.FolderArea(path.parent).chunks(path.name)

    def put_secret(self, experiment_id: str, name: str, data: bytes) -> None:
        self._write(self._secret_path(experiment_id, name), [data], mode=0o600)

    def get_secret(self, experiment_id: str, name: str) -> bytes:
        try:
            return self._secret_path(experiment_id, name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"secret {name!r} of experiment {experiment_id!r} not found") from exc

    def _secret_path(self, experiment_id: str, name: str) -> Path:
        return self.root / "secrets" / check_experiment_id(experiment_id) / check_artifact_name(name)

    def _write(self, path: Path, chunks: Iterable[bytes], mode: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Write aside, then rename: a reader never sees half a file, concurrent writers: last one wins.
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=f"{uuid.uuid4().hex}-")
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_artifact(self, experiment_id: str, name: str) -> bytes:
        path = self._artifact_path(experiment_id, name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"artifact {name!r} of experiment {experiment_id!r} not found") from exc

    def list_artifacts(self, experiment_id: str, prefix: str = "") -> list[str]:
        folder = self.artifacts_root / check_experiment_id(experiment_id)
        if not folder.is_dir():
            return []
        names = (path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        return sorted(name for name in names if name.startswith(prefix))

    def _artifact_path(self, experiment_id: str, name: str) -> Path:
        return self.artifacts_root / check_experiment_id(experiment_id) / check_artifact_name(name)

    # Compute areas (shared.store.compute): a folder per experiment; on one machine the "credential" is
    # the folder itself (the user's own machine: no isolation between processes of one user is claimed)

    def _area(self, experiment_id: str) -> compute.FolderArea:
        return compute.FolderArea(self.root / "compute" / check_experiment_id(experiment_id))

    def issue_compute_credential(self, experiment_id: str, ttl: timedelta) -> ComputeCredential:
        area = self._area(experiment_id)
        compute.publish_record(area, self.get_experiment(experiment_id))
        return ComputeCredential(experiment_id, "folder", str(area.root), "", compute.expiry(ttl))

    def ingest_compute_output(
        self, experiment_id: str, since: datetime | None = None, *, seen: str = "", quota_bytes: int | None = None
    ) -> IngestReport:
        area = self._area(experiment_id)
        if not area.root.is_dir():
            return IngestReport(watermark=since, seen=seen)
        quota = quota_bytes or ingest.DEFAULT_QUOTA_BYTES
        return ingest.ingest(self, area, experiment_id, since, seen=seen, quota_bytes=quota)

    def revoke_compute_credential(self, experiment_id: str) -> None:
        shutil.rmtree(self._area(experiment_id).root, ignore_errors=True)


def _experiment_json(record: ExperimentRecord) -> str:
    return record.model_dump_json(exclude={"version"})


def _experiment_or_unreadable(experiment_id: str, body: str, version: int) -> ExperimentRecord | UnreadableRecord:
    try:
        return ExperimentRecord.model_validate_json(body).model_copy(update={"version": str(version)})
    except ValueError as exc:  # pydantic's ValidationError is one
        return UnreadableRecord.of(experiment_id, exc)
