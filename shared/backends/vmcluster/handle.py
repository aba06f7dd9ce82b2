"""The vmcluster backend's typed handle: what it knows of one experiment's cluster, kept in the store.

It lives in ``ExperimentRecord.backend_state`` as JSON. Keys it does not know (a record written by an
older version) are ignored on reading and dropped when the state machine merges an update
(``shared.ports.merge_handle``); each backend call reports only the fields it changed
(``shared.ports.handle_changes``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.backends.area import AreaHandle
from shared.backends.vmcluster.image import ImageChoice, resolve_image
from shared.compute_report import ComputeReport
from shared.ports import BackendHandle
from shared.records import utcnow

if TYPE_CHECKING:
    from shared.backends.vmcluster.section import VMClusterCompute
    from shared.config import AzureSettings


class NetworkHandle(BaseModel):
    """What :func:`ensure_network` provisioned; JSON-able, so the control plane can store it."""

    model_config = ConfigDict(frozen=True)

    resource_group: str
    location: str
    experiment_id: str
    vnet_name: str
    vnet_id: str
    subnet_name: str
    subnet_id: str
    nsg_name: str
    nsg_id: str
    created: list[str]
    """ARM ids of the resources this experiment created (and so may delete), in creation order;
    a resource found by name that carries this experiment's tag counts (an earlier attempt made it)."""


class IdentityHandle(BaseModel):
    """The experiment's VM identity and its role assignments (ARM ids; the client id is no secret):
    :mod:`shared.backends.vmcluster.identity`."""

    model_config = ConfigDict(frozen=True)

    resource_id: str
    client_id: str
    principal_id: str
    role_assignment_id: str
    registry_assignment_id: str | None = None
    """AcrPull on the deployment's registry, when the run's image is pulled from there."""


class VMClusterHandle(BackendHandle, AreaHandle):
    """One cluster's state: network, container, VMs, the driver's last sign of life, what went wrong."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["vmcluster"] = "vmcluster"
    network: NetworkHandle | None = Field(default=None, description="set by provision")
    identity: IdentityHandle | None = Field(default=None, description="the VMs' own identity, set by provision")
    image: str | None = Field(default=None, description="the image every VM pulls, fixed at provision")
    image_registry: str | None = Field(default=None, description="the deployment's registry it comes from, if so")
    cluster_id: str | None = Field(default=None, description="8 hex digits, in VM names and tags")
    scheduler_vm: str | None = None
    scheduler_address: str | None = Field(default=None, description="tls://<head private ip>:<port>")
    submitted_at: datetime | None = None
    n_workers: int = 0
    workers_created: bool = False
    evictions: int = Field(default=0, ge=0, description="worker VMs lost (Spot evictions), each replaced")
    boot_replaced: list[str] = Field(
        default_factory=list, description="worker VMs deleted and replaced because their boot note was final"
    )
    heartbeat_at: datetime | None = Field(default=None, description="the driver's last heartbeat")
    last_error: str | None = None

    def compute_report(self) -> ComputeReport:
        return ComputeReport(evictions=self.evictions, heartbeat_at=self.heartbeat_at)

    @classmethod
    def of(cls, backend_state: dict[str, Any]) -> VMClusterHandle:
        """The handle inside a record's ``backend_state`` (empty for a new experiment)."""
        return cls.model_validate(backend_state or {})

    def image_choice(self, compute: VMClusterCompute, azure: AzureSettings) -> ImageChoice:
        """The image fixed at provision, or (a redelivered provision, a new run) the one :mod:`.image` chooses."""
        if self.image:
            return ImageChoice(self.image, "fixed at provision", self.image_registry or "")
        return resolve_image(compute, azure)

    @property
    def submitted(self) -> bool:
        return bool(self.scheduler_address and self.cluster_id)

    def seconds_since_submit(self) -> float:
        return (utcnow() - self.submitted_at).total_seconds() if self.submitted_at else 0.0

    def seconds_silent(self) -> float:
        """Seconds since the driver's last heartbeat (0 before the first)."""
        return (utcnow() - self.heartbeat_at).total_seconds() if self.heartbeat_at else 0.0
