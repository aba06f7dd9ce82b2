"""Least privilege for compute: a credential that reaches ONE experiment's data, and the store the compute
runs with when that credential is all it holds.

The control plane keeps every table, queue and secret to itself. For each experiment it makes a compute
area (on Azure a container of its own, ``<prefix>-<id>-<hash>``; locally a folder) and mints a
:class:`ComputeCredential` for it: a container SAS (account key, or a user-delegation key under managed
identity) with read/add/create/write/list permissions, expiring after ``ttl``. A blob SAS reaches neither
another container (other experiments, ``artifacts``, ``secrets``) nor the table or queue service. The compute
writes its trials and artifacts there; each poll the control plane **ingests** them into its own tables and
artifacts container (validated: the compute cannot write anywhere else through it) and refreshes the
record the compute reads (so a cancel is seen). At teardown the area is deleted, which ends the credential
even before it expires.

Control plane::

    credential = areas.issue_compute_credential(record.id, ttl=timedelta(hours=12))
    payload = credential.to_json()        # give it to the compute (a Dask task argument, a job setting)
    report = areas.ingest_compute_output(record.id, since=report.watermark)  # each poll step
    areas.revoke_compute_credential(record.id)                                # teardown

Compute (the HPO driver on the head node; it needs ``azure-storage-blob`` and nothing else of Azure)::

    store = ComputeStore.from_json(payload)
    run_experiment(store, store.experiment_id, client, CancelWatch(store, store.experiment_id))

Area layout: ``experiment.json`` (the record, written by the control plane), ``trials/<number>.json``,
``artifacts/<name>`` (``driver/outcome.json``, ``model/...``, ``plots/...``).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from shared.config import CREDENTIAL_MAX_SECONDS
from shared.errors import NotFound
from shared.ports import ComputeCredential
from shared.records import ExperimentRecord, TrialRecord
from shared.store._common import check_artifact_name, check_experiment_id

RECORD_BLOB = "experiment.json"
TRIALS_PREFIX = "trials/"
ARTIFACTS_PREFIX = "artifacts/"
MAX_TTL = timedelta(seconds=CREDENTIAL_MAX_SECONDS)
"""User-delegation keys live at most seven days (Azure's limit); account-key SAS are capped alike."""


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    modified: datetime
    etag: str = ""
    """Changes whenever the blob is written (a folder's file: its size and modification time in ns)."""


class TooLarge(ValueError):
    """A blob read with a limit held more bytes than the limit."""


CHUNK_BYTES = 1024 * 1024
"""Bytes per chunk when a blob is streamed (the control plane's blob clients read at most this per request:
azure-storage-blob's reader holds several times its request size while it reads)."""


class Area(Protocol):
    """A flat namespace of blobs: an Azure container (through a SAS or the control plane's client) or a folder.

    ``get`` with a ``limit`` reads at most ``limit + 1`` bytes and raises :class:`TooLarge` past it (the size
    a listing showed may have grown since); ``chunks`` streams a blob in pieces of at most
    :data:`CHUNK_BYTES`; ``list`` with a ``limit`` stops after ``limit`` blobs (a compute may write millions
    of them: whoever enforces a count must not have to list them all first)."""

    def put(self, name: str, data: bytes) -> str: ...
    def get(self, name: str, limit: int | None = None) -> bytes: ...
    def chunks(self, name: str) -> Iterator[bytes]: ...
    def list(self, prefix: str = "", limit: int | None = None) -> list[BlobInfo]: ...


def _within(data: bytes, name: str, limit: int | None) -> bytes:
    if limit is not None and len(data) > limit:
        raise TooLarge(f"{name} holds more than {limit} bytes")
    return data


class ContainerArea:
    """An :class:`Area` over an ``azure.storage.blob.ContainerClient``."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def put(self, name: str, data: bytes) -> str:
        return str(self.container.upload_blob(name, data, overwrite=True).url).split("?")[0]

    def get(self, name: str, limit: int | None = None) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            if limit is None:
                return bytes(self.container.download_blob(name).readall())
            return _within(bytes(self.container.download_blob(name, offset=0, length=limit + 1).readall()), name, limit)
        except ResourceNotFoundError:
            raise NotFound(f"blob {name!r} not found") from None

    def chunks(self, name: str) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        try:  # ranged reads of CHUNK_BYTES (the SDK's own first read would ask for 32 MiB at once)
            size = int(self.container.get_blob_client(name).get_blob_properties().size)
        except ResourceNotFoundError:
            raise NotFound(f"blob {name!r} not found") from None
        for offset in range(0, size, CHUNK_BYTES):
            length = min(CHUNK_BYTES, size - offset)
            yield bytes(self.container.download_blob(name, offset=offset, length=length).readall())

    def list(self, prefix: str = "", limit: int | None = None) -> list[BlobInfo]:
        listed = self.container.list_blobs(name_starts_with=prefix or None)  # a pager: pages are fetched as read
        return [
            BlobInfo(b.name, int(b.size or 0), b.last_modified, str(b.etag or ""))
            for b in itertools.islice(listed, limit)
        ]


class FolderArea:
    """An :class:`Area` over a folder (the local store's compute area)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / check_artifact_name(name)

    def put(self, name: str, data: bytes) -> str:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        return path.as_uri()

    def get(self, name: str, limit: int | None = None) -> bytes:
        try:
            with self._path(name).open("rb") as handle:
                return _within(handle.read() if limit is None else handle.read(limit + 1), name, limit)
        except FileNotFoundError:
            raise NotFound(f"file {name!r} not found") from None

    def chunks(self, name: str) -> Iterator[bytes]:
        try:
            handle = self._path(name).open("rb")
        except FileNotFoundError:
            raise NotFound(f"file {name!r} not found") from None
        with handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    def list(self, prefix: str = "", limit: int | None = None) -> list[BlobInfo]:
        if not self.root.is_dir():
            return []
        files = (
            path
            for path in self.root.rglob("*")
            if path.is_file()
            and not path.name.startswith(".tmp-")
            and path.relative_to(self.root).as_posix().startswith(prefix)
        )
        found = []
        for path in itertools.islice(files, limit):
            stat = path.stat()
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            name = path.relative_to(self.root).as_posix()
            found.append(BlobInfo(name, stat.st_size, modified, f"{stat.st_size}-{stat.st_mtime_ns}"))
        return sorted(found, key=lambda blob: Path(blob.name))  # the order of the whole folder's sorted paths


# ------------------------------------------------------------------------------ the compute's side
class ComputeStore:
    """The ``Store`` an experiment's compute runs with, holding only a :class:`ComputeCredential`.

    It offers what the HPO driver uses (``get_experiment``, ``put_trial``, ``list_trials``,
    ``put_artifact``, ``get_artifact``, ``list_artifacts``) for its own experiment; anything else is a
    ``PermissionError``, and Azure refuses the SAS anywhere else anyway.
    """

    def __init__(self, credential: ComputeCredential, area: Area) -> None:
        self.credential = credential
        self.area = area

    @classmethod
    def from_credential(cls, credential: ComputeCredential) -> ComputeStore:
        if credential.kind == "folder":
            return cls(credential, FolderArea(Path(credential.url)))
        from azure.storage.blob import ContainerClient

        if credential.kind == "blob-identity":  # a VM's own identity, its token from the instance metadata
            from azure.identity import ManagedIdentityCredential

            identity = ManagedIdentityCredential(client_id=credential.token)
            return cls(credential, ContainerArea(ContainerClient.from_container_url(credential.url, identity)))

        return cls(
            credential, ContainerArea(ContainerClient.from_container_url(f"{credential.url}?{credential.token}"))
        )

    @classmethod
    def from_json(cls, text: str) -> ComputeStore:
        return cls.from_credential(ComputeCredential.from_json(text))

    @property
    def experiment_id(self) -> str:
        return self.credential.experiment_id

    def _own(self, experiment_id: str) -> None:
        if experiment_id != self.credential.experiment_id:
            raise PermissionError(f"this compute holds experiment {self.experiment_id!r}'s data only")

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        self._own(experiment_id)
        return ExperimentRecord.model_validate_json(self.area.get(RECORD_BLOB))

    def put_trial(self, trial: TrialRecord) -> None:
        self._own(trial.experiment_id)
        self.area.put(f"{TRIALS_PREFIX}{trial.number:010d}.json", trial.model_dump_json().encode())

    def list_trials(self, experiment_id: str, *, after: int = -1, limit: int | None = None) -> list[TrialRecord]:
        self._own(experiment_id)
        blobs = self.area.list(TRIALS_PREFIX)
        trials = [TrialRecord.model_validate_json(self.area.get(b.name)) for b in blobs if b.name.endswith(".json")]
        trials = [t for t in trials if t.number > after]
        return trials if limit is None else trials[:limit]

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        self._own(experiment_id)
        return self.area.put(ARTIFACTS_PREFIX + check_artifact_name(name), data)

    def get_artifact(self, experiment_id: str, name: str) -> bytes:
        self._own(experiment_id)
        return self.area.get(ARTIFACTS_PREFIX + check_artifact_name(name))

    def list_artifacts(self, experiment_id: str, prefix: str = "") -> list[str]:
        self._own(experiment_id)
        return sorted(b.name.removeprefix(ARTIFACTS_PREFIX) for b in self.area.list(ARTIFACTS_PREFIX + prefix))

    def __getattr__(self, name: str) -> Any:
        if name in {"create_experiment", "update_experiment", "list_experiments", "create_keyed_experiment"} | {
            "put_secret",
            "get_secret",
        }:
            raise PermissionError(f"the compute's credential gives no {name}: only the control plane has it")
        raise AttributeError(name)


# ----------------------------------------------------------------------- the control plane's side
def publish_record(area: Area, record: ExperimentRecord) -> None:
    """Write the record the compute reads (its spec, and its status for cancellation)."""
    area.put(RECORD_BLOB, record.model_dump_json(exclude={"version"}).encode())


KEY_CLOCK_MARGIN = timedelta(minutes=15)
"""How far ahead of Azure's clock ours may run when a user-delegation key asks for the 7-day maximum."""


def expiry(ttl: timedelta) -> datetime:
    if ttl <= timedelta(0):
        raise ValueError(f"a compute credential needs a positive lifetime, not {ttl}")
    return datetime.now(UTC) + min(ttl, MAX_TTL)


def area_name(prefix: str, experiment_id: str) -> str:
    """A container name for an experiment's compute area: at most 63 lower-case letters, digits and
    single hyphens, unique per ``(prefix, id)`` (a hash keeps ids differing only in case or ``_`` apart)."""
    import hashlib
    import re

    check_experiment_id(experiment_id)
    digest = hashlib.sha256(f"{prefix}/{experiment_id}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", experiment_id.lower()).strip("-")[: max(0, 50 - len(prefix))]
    return re.sub(r"-{2,}", "-", f"{prefix}-{readable}-{digest}")[:63]


def container_credential(blob_service: Any, container: Any, experiment_id: str, ttl: timedelta) -> ComputeCredential:
    """A SAS for ``container`` only: read, add, create, write, list (no delete, no other container, no
    table or queue). Signed with the account key when the client has one (Azurite, connection strings),
    else with a user-delegation key (managed identity: the Function App's blob data role grants it)."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    expires = expiry(ttl)
    start = datetime.now(UTC) - timedelta(minutes=5)  # clock skew
    permission = ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True)
    url = str(container.url).split("?")[0]
    signing: dict[str, Any] = {}
    account_key = getattr(blob_service.credential, "account_key", None)
    if account_key:
        signing["account_key"] = account_key
    else:
        # Azure refuses (400) a key that expires more than 7 days after *its* clock's now: a margin keeps a
        # local clock that runs ahead inside the limit, and a SAS signed with the key dies with it.
        expires = min(expires, datetime.now(UTC) + MAX_TTL - KEY_CLOCK_MARGIN)
        signing["user_delegation_key"] = blob_service.get_user_delegation_key(start, expires)
    token = generate_container_sas(
        blob_service.account_name,
        container.container_name,
        permission=permission,
        expiry=expires,
        start=start,
        protocol="https" if url.startswith("https://") else None,
        **signing,
    )
    return ComputeCredential(experiment_id, "blob-sas", url, token, expires)
