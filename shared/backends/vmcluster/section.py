"""The ``vmcluster`` backend's ``compute`` section: the VMs, their image and the network a run asks for."""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from shared.compute_spec import (
    RAPIDS_DOCKER_ARGS,
    ComputeSection,
    GpuCapacity,
    HostedSettings,
    Problem,
    Strict,
    VmSize,
    gpus_per_node,
)
from shared.cost.billing import BillingModel, BillingProfile, NodeGroup, Tier, spec_tier

if TYPE_CHECKING:
    from shared.config import AzureSettings
    from shared.spec import ExperimentSpec

VMCLUSTER_DEFAULT_VM_SIZE = "Standard_NC8as_T4_v3"
"""One T4 per Dask worker VM with 56 GB of host memory for loading and shuffling the data."""
VMCLUSTER_DEFAULT_HEAD_SIZE = "Standard_D8s_v5"
"""The head runs the Dask scheduler and the HPO driver only (every trial, the data check and the refit are
tasks on the workers): 8 vCPUs and 32 GB without a GPU, about half a T4 worker's price, idle GPU none."""
CLUSTER_STARTUP_ESTIMATE_S = 900
"""Seconds a VM cluster bills before its first trial: the VMs boot and pull the RAPIDS image."""


def _rmm_managed_memory() -> dict[str, str | int | float | bool]:
    return {"rmm-managed-memory": True}


# Values that reach a VM's boot script (run as root): each is checked against a strict pattern here, and
# the boot script quotes every token again (shared.backends.vmcluster.bootscript).
IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:@-]{0,254}$"
"""A container image reference: registry/name[:tag][@digest], lower case (no spaces, quotes or ``$``)."""
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
"""A reference pinned by content: ``...@sha256:<64 hex>``."""
DOCKER_ARG_PATTERN = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.:/,=@+-]*)?$")
"""One ``docker run`` option in ``--name=value`` form."""
PYTHON_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
"""A dotted Python name (``dask_cuda.CUDAWorker``)."""
MAX_THREADS_PER_GPU = 64
"""Most trials a ``CUDAWorker`` may run at once on one GPU (``worker_options.nthreads``)."""
OPTION_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
SAFE_VALUE_PATTERN = re.compile(r"^[A-Za-z0-9_.:/,=@+%-]{0,256}$")
AZURE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.()-]{0,89}$"


MAX_SOURCE_PREFIX_V4 = 16
"""The broadest IPv4 block an admin source may be: 65,536 addresses, a site's network, not a provider's."""
MAX_SOURCE_PREFIX_V6 = 48
"""The broadest IPv6 block: a /48 is one site's allocation (RIPE-690), as a /16 is in IPv4."""


def _admin_source(value: str) -> str:
    """An admin source for Dask's ports: an address or CIDR block no broader than a /16 (IPv4) or /48 (IPv6).

    Service tags are refused, every one of them: ``Internet``/``Any``/``*`` are everyone; ``AzureCloud``
    (and ``AzureCloud.<region>``) is every Azure datacenter address, so every other Azure tenant's VMs;
    ``VirtualNetwork`` is the whole VNet plus every peered and VPN-connected network and any prefix a
    user-defined route names (``0.0.0.0/0`` with a default route), which is what the subnet-only rule
    exists to exclude; the others (``AzureLoadBalancer``, ``GatewayManager``, ``Storage``, ...) name
    Azure services, never an administrator. An admin's network is a block you can name; name it.
    """
    if value.strip() in {"*", "Internet", "Any"}:
        raise ValueError(f"{value!r} would open Dask's unauthenticated ports to the Internet; name your networks")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value[:80]!r} is not an address or CIDR block: service tags are refused (AzureCloud is every Azure "
            "tenant, VirtualNetwork every peered network); name your admin network's block"
        ) from None
    broadest = MAX_SOURCE_PREFIX_V4 if network.version == 4 else MAX_SOURCE_PREFIX_V6
    if network.prefixlen < broadest:
        raise ValueError(
            f"{value} holds {network.num_addresses:.3g} addresses: an admin source is at most a /{broadest} "
            f"(IPv{network.version}); name the networks you administer from"
        )
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        raise ValueError(f"{value} is an IPv4-mapped block: give the IPv4 block itself")
    return value


