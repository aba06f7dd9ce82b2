"""What every backend's ``compute`` section is made of: the :class:`ComputeSection` base and its kit.

Each backend declares its own section in its package (``shared/backends/<name>/section.py``); the
registry (:mod:`shared.backends`) makes the spec's ``compute`` union of them. This module names no backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Protocol, TypeVar, get_args

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

from shared.cost.billing import BillingProfile, Tier

if TYPE_CHECKING:
    from shared.config import AzureMLSettings, AzureSettings
    from shared.spec import ExperimentSpec


class HostedSettings(Protocol):
    """What a section's hosted rules may read of the deployment (``SpecPolicy`` carries it)."""

    @property
    def azure(self) -> AzureSettings: ...

    @property
    def azureml(self) -> AzureMLSettings: ...


RAPIDS_IMAGE = "rapidsai/base:26.10-cuda12-py3.12"
"""The default RAPIDS container image for GPU workers and AzureML trials. Since RAPIDS 25.12 a tag names
the CUDA major only (``cuda12``, not ``cuda12.9``: rapidsai/docker's "Note on CUDA versioning")."""
RAPIDS_DOCKER_ARGS = "--shm-size=1g --ulimit=memlock=-1 --ulimit=stack=67108864"
"""RAPIDS' recommended ``docker run`` options: Dask and UCX need more shared memory than Docker's 64 MB."""


class _CatalogueSize:
    """Marks a field that names an Azure VM size (:data:`VmSize`)."""


CATALOGUE_SIZE = _CatalogueSize()


def _names_a_size(info: FieldInfo) -> bool:
    """The field is a :data:`VmSize` (optional or not)."""
    if CATALOGUE_SIZE in info.metadata:
        return True
    return any(CATALOGUE_SIZE in getattr(arg, "__metadata__", ()) for arg in get_args(info.annotation))


VmSize = Annotated[str, CATALOGUE_SIZE]
"""An Azure VM size name. Admission (:func:`shared.spec.admit`, at the edge only) refuses a size the size
catalogue retired; a stored spec is never checked again, so a retirement mid-run stops no run."""


class Strict(BaseModel):
    """A spec model: unknown keys are refused, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Problem = tuple[tuple[str, ...], str]
"""A rule a spec breaks: the field's path and why."""


@dataclass(frozen=True)
class GpuCapacity:
    """The GPUs a run's compute holds at once and how many trials keep all of them busy."""

    gpus: int
    trials_at_once: int
    """The concurrency default (``limits.max_concurrent_trials`` when the spec leaves it out)."""
    detail: str
    """How the figure comes about, in words (for the warning)."""


def gpus_per_node(vm_size: str) -> int:
    """GPUs of a catalogued size (0 for a size the catalogue does not know: no capacity is claimed)."""
    from shared.cost.catalogue import load_catalogue

    size = load_catalogue().size(vm_size)
    return size.gpus if size is not None else 0


class ComputeSection(Strict):
    """What every backend's section declares beside its settings: the spec features its backend serves.

    The spec's cross-section rules read these, never a backend's name."""

    reads_azureml_data: ClassVar[bool] = False
    """``dataset.uri: azureml:...`` (an AzureML data asset) is read by the compute itself."""
    registers_models: ClassVar[bool] = False
    """``output.register_model``: the best model is registered in a model registry the backend reaches."""
    runs_on_control_plane: ClassVar[bool] = False
    """Trials run on the control plane's own host: a hosted deployment refuses the backend."""
    runs_our_search: ClassVar[bool] = True
    """Our HPO driver (Optuna) runs the search, so every sampler and policy of ``shared.spec.search_table``
    is served; False: the backend's own service searches, with the table's AzureML forms only."""

    backend: str
    """The section's tag: each backend's section narrows it to ``Literal["<name>"]`` with that default."""

    def spec_problems(self, spec: ExperimentSpec) -> list[Problem]:
        """This backend's rules on the rest of the spec (``[]``: none)."""
        return []

    def vm_sizes(self) -> dict[str, str]:
        """The sizes this section names, by field (the fields typed :data:`VmSize`; admission checks each)."""
        fields = type(self).model_fields
        named = {name: getattr(self, name) for name, info in fields.items() if _names_a_size(info)}
        return {name: size for name, size in named.items() if size}

    def gpu_capacity(self) -> GpuCapacity | None:
        """The GPUs the compute holds and the trials that keep them busy; None without GPUs (or unknown)."""
        return None

    def size_problem(self, vm_size: str) -> str | None:
        """Why this backend cannot run its trials on ``vm_size`` (None: it can); the plan compares only
        sizes it can."""
        return None

    def hosted_problems(self, spec: ExperimentSpec, settings: HostedSettings) -> list[Problem]:
        """What a hosted deployment refuses in this section, given the rest of ``spec`` and the deployment's
        ``settings`` (paths from the spec's root; ``[]``: none)."""
        return []

    def billing(self, spec: ExperimentSpec, vm_size: str | None = None, tier: Tier | None = None) -> BillingProfile:
        """How a run of ``spec`` bills (the one node-hours rule the plan, the ledger, the budget and the cost
        guard read); ``vm_size``/``tier`` replace the trial nodes' (the plan's comparison of sizes)."""
        raise NotImplementedError(f"the {type(self).__name__} section declares no billing")


SectionT = TypeVar("SectionT", bound=ComputeSection)


def compute_section(spec: ExperimentSpec, kind: type[SectionT]) -> SectionT:
    """The spec's ``compute`` section, which must be a ``kind`` (ValueError naming both backends otherwise)."""
    if not isinstance(spec.compute, kind):
        wanted = kind.model_fields["backend"].default
        raise ValueError(f"the spec's compute.backend is {spec.compute.backend!r}, not {wanted!r}")
    return spec.compute
