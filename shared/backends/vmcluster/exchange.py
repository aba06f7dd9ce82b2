"""Where the control plane and an experiment's cluster meet: one blob container per experiment.

The control plane creates the container, puts the spec and the code archive in it and mints a SAS
scoped to that container alone (read, add, create, write, list, delete; expires with the experiment);
the cluster's head node and workers hold only that SAS. They never create containers, never see the
control plane's tables, secrets or another experiment's container. The control plane reads the trials,
the heartbeat and the outcome from it, ingests them into its store, and writes the cancel flag.

Layout (blob names inside the container)::

    compute/spec.json        the experiment spec (written by the control plane)
    compute/code.zip         ``shared`` and ``gpu_jobs`` (the VMs' image lacks them)
    control/cancel           present = stop (the driver checks it about once a second)
    trials/<number>.json     one TrialRecord per trial, rewritten as it starts and ends
    driver/heartbeat.json    the driver's last sign of life (UTC time, trials done)
    driver/outcome.json      how the run ended (the control plane's poll reads it)
    model/..., plots/...     the refitted best model and the charts, copied into the store at the end

:class:`ExperimentFiles` is the compute side (stdlib + azure-storage-blob + pydantic: it runs on the
VMs' Python); :class:`Exchange` and :func:`issue_sas` are the control plane's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.records import TrialRecord

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

SPEC_BLOB = "compute/spec.json"
CODE_BLOB = "compute/code.zip"
CANCEL_BLOB = "control/cancel"
HEARTBEAT_BLOB = "driver/heartbeat.json"
OUTCOME_BLOB = "driver/outcome.json"
TRIALS_PREFIX = "trials/"
COPIED_PREFIXES = ("model/", "plots/", "driver/")
"""What the control plane copies from the exchange into the store's artifacts at the end."""
CODE_PACKAGES = ("shared", "gpu_jobs")
ROOT = Path(__file__).resolve().parents[3]


def container_name(experiment_id: str) -> str:
    """A valid, collision-free container name for an experiment (3-63 lower-case characters)."""
    digest = hashlib.sha256(experiment_id.encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "-" for c in experiment_id.lower())[:30].strip("-")
    return "-".join(part for part in ("hpo", slug, digest) if part).replace("--", "-")


def trial_blob(number: int) -> str:
    return f"{TRIALS_PREFIX}{number:08d}.json"


def build_code_archive(path: Path, root: Path = ROOT) -> Path:
    """Zip ``shared`` and ``gpu_jobs`` (sources only): what the VMs put on their Python path."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in CODE_PACKAGES:
            for file in sorted((root / package).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    archive.write(file, file.relative_to(root).as_posix())
    return path


# ------------------------------------------------------------------------------- the compute's side
class ExperimentFiles:
    """A ``TrialStore`` over one experiment's container, reached with its SAS URL and nothing else."""

    def __init__(self, container_url: str, experiment_id: str) -> None:
        from azure.storage.blob import ContainerClient

        self.experiment_id = experiment_id
        self.container: ContainerClient = ContainerClient.from_container_url(container_url)

    def _check(self, experiment_id: str) -> None:
        if experiment_id != self.experiment_id:
            raise PermissionError(f"this credential is for experiment {self.experiment_id}, not {experiment_id}")

    def put(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def get(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.container.get_blob_client(name).exists()

    # TrialStore
    def put_trial(self, trial: TrialRecord) -> None:
        self._check(trial.experiment_id)
        self.put(trial_blob(trial.number), trial.model_dump_json().encode())

    def list_trials(self, experiment_id: str) -> list[TrialRecord]:
        self._check(experiment_id)
        names = sorted(b.name for b in self.container.list_blobs(name_starts_with=TRIALS_PREFIX))
        return [TrialRecord.model_validate_json(data) for name in names if (data := self.get(name)) is not None]

    def put_artifact(self, experiment_id: str, name: str, data: bytes) -> str:
        self._check(experiment_id)
        self.put(name, data)
        return f"exchange:{name}"

    def heartbeat(self, **details: Any) -> None:
        self.put(HEARTBEAT_BLOB, json.dumps({"at": datetime.now(UTC).isoformat(), **details}).encode())


# ------------------------------------------------------------------------- the control plane's side
@dataclass(frozen=True)
class Exchange:
    """The control plane's handle on an experiment's container (full rights, from its own credential)."""

    container: ContainerClient

    @classmethod
    def of(cls, blob_service: BlobServiceClient, experiment_id: str) -> Exchange:
        return cls(blob_service.get_container_client(container_name(experiment_id)))

    def ensure(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.container.create_container()

    def put(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def get(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None

    def get_json(self, name: str) -> dict[str, Any] | None:
        data = self.get(name)
        return None if data is None else json.loads(data)

    def blobs(self, prefix: str) -> list[Any]:
        """The blobs under ``prefix`` (name, last_modified, ...), none once the container is gone."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return sorted(self.container.list_blobs(name_starts_with=prefix), key=lambda b: b.name)
        except ResourceNotFoundError:
            return []

    def names(self, prefix: str) -> list[str]:
        return [b.name for b in self.blobs(prefix)]

    def trials(self) -> list[TrialRecord]:
        return [
            TrialRecord.model_validate_json(data)
            for name in self.names(TRIALS_PREFIX)
            if (data := self.get(name)) is not None
        ]

    def cancel(self) -> None:
        self.put(CANCEL_BLOB, datetime.now(UTC).isoformat().encode())

    def delete(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_container()

    def sas_url(self, blob_service: BlobServiceClient, *, valid_for: timedelta) -> str:
        """The container's URL with a SAS scoped to it alone, valid for ``valid_for``."""
        return f"{self.container.url}?{issue_sas(blob_service, self.container.container_name, valid_for)}"


def issue_sas(blob_service: BlobServiceClient, container: str, valid_for: timedelta) -> str:
    """A service SAS for one container: with the account key where the client has one (Azurite,
    connection strings), else a user-delegation SAS from the control plane's Entra ID identity."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    start = datetime.now(UTC) - timedelta(minutes=5)  # clock skew
    expiry = datetime.now(UTC) + valid_for
    permission = ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True, delete=True)
    credential = blob_service.credential
    account_key = getattr(credential, "account_key", None)
    if account_key:
        return generate_container_sas(
            str(blob_service.account_name),
            container,
            account_key=account_key,
            permission=permission,
            expiry=expiry,
            start=start,
        )
    delegation = blob_service.get_user_delegation_key(start, expiry)
    return generate_container_sas(
        str(blob_service.account_name),
        container,
        user_delegation_key=delegation,
        permission=permission,
        expiry=expiry,
        start=start,
    )
