"""The ``vmcluster`` backend: the seed's MNMG example as a service, one bounded step at a time.

Dask runs on Azure VMs (the spec's vocabulary and defaults are dask-cloudprovider ``AzureVMCluster``'s)
in the VNet/NSG :func:`shared.backends.vmcluster.network.ensure_network` provides. The cluster is autonomous: the
head VM runs the Dask scheduler and the HPO driver beside it; the Function App creates the VMs and
meets the cluster only in the experiment's compute area in storage (:mod:`shared.store.compute`). It
never opens a Dask client, never sends pickled code, and needs no network path to the cluster.

Step by step (each bounded and idempotent, reconciled against what exists by tag and name)
    * ``provision``: the network, the compute area with the record and our code (``compute/code.zip``), and
      the VMs' own managed identity with its one role, on that area (:mod:`.identity`);
    * ``submit``: the cluster's TLS identity (a secret, into the area), then the head VM (NIC + VM, ~1-3 min);
    * ``poll``: ingest what the driver wrote (trials, model, heartbeat, outcome); create the worker VMs
      the cluster lacks (a lost Spot worker is replaced and counted as an eviction, with its own
      budget); FAILED when the head never reports or goes silent;
    * ``cancel``: republish the CANCELLING record the driver watches; ``teardown`` (the backstop)
      deletes the VMs, NICs and disks by tag, the network, the VMs' identity, and the compute area.

    Nothing waits for a docker pull inside a function. Names are deterministic (``dask-<cluster-id>-
    scheduler``, ``dask-<cluster-id>-worker-*``, ``<vm>-nic``), so a redelivered event creates only the
    shortfall; the cluster id is a secret written before any VM exists.

On the VMs
    Our own cloud-init (:mod:`.bootscript`: every spec value validated by the spec and quoted again)
    writes ``node.json`` (role, settings, where the area is; no secret) and ``boot.py`` (stdlib only), and runs
    one ``docker run`` of ``boot.py`` in the image with ``--restart=on-failure:5``. ``boot.py`` fetches the
    code (and the TLS key) as the VM's identity and starts scheduler + :mod:`.head` (head) or a worker of the spec's
    ``worker_class`` (workers). The scheduler has our code, so it can deserialize the driver's tasks, and
    runs the image's Python: nothing crosses Python versions.

Why not dask-cloudprovider's own pieces
    Its cluster object starts everything in one blocking call (past a function's timeout, and not
    carried from one invocation to the next); its ``create_vm`` passes snake_case dicts, which the
    current azure-mgmt SDKs send to ARM verbatim; its cloud-init pastes spec values unquoted into a
    single-quoted root shell line. So :mod:`.vms` creates VMs with typed SDK models and
    :mod:`.bootscript` renders the boot script.

Security
    No public IPs; the NSG admits Dask's ports from the experiment's subnet only. The VMs run as an
    identity of their own whose one role is Storage Blob Data Contributor on their experiment's container
    (deleted at teardown), and read the cluster's TLS identity there; their customData holds no secret (a
    SAS or key there is refused); no storage key or connection string anywhere.

Modules
    :mod:`.section` (the spec's ``compute`` section), :mod:`.network` (+ :mod:`.network_layout`: the VNet
    and NSG), :mod:`.vm_teardown` (deleting by tag), :mod:`.settings` (constants, VM arguments),
    :mod:`.dryrun` (the plan), :mod:`.bootscript` (cloud-init), :mod:`.boot` (the VMs' first program),
    :mod:`.vms` (creating a VM), :mod:`.workers` (the workers' poll steps), :mod:`.boot_notes` (failed starts),
    :mod:`.identity` (the VMs' own identity), :mod:`.head` (the head's driver), :mod:`.exchange` (the area's extra
    layout), :mod:`.handle` (the typed handle), :mod:`.backend` (the protocol), :mod:`.orphans` (the sweep).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.section import VMClusterCompute
from shared.ports import Capabilities, Registration

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ports import ComputeBackend, Planner, Store


def _create(store: Store, settings: Settings) -> ComputeBackend:
    from shared.backends.vmcluster.backend import VMClusterBackend

    return VMClusterBackend(store, settings, identity=settings.azure.vm_identity)


def _planner() -> Planner:
    from shared.backends.vmcluster.dryrun import VMClusterPlanner

    return VMClusterPlanner()


CAPABILITIES = Capabilities(
    model_from="driver",
    cloud_resources=True,
    finds_orphans=True,
    restarts_driver=False,
    model_on_cancel=True,
    reasons={
        "model_from": "the head's driver refits the best trial and writes the model into the area (ingested)",
        "cloud_resources": "VMs, NICs, disks and (unless existing ones are named) a VNet and NSG, deleted by tag",
        "finds_orphans": "VMs and networks are tagged with their experiment: the timer deletes what no live one owns",
        "restarts_driver": "Docker's restart policy restarts a dead driver on its VM, not poll; a lost head fails",
        "model_on_cancel": "cancel publishes CANCELLING to the area: the head's driver ends its trials, refits the "
        "best finished one on a worker that exists and writes its outcome, which poll ingests (creating and replacing "
        "no worker VM meanwhile); teardown waits for it",
    },
)
BACKEND = Registration(section=VMClusterCompute, capabilities=CAPABILITIES, create=_create, planner=_planner)

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
