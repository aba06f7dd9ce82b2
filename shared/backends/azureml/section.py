"""The ``azureml`` backend's ``compute`` section: the AmlCompute cluster and workspace a sweep runs on."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from shared.compute_spec import (
    RAPIDS_IMAGE,
    ComputeSection,
    GpuCapacity,
    HostedSettings,
    Problem,
    VmSize,
    gpus_per_node,
)
from shared.cost.billing import BillingModel, BillingProfile, NodeGroup, Tier, spec_tier

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

AZUREML_DEFAULT_VM_SIZE = "Standard_NC4as_T4_v3"
"""One T4 (16 GB) per node: the cheapest current size RAPIDS runs on, one sweep trial per node."""
AZUREML_MAX_TRIALS = 1000
"""The most trials one AzureML sweep job runs (its limits' max_total_trials); our own search runs up to the
spec's cap (10,000)."""


class AzureMLCompute(ComputeSection):
    """One AzureML sweep job on an AmlCompute GPU cluster, the seed's HPO-RAPIDS example."""

    reads_azureml_data: ClassVar[bool] = True
    registers_models: ClassVar[bool] = True
    runs_our_search: ClassVar[bool] = False

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

    def gpu_capacity(self) -> GpuCapacity | None:
        """A sweep trial holds one node: ``max_instances`` trials at once (a node's other GPUs stay idle)."""
        per_node = gpus_per_node(self.vm_size)
        if not per_node:
            return None
        detail = f"max_instances {self.max_instances}, one trial per node of {per_node} GPU(s)"
        return GpuCapacity(self.max_instances * per_node, self.max_instances, detail)

    def nodes_held(self, spec: ExperimentSpec) -> int:
        """Nodes a sweep holds at once: each trial holds one, at most ``max_concurrent_trials`` and
        ``max_instances`` of them."""
        return min(spec.limits.max_concurrent_trials, spec.effective_total_trials(), self.max_instances)

    def billing(self, spec: ExperimentSpec, vm_size: str | None = None, tier: Tier | None = None) -> BillingProfile:
        """Each trial holds one node of the autoscaling cluster (:meth:`nodes_held` at most); a node waits
        ``idle_time_before_scale_down`` after its last trial; ``min_instances`` never leave."""
        nodes = NodeGroup("trial nodes", vm_size or self.vm_size, self.nodes_held(spec), tier or spec_tier(spec))
        return BillingProfile(
            (nodes,),
            BillingModel.AUTOSCALE,
            idle_tail_s=float(self.idle_time_before_scale_down),
            always_on=self.min_instances,
            cheap_tier=Tier.LOW_PRIORITY,
        )

    def hosted_problems(self, spec: ExperimentSpec, settings: HostedSettings) -> list[Problem]:
        """The deployment's own workspace, model namespace and image pattern (:mod:`.scope`)."""
        from shared.backends.azureml.scope import AzureMLScope

        scope = AzureMLScope.of(settings.azure, settings.azureml)
        problems: list[Problem] = [
            (("compute", name), "a hosted deployment runs AzureML jobs in its own workspace only: leave it unset")
            for name in ("subscription_id", "resource_group", "workspace")
            if getattr(self, name) is not None
        ]
        if not re.fullmatch(scope.image_pattern, self.environment_image):
            problems.append(
                (
                    ("compute", "environment_image"),
                    f"images must match this deployment's pattern {scope.image_pattern!r}",
                )
            )
        register = spec.output.register_model
        if register is not None and not register.name.startswith(scope.model_prefix):
            problems.append(
                (
                    ("output", "register_model", "name"),
                    f"registered model names must start with this deployment's prefix {scope.model_prefix!r}",
                )
            )
        return problems

    def spec_problems(self, spec: ExperimentSpec) -> list[Problem]:
        from shared.backends import backends_where
        from shared.spec.search_table import azureml_problems

        ours = backends_where(lambda section: section.runs_our_search)
        problems = azureml_problems(spec, ours)
        if spec.limits.max_total_trials > AZUREML_MAX_TRIALS:
            limit = f"an AzureML sweep job runs at most {AZUREML_MAX_TRIALS} trials"
            problems.append((("limits", "max_total_trials"), f"{limit} (the {' and '.join(ours)} backends run more)"))
        if not problems and spec.sampling_algorithm.type == "bayesian" and spec.early_termination is not None:
            others = " and ".join(ours)
            problems.append(
                (
                    ("early_termination",),
                    "AzureML's bayesian sampling does not support early termination: remove early_termination "
                    f"or use random sampling (the {others} backends allow it)",
                )
            )
        for field, what in (("also", "one primary metric"), ("constraints", "no constraints")):
            if getattr(spec.objective, field):
                problems.append(
                    (
                        ("objective", field),
                        f"an AzureML sweep optimizes {what}: remove objective.{field} "
                        f"(the {' and '.join(ours)} backends run several objectives and constraints)",
                    )
                )
        if spec.warm_start is not None:
            problems.append(
                (
                    ("warm_start",),
                    "an AzureML sweep cannot be seeded with earlier trials: remove warm_start "
                    f"(the {' and '.join(ours)} backends run our driver, which can)",
                )
            )
        if spec.trial.report_every is not None:
            problems.append(
                (
                    ("trial", "report_every"),
                    "an AzureML sweep's trials report once per CV fold (the step AzureML's policies evaluate): "
                    f"remove report_every (the {' and '.join(ours)} backends report every N rounds or trees)",
                )
            )
        if spec.sampling_algorithm.startup_trials is not None:
            problems.append(
                (
                    ("sampling_algorithm", "startup_trials"),
                    "an AzureML sweep's Bayesian sampling sets its own startup: remove startup_trials "
                    f"(the {' and '.join(ours)} backends run Optuna's samplers, which take it)",
                )
            )
        if spec.trial.fidelity != "rounds":
            problems.append(
                (
                    ("trial", "fidelity"),
                    "an AzureML sweep's trials train each fold once on all its rows: remove fidelity "
                    f"(the {' and '.join(ours)} backends refit on growing shares of the rows)",
                )
            )
        return problems