class NetworkSpec(Strict):
    """The VNet, subnet and NSG a ``vmcluster`` run lives in."""

    vnet_address_space: str = "10.0.0.0/16"
    subnet_prefix: str = "10.0.0.0/24"
    allowed_source_prefixes: list[Annotated[str, AfterValidator(_admin_source)]] = Field(
        default_factory=list,
        max_length=32,
        description="who else may reach Dask's ports 8786/8787 (addresses or blocks of at most a /16, IPv6 /48; "
        "no service tags); the experiment's subnet always may, no one else",
    )
    existing_vnet: str | None = Field(
        default=None, description="an existing VNet (ARM resource id, any resource group; or a name in resource_group)"
    )
    existing_subnet: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$", description="the existing VNet's subnet, by name"
    )
    existing_security_group: str | None = Field(default=None, description="an existing NSG (ARM id or name)")

    @field_validator("vnet_address_space", "subnet_prefix")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a CIDR block: {value!r} ({exc})") from None
        return value

    @model_validator(mode="after")
    def _subnet_by_name(self) -> NetworkSpec:
        if self.existing_vnet and not self.existing_subnet:
            raise ValueError("existing_vnet needs existing_subnet: the subnet is chosen by name, never the first")
        if self.existing_subnet and not self.existing_vnet:
            raise ValueError("existing_subnet needs existing_vnet (the VNet it belongs to)")
        return self

    @model_validator(mode="after")
    def _subnet_inside_vnet(self) -> NetworkSpec:
        vnet = ipaddress.ip_network(self.vnet_address_space)
        subnet = ipaddress.ip_network(self.subnet_prefix)
        if not subnet.subnet_of(vnet):  # type: ignore[arg-type]
            raise ValueError(f"subnet_prefix {subnet} is not inside vnet_address_space {vnet}")
        return self


