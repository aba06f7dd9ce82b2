"""One head or worker VM as it will boot: its size, image, and boot script (which holds no secret).

The image is the one fixed at provision (``VMClusterHandle.image``, :mod:`.image`): a worker replaced mid-run
pulls what the head pulled, whatever the deployment's setting says meanwhile. From the deployment's
registry, the boot script signs Docker in as the experiment's VM identity before each pull
(``boot.py --registry-login``), and ``node.json`` names the registry and that identity's client id. The
project image starts with no ``pip install``: it carries the packages (:func:`.settings.pip_env`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpu_jobs.exporters import compute_packages
from shared.backends.vmcluster.bootscript import VMPlan, docker_command, encode_custom_data, render_cloud_init
from shared.backends.vmcluster.settings import (
    NGC_MARKETPLACE_PLAN,
    NGC_VM_IMAGE,
    UBUNTU_VM_IMAGE,
    check_no_secrets,
    cluster_env,
    is_gpu_size,
    pip_env,
)
from shared.errors import BackendError

if TYPE_CHECKING:
    from shared.backends.vmcluster.backend import VMClusterBackend
    from shared.backends.vmcluster.handle import VMClusterHandle
    from shared.backends.vmcluster.section import VMClusterCompute
    from shared.records import ExperimentRecord


def plan_vm(
    backend: VMClusterBackend,
    record: ExperimentRecord,
    compute: VMClusterCompute,
    handle: VMClusterHandle,
    name: str,
    node: dict[str, Any],
    *,
    head: bool,
) -> VMPlan:
    """A head or worker VM with its boot script: the node reaches the area (and the registry) as the
    experiment's VM identity and reads its TLS key there."""
    document = backend._credentials(record.id) or {}
    size = compute.head_size() if head else compute.vm_size
    credential = backend._node_credential(record, handle)
    choice = handle.image_choice(compute, backend.settings.azure)
    exporting = compute_packages(backend._telemetry(record).environment()) if head else ()  # the driver exports
    env = {**cluster_env(experiment_id=record.id), **pip_env(choice, exporting)}
    check_no_secrets(env)
    image, registry = choice.reference, choice.registry
    node = {"experiment_id": record.id, "credential": credential, "tls": bool(document.get("tls")), "vm": name, **node}
    if registry:
        if handle.identity is None or not handle.identity.registry_assignment_id:
            raise BackendError(
                f"the image {image} comes from the deployment's registry, but experiment {record.id}'s VM identity "
                "holds no AcrPull there (provision did not assign it)",
                retryable=False,
            )
        node["registry"] = {"server": registry, "client_id": handle.identity.client_id}
    argv = docker_command(docker_image=image, docker_args=compute.docker_args, gpus=is_gpu_size(size), env=env)
    cloud_init = render_cloud_init(
        node=node,
        image=image,
        docker_argv=argv,
        install_docker=not compute.use_marketplace_image,
        registry_login=bool(registry),
    )
    market = compute.use_marketplace_image
    return VMPlan(
        name=name,
        size=size,
        custom_data=encode_custom_data(cloud_init, name),
        image=dict(NGC_VM_IMAGE if market else UBUNTU_VM_IMAGE),
        plan=dict(NGC_MARKETPLACE_PLAN) if market else None,
        disk_size=compute.disk_size,
        spot=compute.spot and not head,  # the head (scheduler + driver) stays on-demand
    )
