"""The ``local`` backend's ``compute`` section: what a spec may ask of a Dask LocalCluster here."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from shared.compute_spec import ComputeSection, VmSize
from shared.cost.billing import BillingModel, BillingProfile, NodeGroup, Tier

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec


class LocalCompute(ComputeSection):
    """Trials as tasks on a Dask LocalCluster beside the control plane (never in a hosted deployment)."""

    runs_on_control_plane: ClassVar[bool] = True

    backend: Literal["local"] = "local"
    n_workers: int = Field(default=2, ge=1, le=256, description="LocalCluster worker processes")
    threads_per_worker: int = Field(default=1, ge=1, le=64)
    memory_limit: str = Field(default="auto", description="per worker, Dask syntax ('4GiB', 'auto')")
    equivalent_vm_size: VmSize | None = Field(
        default=None,
        description="the Azure size each worker stands for: the cost ledger prices the run as that (an estimate)",
    )

    def billing(self, spec: ExperimentSpec, vm_size: str | None = None, tier: Tier | None = None) -> BillingProfile:
        """Nothing is billed; the workers are priced as ``equivalent_vm_size`` for the whole run (an estimate)."""
        workers = NodeGroup("local workers", vm_size or self.equivalent_vm_size, self.n_workers, tier or Tier.PAYG)
        return BillingProfile(
            (workers,),
            BillingModel.FLEET,
            billed=False,
            unpriced_hint="set compute.equivalent_vm_size to the Azure size the local workers stand for",
        )
