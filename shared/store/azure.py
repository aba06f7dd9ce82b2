"""``Store`` on Azure Storage: Table Storage for records, Blob Storage for artifacts.

Table design (table names from ``shared.config``, optionally prefixed):

- ``experiments``: one partition, ``"experiment"``, two rows per experiment, always written together in
  one entity-group transaction (same partition, so atomic; the create through
  :func:`shared.store._table_batch.insert_together`, the SDK's own transaction being slow on this hot path):

  - ``t:<inverted creation time>:<id>``: the record. Table Storage returns rows in RowKey order only,
    so the zero-padded inverted microsecond timestamp makes a plain range query list newest first
    (ties by id, ascending). Beside the body: ``Id``, ``Name``, ``Status`` (filtered on), ``Backend``,
    ``CreatedAt``. ``version`` is this row's ETag; updates are conditional on it.
  - ``id:<id>``: a pointer (``Key``) to the record's row, for reads by id; creating it is what makes a
    duplicate id fail. The pointer is cached per process; a changed ``created_at`` moves the record row
    and its pointer in one transaction.
  - ``key:<SHA-256 of an idempotency key>``: the key's claim (``ExperimentId``, and ``Key``, the record
    row it was created with), inserted in the same transaction as the experiment's two rows, so a key
    is bound exactly when its experiment exists: the first writer makes one request, a replay reads the
    claim (unless this process remembers it) and the record (through ``Key`` when it has not moved since).

- ``trials``: PartitionKey = experiment id, RowKey = zero-padded trial number (listing is ordered).

- ``idempotency`` (legacy, read only): where versions before the claim rows kept them (PartitionKey =
  SHA-256 of the key, RowKey ``key``, ``ExperimentId``). Where that table exists (looked up once per
  process), a key with no claim row is looked up there before a new experiment is created, so a retry
  spanning the upgrade gets the experiment its first send created; a bare legacy claim (its writer
  stopped before creating the experiment) gets its experiment under the claimed id.

Bodies are ASCII JSON (one character = one UTF-16 unit) split over ``Body0..BodyN`` properties of
32,000 characters (a property holds 64 KiB); bodies too big for one entity (1 MiB) go to a blob under
``_records/`` in the artifacts container, named by ``BodyBlob`` (experiment ids cannot start with ``_``).
Listing pages are keyset pages: the opaque token is base64 JSON of the last RowKey returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, TableTransactionError, UpdateMode
from azure.storage.blob import BlobServiceClient
from pydantic import BaseModel, Field

from shared.config import (
    CONTAINER_ARTIFACTS,
    CONTAINER_SECRETS,
    TABLE_EXPERIMENTS,
    TABLE_TRIALS,
    expand_connection_string,
)
from shared.errors import AlreadyExists, ConcurrencyConflict, CorruptRecord, NotFound
from shared.http_pool import pooled_transport
from shared.ports import ComputeCredential, IngestReport
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, UnreadableRecord, validated
from shared.store import compute, ingest
from shared.store._common import (
    MAX_ID_LENGTH,
    MAX_PAGE_SIZE,
    PageState,
    check_artifact_name,
    check_experiment_id,
    check_idempotency_key,
    check_limit,
    decode_page_token,
    encode_page_token,
    epoch_micros,
)
from shared.store._table_batch import insert_together
from shared.store.ingest import readable_trials

PARTITION = "experiment"
ID_ROW = "id:"
KEY_ROW = "key:"
CLAIMS_REMEMBERED = 20_000
"""Idempotency claims an ``AzureStore`` keeps in memory (a few MB at most)."""
LEGACY_CLAIMS_TABLE = "idempotency"
"""The table earlier versions kept idempotency claims in (read, never written)."""
TIME_ROW = "t:"
_TIME_ROW_END = "t;"  # the character after ":": the end of the t: range


class _ExperimentPage(PageState):
    """Where a listing resumes: after this time row key (``t:<descending time>:<id>``)."""

    after: str = Field(pattern=r"^t:[0-9]{19}:", max_length=MAX_ID_LENGTH + 32)


_TIME_CEILING = 10**18  # microseconds (year ~33,600); inverted times are padded to 19 digits
CHUNK_CHARS = 32_000
MAX_INLINE_CHUNKS = 12  # 12 x 64,000 bytes stays under the 1 MiB entity limit with room for the rest
RECORDS_PREFIX = "_records"
MAX_TRIAL_NUMBER = 10**10 - 1
_RETRIES = 3
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_BOUNDED_READS: dict[str, Any] = {
    "max_single_get_size": compute.CHUNK_BYTES,
    "max_chunk_get_size": compute.CHUNK_BYTES,
    "max_block_size": compute.CHUNK_BYTES,
}
"""Blob reads and streamed uploads of at most a chunk per request, so a copied or served artifact (a model
of gigabytes) stays out of memory; a blob of 50,000 such blocks is still 50 GiB."""


class AzureStore:
    """``Store`` on a storage account: tables ``<prefix>experiments|trials`` and a container.

    ``table_prefix`` and ``container`` let several stores (tests, environments) share one account.
    Tables and the container are created on first use.
    """

    def __init__(
        self,
        table_service: TableServiceClient,
        blob_service: BlobServiceClient,
        *,
        table_prefix: str = "",
        container: str = CONTAINER_ARTIFACTS,
        secrets_container: str = CONTAINER_SECRETS,
    ) -> None:
        self.table_service = table_service
        self.blob_service = blob_service
        self.table_names = tuple(f"{table_prefix}{name}" for name in (TABLE_EXPERIMENTS, TABLE_TRIALS))
        for name in self.table_names:
            if not _TABLE_NAME.fullmatch(name):
                raise ValueError(f"invalid table name {name!r} (prefix {table_prefix!r})")
        self._experiments, self._trials = (table_service.get_table_client(name) for name in self.table_names)
        self._legacy_claims_name = f"{table_prefix}{LEGACY_CLAIMS_TABLE}"
        self._legacy_claims: Any = None  # its client, where the table exists (decided in _ensure)
        self._container = blob_service.get_container_client(container)
        self._secrets = blob_service.get_container_client(secrets_container)
        self._ready = False
        self._lock = threading.Lock()
        self._row_keys: dict[str, str] = {}
        self._claims: dict[str, str] = {}  # claim row -> experiment id: claims never change or go
        self._claims_lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, connection_string: str, **kwargs: Any) -> AzureStore:
        """From a storage connection string (``UseDevelopmentStorage=true`` means Azurite)."""
        expanded = expand_connection_string(connection_string)
        return cls(
            TableServiceClient.from_connection_string(expanded, transport=pooled_transport()),
            BlobServiceClient.from_connection_string(expanded, transport=pooled_transport(), **_BOUNDED_READS),
            **kwargs,
        )

    @classmethod
    def from_account(cls, account_name: str, credential: TokenCredential, **kwargs: Any) -> AzureStore:
        """From an account name and an Entra ID credential (managed identity in Azure)."""
        tables = f"https://{account_name}.table.core.windows.net"
        blobs = f"https://{account_name}.blob.core.windows.net"
        return cls(
            TableServiceClient(endpoint=tables, credential=credential, transport=pooled_transport()),
            BlobServiceClient(blobs, credential=credential, transport=pooled_transport(), **_BOUNDED_READS),
            **kwargs,
        )

    @property
    def container_name(self) -> str:
        return self._container.container_name

    def _ensure(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            for name in self.table_names:
                self.table_service.create_table_if_not_exists(name)
            legacy = self._legacy_claims_name
            if any(self.table_service.query_tables("TableName eq @name", parameters={"name": legacy})):
                self._legacy_claims = self.table_service.get_table_client(legacy)
            for container in (self._container, self._secrets):
                with contextlib.suppress(ResourceExistsError):
                    container.create_container()
            self._ready = True

    # Experiments

    def create_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        record = validated(record)  # what is stored reads back (a model_copy validated nothing)
        check_experiment_id(record.id)
        self._ensure()
        row_key = _time_row_key(record)
        entity = self._experiment_entity(record, row_key)
        try:
            etags = insert_together(self._experiments, [_pointer(record.id, row_key), entity])
        except BaseException as exc:
            self._drop_body_blob(entity)
            if isinstance(exc, ResourceExistsError):
                raise AlreadyExists(f"experiment {record.id!r} exists already") from None
            raise
        self._row_keys[record.id] = row_key
        return record.model_copy(update={"version": etags[1]})

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        check_experiment_id(experiment_id)
        self._ensure()
        for _ in range(_RETRIES):
            entity = self._record_row(experiment_id)
            body = self._read_body(entity)
            if body is not None:  # else an update replaced the body blob between our two reads
                try:
                    return _experiment(body, entity.metadata["etag"])
                except ValueError as exc:  # pydantic's ValidationError is one
                    raise CorruptRecord(experiment_id, UnreadableRecord.of(experiment_id, exc).reason) from None
        raise ConcurrencyConflict(f"experiment {experiment_id!r} kept changing while being read")

    def update_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        record = validated(record)
        check_experiment_id(record.id)
        self._ensure()
        current = self._record_row(record.id)
        if current.metadata["etag"] != record.version:
            raise ConcurrencyConflict(f"experiment {record.id!r} changed since version {record.version!r}")
        row_key = _time_row_key(record)
        entity = self._experiment_entity(record, row_key)
        condition: dict[str, Any] = {"etag": record.version, "match_condition": MatchConditions.IfNotModified}
        try:
            if row_key == current["RowKey"]:
                meta = self._experiments.update_entity(entity, mode=UpdateMode.REPLACE, **condition)
                etag = meta["etag"]
            else:  # created_at changed: move the record row and its pointer together
                result = self._experiments.submit_transaction(
                    [
                        ("delete", {"PartitionKey": PARTITION, "RowKey": current["RowKey"]}, condition),
                        ("create", entity),
                        ("upsert", _pointer(record.id, row_key), {"mode": UpdateMode.REPLACE}),
                    ]
                )
                etag = result[1]["etag"]
        except BaseException as exc:
            self._drop_body_blob(entity)
            stale = isinstance(exc, ResourceModifiedError | ResourceNotFoundError) or (
                isinstance(exc, TableTransactionError) and exc.status_code in (404, 409, 412)
            )
            if stale:
                raise ConcurrencyConflict(
                    f"experiment {record.id!r} changed since version {record.version!r}"
                ) from None
            raise
        self._row_keys[record.id] = row_key
        self._drop_body_blob(current)
        return record.model_copy(update={"version": etag})

    def list_experiments(
        self, status: ExperimentStatus | None = None, limit: int = 50, page_token: str | None = None
    ) -> tuple[list[ExperimentRecord | UnreadableRecord], str | None]:
        check_limit(limit)
        self._ensure()
        after = TIME_ROW
        if page_token is not None:
            after = decode_page_token(page_token, _ExperimentPage).after
        query = "PartitionKey eq @pk and RowKey gt @after and RowKey lt @end"
        parameters = {"pk": PARTITION, "after": after, "end": _TIME_ROW_END}
        if status is not None:
            query += " and Status eq @status"
            parameters["status"] = ExperimentStatus(status).value
        rows = []
        entities = self._experiments.query_entities(
            query, parameters=parameters, results_per_page=min(limit + 1, MAX_PAGE_SIZE)
        )
        for entity in entities:
            rows.append(entity)
            if len(rows) > limit:
                break
        page = rows[:limit]
        records: list[ExperimentRecord | UnreadableRecord] = []
        for entity in page:
            body = self._read_body(entity)
            try:
                records.append(
                    self.get_experiment(entity["Id"])
                    if body is None
                    else _experiment(body, str(entity.metadata["etag"]))
                )
            except ValueError as exc:  # pydantic's ValidationError is one
                records.append(UnreadableRecord.of(entity["Id"], exc))
            except CorruptRecord as exc:
                records.append(UnreadableRecord(exc.experiment_id, exc.reason))
        token = encode_page_token(_ExperimentPage(after=page[-1]["RowKey"])) if len(rows) > limit else None
        return records, token

    def create_keyed_experiment(self, record: ExperimentRecord) -> tuple[ExperimentRecord, bool]:
        """The claim and the experiment's two rows in one transaction; if it fails on a taken row, the
        claim (if any) names the experiment to return. A claim this process has written or read is
        remembered (claims are never changed or deleted), so its replays read only the record."""
        record = validated(record)
        check_experiment_id(record.id)
        claim_row = KEY_ROW + hashlib.sha256(check_idempotency_key(record.idempotency_key or "").encode()).hexdigest()
        self._ensure()
        known = self._claims.get(claim_row)
        if known is not None:
            return self.get_experiment(known), False
        legacy = self._legacy_claim(record.idempotency_key or "")
        if legacy is not None:
            with contextlib.suppress(NotFound):
                existing = self.get_experiment(legacy)
                self._remember_claim(claim_row, legacy)
                return existing, False
            record = record.model_copy(update={"id": check_experiment_id(legacy)})  # a bare legacy claim
        row_key = _time_row_key(record)
        entity = self._experiment_entity(record, row_key)
        claim = {"PartitionKey": PARTITION, "RowKey": claim_row, "ExperimentId": record.id, "Key": row_key}
        try:
            etags = insert_together(self._experiments, [claim, _pointer(record.id, row_key), entity])
        except BaseException as exc:
            self._drop_body_blob(entity)
            if not isinstance(exc, ResourceExistsError):
                raise
            try:
                bound = self._experiments.get_entity(PARTITION, claim_row)
            except ResourceNotFoundError:
                raise AlreadyExists(f"experiment {record.id!r} exists already") from None
            self._row_keys.setdefault(bound["ExperimentId"], bound["Key"])  # a hint: a moved row is looked up
            self._remember_claim(claim_row, bound["ExperimentId"])
            return self.get_experiment(bound["ExperimentId"]), False
        self._row_keys[record.id] = row_key
        self._remember_claim(claim_row, record.id)
        return record.model_copy(update={"version": etags[2]}), True

    def _legacy_claim(self, key: str) -> str | None:
        """The experiment a key names in the legacy ``idempotency`` table (None: no such table or claim)."""
        if self._legacy_claims is None:
            return None
        try:
            entity = self._legacy_claims.get_entity(hashlib.sha256(key.encode()).hexdigest(), "key")
        except ResourceNotFoundError:
            return None
        return str(entity["ExperimentId"])

    def _remember_claim(self, claim_row: str, experiment_id: str) -> None:
        """Keep the newest :data:`CLAIMS_REMEMBERED` claims (a retry comes soon after its first send)."""
        with self._claims_lock:
            self._claims[claim_row] = experiment_id
            if len(self._claims) > CLAIMS_REMEMBERED:
                del self._claims[next(iter(self._claims))]

    def _record_row(self, experiment_id: str) -> Any:
        """The experiment's record row (a ``TableEntity``), through the cached or stored pointer."""
        cached = self._row_keys.get(experiment_id)
        if cached is not None:
            try:
                return self._experiments.get_entity(PARTITION, cached)
            except ResourceNotFoundError:
                self._row_keys.pop(experiment_id, None)
        for _ in range(_RETRIES):
            try:
                pointer = self._experiments.get_entity(PARTITION, ID_ROW + experiment_id)
            except ResourceNotFoundError:
                raise NotFound(f"experiment {experiment_id!r} not found") from None
            try:
                entity = self._experiments.get_entity(PARTITION, pointer["Key"])
            except ResourceNotFoundError:
                continue  # moved by a concurrent update of created_at: read the pointer again
            self._row_keys[experiment_id] = pointer["Key"]
            return entity
        raise ConcurrencyConflict(f"experiment {experiment_id!r} kept moving while being read")

    def _experiment_entity(self, record: ExperimentRecord, row_key: str) -> dict[str, Any]:
        blob = f"{RECORDS_PREFIX}/experiments/{record.id}/{uuid.uuid4().hex}.json"
        return {
            "PartitionKey": PARTITION,
            "RowKey": row_key,
            "Id": record.id,
            "Name": record.name[:1024],
            "Status": record.status.value,
            "Backend": record.backend[:1024],
            "CreatedAt": record.created_at,
            **self._body_properties(_ascii_json(record, exclude={"version"}), blob),
        }

    # Trials

    def put_trial(self, trial: TrialRecord) -> None:
        trial = validated(trial)
        check_experiment_id(trial.experiment_id)
        if trial.number > MAX_TRIAL_NUMBER:
            raise ValueError(f"trial number {trial.number} exceeds {MAX_TRIAL_NUMBER}")
        self._ensure()
        row_key = f"{trial.number:010d}"
        # A fixed blob name per trial: last writer wins, as for the row itself.
        blob = f"{RECORDS_PREFIX}/trials/{trial.experiment_id}/{row_key}.json"
        entity = {
            "PartitionKey": trial.experiment_id,
            "RowKey": row_key,
            "Number": trial.number,
            "State": trial.state.value,
            **self._body_properties(_ascii_json(trial), blob),
        }
        self._trials.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def list_trials(self, experiment_id: str, *, after: int = -1, limit: int | None = None) -> list[TrialRecord]:
        check_experiment_id(experiment_id)
        self._ensure()
        entities = self._trials.query_entities(
            "PartitionKey eq @pk and RowKey gt @after",
            parameters={"pk": experiment_id, "after": f"{after:010d}" if after >= 0 else ""},
            results_per_page=min(limit or MAX_PAGE_SIZE, MAX_PAGE_SIZE),
        )
        bodies = []
        for entity in entities:
            body = self._read_body(entity)
            if body is None:
                raise NotFound(f"body blob {entity['BodyBlob']!r} of a trial is missing")
            bodies.append(body)
            if limit is not None and len(bodies) >= max(limit, 1):
                break
        return readable_trials(experiment_id, bodies)

    # Artifacts

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        self._ensure()
        blob = self._container.upload_blob(_blob_name(experiment_id, name), data, overwrite=True)
        return blob.url

    def put_artifact_stream(self, experiment_id: str, name: str, chunks: Iterable[bytes]) -> str:
        """Store what ``chunks`` yields under ``name`` without holding it whole (blocks are committed only
        when the iterator ends: one that raises leaves the artifact as it was)."""
        self._ensure()
        return str(self._container.upload_blob(_blob_name(experiment_id, name), chunks, overwrite=True).url)

    def artifact_chunks(self, experiment_id: str, name: str) -> Iterator[bytes]:
        """The artifact in pieces of at most 4 MiB (``NotFound`` before the first if absent)."""
        self._ensure()
        return compute.ContainerArea(self._container).chunks(_blob_name(experiment_id, name))

    def get_artifact(self, experiment_id: str, name: str) -> bytes:
        self._ensure()
        try:
            return self._container.download_blob(_blob_name(experiment_id, name)).readall()
        except ResourceNotFoundError:
            raise NotFound(f"artifact {name!r} of experiment {experiment_id!r} not found") from None

    def put_secret(self, experiment_id: str, name: str, data: bytes) -> None:
        self._ensure()
        self._secrets.upload_blob(_blob_name(experiment_id, name), data, overwrite=True)

    def get_secret(self, experiment_id: str, name: str) -> bytes:
        self._ensure()
        try:
            return self._secrets.download_blob(_blob_name(experiment_id, name)).readall()
        except ResourceNotFoundError:
            raise NotFound(f"secret {name!r} of experiment {experiment_id!r} not found") from None

    @property
    def secrets_container_name(self) -> str:
        return self._secrets.container_name

    def list_artifacts(self, experiment_id: str, prefix: str = "") -> list[str]:
        folder = check_experiment_id(experiment_id) + "/"
        self._ensure()
        names = self._container.list_blob_names(name_starts_with=folder + prefix)
        return sorted(name.removeprefix(folder) for name in names)

    # Compute areas (shared.store.compute): one container per experiment, reached with a SAS

    def _area(self, experiment_id: str) -> Any:
        return self.blob_service.get_container_client(compute.area_name(f"{self.container_name}-run", experiment_id))

    def issue_compute_credential(self, experiment_id: str, ttl: timedelta) -> ComputeCredential:
        """A SAS reaching only this experiment's compute area, expiring after ``ttl`` (at most 7 days)."""
        record = self.get_experiment(experiment_id)
        container = self._area(experiment_id)
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        compute.publish_record(compute.ContainerArea(container), record)
        return compute.container_credential(self.blob_service, container, experiment_id, ttl)

    def ingest_compute_output(
        self, experiment_id: str, since: datetime | None = None, *, seen: str = "", quota_bytes: int | None = None
    ) -> IngestReport:
        """Take the compute's trials and artifacts into the tables and artifacts container (validated)."""
        container = self._area(experiment_id)
        if not container.exists():
            return IngestReport(watermark=since, seen=seen)
        quota = quota_bytes or ingest.DEFAULT_QUOTA_BYTES
        return ingest.ingest(self, compute.ContainerArea(container), experiment_id, since, seen=seen, quota_bytes=quota)

    def revoke_compute_credential(self, experiment_id: str) -> None:
        """Delete the compute area: its SAS reaches nothing from now on."""
        with contextlib.suppress(ResourceNotFoundError):
            self._area(experiment_id).delete_container()

    # Bodies

    def _body_properties(self, body: str, blob_name: str) -> dict[str, Any]:
        if len(body) > CHUNK_CHARS * MAX_INLINE_CHUNKS:
            self._container.upload_blob(blob_name, body.encode("ascii"), overwrite=True)
            return {"BodyBlob": blob_name}
        chunks = [body[i : i + CHUNK_CHARS] for i in range(0, len(body), CHUNK_CHARS)]
        return {"BodyChunks": len(chunks)} | {f"Body{i}": chunk for i, chunk in enumerate(chunks)}

    def _read_body(self, entity: Mapping[str, Any]) -> str | None:
        """The entity's JSON body, or None if its blob is gone (replaced by a newer version)."""
        blob = entity.get("BodyBlob")
        if not blob:
            return "".join(entity[f"Body{i}"] for i in range(entity["BodyChunks"]))
        try:
            return self._container.download_blob(blob).readall().decode("ascii")
        except ResourceNotFoundError:
            return None

    def _drop_body_blob(self, entity: Mapping[str, Any]) -> None:
        blob = entity.get("BodyBlob")
        if blob:
            with contextlib.suppress(ResourceNotFoundError):
                self._container.delete_blob(blob)


def _time_row_key(record: ExperimentRecord) -> str:
    return f"{TIME_ROW}{_TIME_CEILING - epoch_micros(record.created_at):019d}:{record.id}"


def _pointer(experiment_id: str, row_key: str) -> dict[str, Any]:
    return {"PartitionKey": PARTITION, "RowKey": ID_ROW + experiment_id, "Key": row_key}


def _ascii_json(model: BaseModel, exclude: set[str] | None = None) -> str:
    data = model.model_dump(mode="json", exclude=exclude)
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def _experiment(body: str, etag: str) -> ExperimentRecord:
    return ExperimentRecord.model_validate_json(body).model_copy(update={"version": etag})


def _blob_name(experiment_id: str, name: str) -> str:
    return f"{check_experiment_id(experiment_id)}/{check_artifact_name(name)}"
