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

Modules
    :mod:`.settings` (constants, VM arguments), :mod:`.dryrun` (the plan), :mod:`.bootscript` (cloud-init),
    :mod:`.vms` (creating a VM), :mod:`.head` (what runs on the cluster), :mod:`.handle` (the typed
    handle), :mod:`.backend` (the protocol), :mod:`.orphans` (the sweep).

Code on the cluster
    The RAPIDS image lacks our packages: the VMs pip-install the third-party ones at start
    (``EXTRA_PIP_PACKAGES``, honoured by the RAPIDS images' entrypoint) and :func:`ship_code` sends
    ``shared``/``gpu_jobs`` as a zip through a Dask worker plugin (new and restarted workers get it too).
"""

from __future__ import annotations

from typing import Any

__all__ = ["VMClusterBackend", "VMClusterHandle", "VMClusterPlanner", "VMIdentity", "plan"]
_WHERE = {
    "VMClusterBackend": "backend",
    "VMClusterHandle": "handle",
    "VMClusterPlanner": "dryrun",
    "VMIdentity": "settings",
    "plan": "dryrun",
}


def __getattr__(name: str) -> Any:  # lazy: the boot-time modules import without the backend's
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
