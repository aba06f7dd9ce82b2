"""What one deployment may touch in its AzureML workspace, so a caller cannot use the control plane as a deputy.

The control plane's identity can create clusters, submit jobs and register models in the workspace. In hosted
mode a spec therefore never chooses where or with what those act:

* **the workspace** is the deployment's (``AZURE_SUBSCRIPTION_ID``, ``AZURE_RESOURCE_GROUP``,
  ``AZUREML_WORKSPACE``): ``compute.subscription_id``/``resource_group``/``workspace`` are refused;
* **clusters**: ``compute.compute_name`` may name a cluster this deployment created (tagged with its
  ``RAPIDS_HPO_INSTANCE_ID``) or one on ``AZUREML_COMPUTE_ALLOWLIST``; another existing cluster (and the
  identity it runs with) is refused when the backend finds it (:func:`cluster_problem`);
* **models**: ``output.register_model.name`` must start with ``AZUREML_MODEL_PREFIX`` (default ``rapids-hpo-``),
  and a new version is never added to a model whose existing versions this deployment did not register
  (:func:`model_problem`): whoever loads "latest" of someone else's model would run this caller's output;
* **images**: ``compute.environment_image`` must match ``AZUREML_IMAGE_PATTERN`` (default: the RAPIDS images on
  Docker Hub and NGC).

Intake checks (``AzureMLCompute.hosted_problems``) are 422s naming the field; the two that need the workspace fail the
experiment with a reason naming the field. This module imports no Azure SDK (the API validates with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.config import AzureMLSettings, AzureSettings

TAG_INSTANCE = "rapids-hpo.instance"
"""Tag on every cluster and model version a deployment creates: its ``RAPIDS_HPO_INSTANCE_ID``."""
DEFAULT_MODEL_PREFIX = "rapids-hpo-"
DEFAULT_IMAGE_PATTERN = (
    r"(docker\.io/)?rapidsai/[a-z0-9-]+:[A-Za-z0-9._-]+|nvcr\.io/nvidia/rapidsai/[a-z0-9-]+:[A-Za-z0-9._-]+"
)


@dataclass(frozen=True)
class AzureMLScope:
    """The deployment's AzureML scope, read from its app settings (see the module docstring)."""

    instance_id: str = ""
    compute_allowlist: tuple[str, ...] = ()
    model_prefix: str = DEFAULT_MODEL_PREFIX
    image_pattern: str = DEFAULT_IMAGE_PATTERN

    @classmethod
    def of(cls, azure: AzureSettings, azureml: AzureMLSettings) -> AzureMLScope:
        """The deployment's scope, from its settings (read once at the edge)."""
        return cls(
            instance_id=azure.instance_id,
            compute_allowlist=azureml.compute_allowlist,
            model_prefix=azureml.model_prefix or DEFAULT_MODEL_PREFIX,
            image_pattern=azureml.image_pattern or DEFAULT_IMAGE_PATTERN,
        )

    def tags(self) -> dict[str, str]:
        """What this deployment tags its clusters and model versions with."""
        return {TAG_INSTANCE: self.instance_id} if self.instance_id else {}


def cluster_problem(name: str, tags: Mapping[str, str], scope: AzureMLScope) -> str | None:
    """Why an existing cluster ``name`` (with ``tags``) may not run this deployment's jobs, or None."""
    if name in scope.compute_allowlist or (scope.instance_id and tags.get(TAG_INSTANCE) == scope.instance_id):
        return None
    return (
        f"compute.compute_name: AmlCompute {name} exists and was not created by this deployment (no "
        f"{TAG_INSTANCE} tag of {scope.instance_id or 'this deployment'}) nor is it on AZUREML_COMPUTE_ALLOWLIST: "
        "choose another compute_name"
    )


def model_problem(name: str, existing_tags: Sequence[Mapping[str, str]], scope: AzureMLScope) -> str | None:
    """Why a new version of model ``name`` may not be registered (its versions' tags given), or None."""
    foreign = [tags for tags in existing_tags if not scope.instance_id or tags.get(TAG_INSTANCE) != scope.instance_id]
    if not foreign:
        return None
    return (
        f"output.register_model.name: model {name} has {len(foreign)} version(s) this deployment did not register: "
        "a new version would become its latest; choose another name"
    )
