"""What runs on the cluster, and the Dask plumbing the control plane uses to start it there.

:func:`run_driver_on_cluster` is the HPO driver as a long-running Dask task; :func:`ship_code` sends
``shared``/``gpu_jobs`` to the workers; the cluster's TLS credentials are made and read here.
Imports stay light (stdlib, pydantic, shared.config): Dask workers import this module.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.settings import CODE_ARCHIVE, CODE_PACKAGES, CODE_PLUGIN, ROOT
from shared.config import Settings

if TYPE_CHECKING:
    from distributed import Client
    from distributed.security import Security

ACTIVE_TASK_STATES = frozenset({"released", "waiting", "queued", "no-worker", "processing"})
"""Scheduler task states of a driver that is still alive."""


def new_credentials(cluster_id: str, secure: bool) -> dict[str, Any]:
    """A fresh credentials document: the cluster id and, if ``secure``, a temporary TLS identity."""
    document: dict[str, Any] = {"cluster_id": cluster_id, "require_encryption": secure}
    if secure:
        from distributed.security import Security

        temporary = Security.temporary()  # one self-signed key/cert for every role, as dask-cloudprovider uses
        document |= {
            "tls_ca": temporary.tls_ca_file,
            "tls_cert": temporary.tls_client_cert,
            "tls_key": temporary.tls_client_key,
        }
    return document


def security_from(document: dict[str, Any]) -> Security | None:
    """The ``distributed.Security`` for every role (scheduler, worker, client) of a credentials document."""
    if not document.get("require_encryption"):
        return None
    from distributed.security import Security

    cert, key = document["tls_cert"], document["tls_key"]
    return Security(
        require_encryption=True,
        tls_ca_file=document["tls_ca"],
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
    )


def build_code_archive(path: Path, root: Path = ROOT) -> Path:
    """Zip ``shared`` and ``gpu_jobs`` (sources only) so Dask workers can import them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in CODE_PACKAGES:
            for file in sorted((root / package).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    archive.write(file, file.relative_to(root).as_posix())
    return path


def ship_code(client: Client) -> None:
    """Send our packages to every worker, present and future, as a worker plugin (idempotent: the
    plugin's fixed name replaces an earlier one). The scheduler needs none of our code."""
    from distributed.diagnostics.plugin import UploadFile

    with tempfile.TemporaryDirectory(prefix="rapids-hpo-code-") as folder:
        path = build_code_archive(Path(folder) / CODE_ARCHIVE)
        client.register_plugin(UploadFile(str(path), load=True), name=CODE_PLUGIN)


def probe_task(client: Client, key: str) -> dict[str, Any]:
    """The scheduler's view of task ``key``: ``{"state", "exception", "worker"}`` (state None = unknown)."""

    # Defined inside so cloudpickle ships it by value: the scheduler VM has none of our packages.
    def lookup(dask_scheduler: Any, key: str = key) -> dict[str, Any]:
        task = dask_scheduler.tasks.get(key)
        if task is None:
            return {"state": None, "exception": None, "worker": None}
        worker = task.processing_on.address if task.processing_on is not None else None
        return {"state": str(task.state), "exception": task.exception_text or None, "worker": worker}

    return client.run_on_scheduler(lookup)


def run_driver_on_cluster(experiment_id: str) -> dict[str, Any]:
    """Run (or resume) an experiment's HPO driver inside a Dask task on the cluster.

    Opens the store the environment names (the VMs' ``AzureWebJobsStorage__accountName`` and managed
    identity), takes a client with :func:`distributed.worker_client`, which secedes this task from
    the worker's thread pool so it does not hold a GPU's thread while trials run, and writes
    ``driver/outcome.json`` at the end like the local driver process.
    """
    from distributed import worker_client

    from shared.hpo.run_driver import CancelWatch, run_experiment
    from shared.store import open_store

    store = open_store(Settings.from_env())
    with worker_client(separate_thread=True) as client:
        outcome = run_experiment(store, experiment_id, client, CancelWatch(store, experiment_id))
    return {"status": outcome.status, "reason": outcome.reason, "trials_done": outcome.trials_done}
