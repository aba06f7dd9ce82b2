"""Creating one VM and its NIC with typed SDK models (why not dask-cloudprovider's: see :func:`create_vm`),
and reading back what exists."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.bootscript import VMPlan
from shared.errors import BackendError

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient

    from shared.backends.arm import RetrySettings

log = logging.getLogger(__name__)


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
    wait: bool = True,
) -> str:
    """Create (or update) one VM and its NIC with typed SDK models; returns its private IP.

    Our own "create one VM" instead of dask-cloudprovider's ``AzureVM.create_vm``: that passes
    snake_case dicts as request bodies, which azure-mgmt-network >= 28 / azure-mgmt-compute >= 34
    send verbatim, so ARM would get ``ip_configurations``/``hardware_profile`` where it expects
    ``properties.ipConfigurations``/``properties.hardwareProfile``. Deterministic names
    (``<vm>-nic``) make every PUT idempotent, so :func:`~shared.backends.arm.arm_call` may retry it;
    the NIC and OS disk are deleted with the VM (``deleteOption: Delete``); no public IP, ever. Boot
    diagnostics are on (managed storage): the serial console log of a VM that never boots is in the
    portal (``az vm boot-diagnostics get-boot-log``). ``wait=False`` returns once ARM accepted the VM's PUT
    (its creation goes on for minutes; an allocation failure then leaves it ``Failed``, which the caller's
    next look finds).
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
    spot: dict[str, Any] = {}
    if vm.spot:  # Spot: evicted VMs are deleted (no stopped, billed disks); pay at most the on-demand price
        spot = {"priority": "Spot", "eviction_policy": "Delete", "billing_profile": cm.BillingProfile(max_price=-1)}
    body = cm.VirtualMachine(
        location=location,
        tags=tags,
        **spot,
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
            admin_password=one_time_password(),  # required by Azure for Linux without a key; never stored
            custom_data=vm.custom_data,
        ),
        network_profile=cm.NetworkProfile(
            network_interfaces=[cm.NetworkInterfaceReference(id=nic.id, primary=True, delete_option="Delete")]
        ),
        diagnostics_profile=cm.DiagnosticsProfile(boot_diagnostics=cm.BootDiagnostics(enabled=True)),
    )

    def put_vm() -> Any:
        if not wait:  # ARM accepted the PUT: no poller (its thread would poll on after this step returned)
            return compute_client.virtual_machines.begin_create_or_update(resource_group, vm.name, body, polling=False)
        return compute_client.virtual_machines.begin_create_or_update(resource_group, vm.name, body).result()

    arm_call(f"creating virtual machine {vm.name}", put_vm, retry)
    log.info("created VM %s (%s) in %s", vm.name, vm.size, resource_group)
    address: str = nic.ip_configurations[0].private_ip_address
    return address


def get_vm(compute_client: Any, resource_group: str, name: str, retry: RetrySettings) -> Any | None:
    """The VM called ``name``, or None."""
    from shared.backends.arm import arm_call, is_not_found

    def get() -> Any | None:
        try:
            return compute_client.virtual_machines.get(resource_group, name)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    return arm_call(f"reading virtual machine {name}", get, retry)


def private_ip(network_client: Any, resource_group: str, vm: Any, retry: RetrySettings) -> str:
    """The private IP of a VM's primary NIC."""
    from azure.mgmt.core.tools import parse_resource_id

    from shared.backends.arm import arm_call

    nic_name = parse_resource_id(vm.network_profile.network_interfaces[0].id)["name"]
    nic = arm_call(
        f"reading network interface {nic_name}",
        lambda: network_client.network_interfaces.get(resource_group, nic_name),
        retry,
    )
    address: str = nic.ip_configurations[0].private_ip_address
    return address


def cluster_vms(compute_client: Any, resource_group: str, cluster_id: str, retry: RetrySettings) -> list[Any]:
    """The cluster's VMs, head and workers (found by tag)."""
    from shared.backends.arm import arm_call
    from shared.backends.vmcluster.vm_teardown import CLUSTER_ID_TAG

    vms = arm_call(
        f"listing virtual machines in resource group {resource_group}",
        lambda: list(compute_client.virtual_machines.list(resource_group)),
        retry,
    )
    return [vm for vm in vms if (vm.tags or {}).get(CLUSTER_ID_TAG) == cluster_id]


def vm_exists(compute_client: Any, resource_group: str, name: str, vms: list[Any], retry: RetrySettings) -> bool:
    """Whether VM ``name`` exists: in ``vms`` (a listing), else when looked up by name (a listing may lag)."""
    return any(vm.name == name for vm in vms) or get_vm(compute_client, resource_group, name, retry) is not None


def healthy_workers(vms: list[Any], cluster_id: str) -> list[str]:
    """Names of the worker VMs among ``vms`` (:func:`cluster_vms`) that did not fail."""
    prefix = f"dask-{cluster_id}-worker-"
    return sorted(vm.name for vm in vms if vm.name.startswith(prefix) and not failed(vm))


def delete_failed_workers(compute_client: Any, resource_group: str, vms: list[Any], cluster_id: str) -> list[str]:
    """Start deleting the cluster's worker VMs whose provisioning failed (a capacity shortage leaves the VM
    ``Failed``, holding its NIC and disk); returns their names. Not awaited: the next poll sees the rest."""
    prefix = f"dask-{cluster_id}-worker-"
    names = sorted(vm.name for vm in vms if vm.name.startswith(prefix) and failed(vm))
    return delete_workers(compute_client, resource_group, names)


def delete_workers(compute_client: Any, resource_group: str, names: list[str]) -> list[str]:
    """Start deleting worker VMs ``names`` (not awaited: a VM's delete takes minutes; its NIC and disk go
    with it); one that is gone already counts, one ARM refuses now is tried again by the next poll."""
    from shared.backends.arm import is_not_found

    for name in names:
        try:
            compute_client.virtual_machines.begin_delete(resource_group, name, polling=False)
        except Exception as exc:
            if not is_not_found(exc):
                log.warning("deleting worker VM %s: %s", name, exc)
    return names


def failed(vm: Any) -> bool:
    return str(getattr(vm, "provisioning_state", "") or "").lower() == "failed"


def one_time_password() -> str:
    return secrets.token_urlsafe(24) + "aA1!"
