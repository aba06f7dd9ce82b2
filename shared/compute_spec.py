"""The ``compute`` section of an experiment spec: one model per backend, chosen by ``backend``.

Kept apart from ``shared.spec`` so the backends import only what they configure.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

RAPIDS_IMAGE = "rapidsai/base:26.10-cuda12.9-py3.12"
"""The default RAPIDS container image for GPU workers and AzureML trials."""

AZUREML_DEFAULT_VM_SIZE = "Standard_NC4as_T4_v3"
"""One T4 (16 GB) per node: the cheapest current size RAPIDS runs on, one sweep trial per node."""
VMCLUSTER_DEFAULT_VM_SIZE = "Standard_NC8as_T4_v3"
"""One T4 per Dask worker VM with 56 GB of host memory for loading and shuffling the data."""


def _usable_vm_size(value: str) -> str:
    """Reject a size Azure retired (naming its replacement); unknown sizes pass (see ``size_warnings``)."""
    from shared.cost.catalogue import load_catalogue

    error = load_catalogue().check(value).error
    if error:
        raise ValueError(error)
    return value


VmSize = Annotated[str, AfterValidator(_usable_vm_size)]
"""An Azure VM size name, checked against the GPU size catalogue's retirements."""


def _rmm_managed_memory() -> dict[str, str | int | float | bool]:
    return {"rmm-managed-memory": True}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalCompute(_Strict):
    """Trials as tasks on a Dask LocalCluster beside the control plane (never in a hosted deployment)."""

    backend: Literal["local"] = "local"
    n_workers: int = Field(default=2, ge=1, le=256, description="LocalCluster worker processes")
    threads_per_worker: int = Field(default=1, ge=1, le=64)
    memory_limit: str = Field(default="auto", description="per worker, Dask syntax ('4GiB', 'auto')")
    equivalent_vm_size: VmSize | None = Field(
        default=None,
        description="the Azure size each worker stands for: the cost ledger prices the run as that (an estimate)",
    )


class NetworkSpec(_Strict):
    """The VNet, subnet and NSG a ``vmcluster`` run lives in."""

    vnet_address_space: str = "10.0.0.0/16"
    subnet_prefix: str = "10.0.0.0/24"
    allowed_source_prefixes: list[str] = Field(
        default_factory=list,
        description="who may reach Dask's ports 8786/8787; empty = only the VNet itself (VirtualNetwork tag)",
    )
    existing_vnet: str | None = Field(default=None, description="reuse this VNet instead of creating one")
    existing_subnet: str | None = None
    existing_security_group: str | None = None

    @field_validator("vnet_address_space", "subnet_prefix")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a CIDR block: {value!r} ({exc})") from None
        return value

    @field_validator("allowed_source_prefixes")
    @classmethod
    def _prefixes(cls, values: list[str]) -> list[str]:
        for value in values:
            if value in {"*", "0.0.0.0/0", "Internet", "Any"}:
                raise ValueError(
                    f"{value!r} would open Dask's unauthenticated ports to the Internet; name your networks"
                )
            if value[:1].isdigit():
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError as exc:
                    raise ValueError(f"not an address prefix: {value!r} ({exc})") from None
        return values

    @model_validator(mode="after")
    def _subnet_inside_vnet(self) -> NetworkSpec:
        vnet = ipaddress.ip_network(self.vnet_address_space)
        subnet = ipaddress.ip_network(self.subnet_prefix)
        if not subnet.subnet_of(vnet):  # type: ignore[arg-type]
            raise ValueError(f"subnet_prefix {subnet} is not inside vnet_address_space {vnet}")
        return self


class VMClusterCompute(_Strict):
    """Dask workers on Azure VMs (dask-cloudprovider ``AzureVMCluster``), the seed's MNMG example."""

    backend: Literal["vmcluster"] = "vmcluster"
    location: str
    resource_group: str
    subscription_id: str | None = Field(default=None, description="defaults to AZURE_SUBSCRIPTION_ID")
    vm_size: VmSize = VMCLUSTER_DEFAULT_VM_SIZE
    scheduler_vm_size: VmSize | None = None
    n_workers: int = Field(default=2, ge=1, le=100)
    docker_image: str = RAPIDS_IMAGE
    docker_args: str = "--shm-size=256m"
    worker_class: str = "dask_cuda.CUDAWorker"
    worker_options: dict[str, str | int | float | bool] = Field(default_factory=_rmm_managed_memory)
    disk_size: int = Field(
        default=100, ge=30, le=1023, description="GB per VM (dask-cloudprovider and the VM image accept at most 1023)"
    )
    security: bool = True
    use_marketplace_image: bool = Field(default=True, description="NVIDIA's NGC VM image (marketplace plan)")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    max_node_hours: float | None = Field(default=None, gt=0, description="cost guard: cancel past this")


class AzureMLCompute(_Strict):
    """One AzureML sweep job on an AmlCompute GPU cluster, the seed's HPO-RAPIDS example."""

    backend: Literal["azureml"] = "azureml"
    subscription_id: str | None = Field(default=None, description="defaults to AZURE_SUBSCRIPTION_ID")
    resource_group: str | None = Field(default=None, description="defaults to AZURE_RESOURCE_GROUP")
    workspace: str | None = Field(default=None, description="defaults to AZUREML_WORKSPACE")
    compute_name: str = Field(default="rapids-gpu", pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,23}$")
    vm_size: VmSize = AZUREML_DEFAULT_VM_SIZE
    min_instances: int = Field(default=0, ge=0)
    max_instances: int = Field(default=5, ge=1, le=100)
    idle_time_before_scale_down: int = Field(default=300, ge=0, description="seconds")
    low_priority: bool = False
    environment_image: str = RAPIDS_IMAGE
    experiment_name: str | None = Field(default=None, description="AzureML experiment; defaults to spec name")
    max_node_hours: float | None = Field(default=None, gt=0, description="cost guard: cancel past this")

    @model_validator(mode="after")
    def _instances(self) -> AzureMLCompute:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) exceeds max_instances ({self.max_instances})")
        return self


ComputeSpec = Annotated[LocalCompute | VMClusterCompute | AzureMLCompute, Field(discriminator="backend")]
