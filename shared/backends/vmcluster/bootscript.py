"""The VMs' boot script (cloud-init): dask-cloudprovider renders it from the cluster's options.

Its ``AzureVMCluster`` object resolves the options, names the VMs, builds the Dask commands with the
TLS config and renders the cloud-init; the object is never started (its ``asynchronous=True``
constructor touches no network), and is detached at once so nothing can ever destroy VMs from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import BackendError

if TYPE_CHECKING:
    from distributed.security import Security

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

MAX_CUSTOM_DATA = 87380
"""Azure's limit on a VM's base64 custom data (dask-cloudprovider checks the same)."""


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