class VMClusterCompute(ComputeSection):
    """Dask workers on Azure VMs (dask-cloudprovider ``AzureVMCluster``), the seed's MNMG example."""

    backend: Literal["vmcluster"] = "vmcluster"
    location: str
    resource_group: str
    subscription_id: str | None = Field(default=None, description="defaults to AZURE_SUBSCRIPTION_ID")
    vm_size: VmSize = Field(default=VMCLUSTER_DEFAULT_VM_SIZE, pattern=r"^[A-Za-z0-9_]{1,64}$")
    scheduler_vm_size: VmSize | None = Field(
        default=VMCLUSTER_DEFAULT_HEAD_SIZE,
        pattern=r"^[A-Za-z0-9_]{1,64}$",
        description="the head's size (scheduler and driver only: a CPU size); null: the workers' size",
    )
    n_workers: int = Field(default=2, ge=1, le=100)
    docker_image: str | None = Field(
        default=None,
        pattern=IMAGE_PATTERN,
        description="null: the deployment's project image (RAPIDS_HPO_IMAGE, by digest), else the stock RAPIDS image",
    )
    docker_args: str = Field(default=RAPIDS_DOCKER_ARGS, description="docker run options, each as --name=value")
    worker_class: str = Field(default="dask_cuda.CUDAWorker", pattern=PYTHON_NAME_PATTERN)
    worker_options: dict[str, str | int | float | bool] = Field(default_factory=_rmm_managed_memory)
    spot: bool = Field(
        default=False,
        description="workers as Azure Spot VMs (eviction policy Delete); the head node stays on-demand",
    )
    max_evictions: int = Field(default=10, ge=0, le=1000, description="Spot evictions tolerated, apart from errors")
    disk_size: int = Field(
        default=100, ge=30, le=1023, description="GB per VM (dask-cloudprovider and the VM image accept at most 1023)"
    )
    security: bool = True
    use_marketplace_image: bool = Field(default=True, description="NVIDIA's NGC VM image (marketplace plan)")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    max_node_hours: float | None = Field(default=None, gt=0, description="cost guard: cancel past this")

    @field_validator("location", "resource_group")
    @classmethod
    def _azure_name(cls, value: str) -> str:
        if not re.fullmatch(AZURE_NAME_PATTERN, value):
            raise ValueError(f"not an Azure name: {value!r}")
        return value

    @field_validator("docker_args")
    @classmethod
    def _docker_args(cls, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("docker_args must be one line")
        try:
            tokens = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"docker_args does not parse: {exc}") from None
        for token in tokens:
            if not DOCKER_ARG_PATTERN.fullmatch(token):
                raise ValueError(
                    f"docker_args: {token!r} is not a docker option in --name=value form "
                    "(letters, digits and _.:/,=@+- only)"
                )
        return value

    @field_validator("worker_options")
    @classmethod
    def _worker_options(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for key, option in value.items():
            if not OPTION_NAME_PATTERN.fullmatch(key):
                raise ValueError(f"worker_options: {key!r} is not an option name")
            if isinstance(option, str) and not SAFE_VALUE_PATTERN.fullmatch(option):
                raise ValueError(f"worker_options.{key}: {option!r} holds characters a worker option never needs")
        threads = value.get("nthreads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS_PER_GPU:
            raise ValueError(f"worker_options.nthreads: trials per GPU, an integer from 1 to {MAX_THREADS_PER_GPU}")
        return value

    @model_validator(mode="after")
    def _drivers(self) -> VMClusterCompute:
        """Sizes whose GPU the VM image cannot drive are refused before anything is billed."""
        for field_name, size in (("vm_size", self.vm_size), ("scheduler_vm_size", self.scheduler_vm_size)):
            problem = self.size_problem(size) if size else None
            if problem:
                raise ValueError(f"{field_name}: {problem}")
        return self

    def size_problem(self, vm_size: str) -> str | None:
        """NV-series GPUs need NVIDIA's GRID driver, which the NGC VM image does not promise; plain Ubuntu
        (``use_marketplace_image: false``) has no NVIDIA driver or container toolkit at all."""
        if re.match(r"^Standard_NV", vm_size, re.IGNORECASE):
            return (
                f"{vm_size} is an NV-series (visualization) size: its GPU needs NVIDIA's GRID driver, which "
                "NVIDIA's NGC VM image does not promise; use an NC- or ND-series size"
            )
        if not self.use_marketplace_image and re.match(r"^Standard_N[CD]", vm_size, re.IGNORECASE):
            return (
                "use_marketplace_image: false boots plain Ubuntu with Docker only: no NVIDIA driver or container "
                f"toolkit for the GPUs of {vm_size}; keep the NGC image for GPU sizes"
            )
        return None

    def head_size(self) -> str:
        """The head's VM size: ``scheduler_vm_size``, or the workers' when it is null."""
        return self.scheduler_vm_size or self.vm_size

    def gpu_capacity(self) -> GpuCapacity | None:
        """A ``CUDAWorker`` per GPU, each running ``worker_options.nthreads`` trials at once (default 1)."""
        per_node = gpus_per_node(self.vm_size)
        if not per_node:
            return None
        per_gpu = int(self.worker_options.get("nthreads", 1))
        gpus = self.n_workers * per_node
        return GpuCapacity(
            gpus, gpus * per_gpu, f"{gpus} GPU(s) x {per_gpu} trial(s) per GPU (worker_options.nthreads)"
        )

    def hosted_problems(self, spec: ExperimentSpec, settings: HostedSettings) -> list[Problem]:
        """A hosted deployment runs Dask only with TLS (without it, anyone who reaches the scheduler runs code),
        and, with a registry, images pinned by digest only (:meth:`image_problems`)."""
        problems = self.image_problems(settings.azure)
        if not self.security:
            problems.append(
                (("compute", "security"), "a hosted deployment requires security: true (TLS between Dask's nodes)")
            )
        return problems

    def image_problems(self, azure: AzureSettings) -> list[Problem]:
        """A deployment with a registry runs images pinned by digest only (``docker_image``, else the
        deployment's ``RAPIDS_HPO_IMAGE``, else the stock image by tag): a tag can move under a running
        experiment, a digest is what was built (:mod:`shared.backends.vmcluster.image`)."""
        reference = self.docker_image or azure.image
        if not azure.registry or (reference and DIGEST.search(reference)):
            return []
        if not reference:
            why = (
                "this deployment has a registry but names no project image (RAPIDS_HPO_IMAGE: an administrator "
                "builds it with az acr build, README: deploy); name an image by digest (<image>@sha256:<digest>)"
            )
        else:
            why = (
                f"{reference[:120]!r} is named by tag: a hosted deployment with a registry runs images pinned by "
                "digest (<image>@sha256:<digest>; az acr repository show -n <registry> --image <repo>:<tag> "
                "--query digest prints it)"
            )
        return [(("compute", "docker_image"), why)]

    def billing(self, spec: ExperimentSpec, vm_size: str | None = None, tier: Tier | None = None) -> BillingProfile:
        """Every VM bills from creation to teardown, start-up included; a worker runs a trial per GPU;
        ``spot`` buys the workers as Spot VMs while the scheduler (head) stays on demand, priced as its own
        size (a CPU size by default, :data:`VMCLUSTER_DEFAULT_HEAD_SIZE`)."""
        workers = vm_size or self.vm_size
        return BillingProfile(
            (
                NodeGroup("workers", workers, self.n_workers, tier or spec_tier(spec)),
                NodeGroup("scheduler", self.scheduler_vm_size or workers, 1),
            ),
            BillingModel.FLEET,
            region=self.location,
            startup_s=float(CLUSTER_STARTUP_ESTIMATE_S),
            trial_per_gpu=True,
        )
