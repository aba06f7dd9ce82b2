"""Which container image the VMs run, from where, and why (``compute.docker_image``, the deployment's image).

One project image, built once from ``gpu_jobs/Dockerfile`` into the deployment's registry (``az acr build``,
README: deploy) and named by digest in ``RAPIDS_HPO_IMAGE``, is what a run gets unless its spec names
another: the stock RAPIDS image stays an option (``docker_image``). A digest is what was built and
reviewed; a tag can move under a running experiment (a worker replaced mid-run would pull another image).

The rules, decided here:

* the spec names an image (``docker_image``, null by default): that image; from the deployment's registry it is pulled
  with the experiment's VM identity (AcrPull, :mod:`.identity`), from anywhere else anonymously;
* else the deployment's image (``RAPIDS_HPO_IMAGE``), from its registry with that identity;
* else the stock RAPIDS image, by tag, from Docker Hub.

The project image carries the cluster's Python packages, pinned (``gpu_jobs/Dockerfile``): its containers start
with no ``pip install``. Any other image gets them from ``EXTRA_PIP_PACKAGES``, which the RAPIDS image's
entrypoint installs at every container start (:func:`~shared.backends.vmcluster.settings.pip_env`).

A hosted deployment with a registry (``RAPIDS_HPO_REGISTRY``) runs only images pinned by digest: a tag-only
image, the stock default included, is a 422 naming ``compute.docker_image``
(:meth:`~shared.backends.vmcluster.section.VMClusterCompute.image_problems`, on the spec's floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.backends.vmcluster.section import DIGEST
from shared.compute_spec import RAPIDS_IMAGE

if TYPE_CHECKING:
    from shared.backends.vmcluster.section import VMClusterCompute
    from shared.config import AzureSettings

DOCKER_HUB = "docker.io"
PROJECT_REPOSITORY = "rapids-hpo"
"""The repository the deploy steps build ``gpu_jobs/Dockerfile`` into (``az acr build --image rapids-hpo:...``)."""


def registry_of(image: str) -> str:
    """The registry host of an image reference, as Docker reads it: the first path component when it has a
    ``.`` or a ``:`` or is ``localhost``, else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return DOCKER_HUB


def repository_of(image: str) -> str:
    """The repository path without registry, tag or digest (``rapids-hpo`` of ``<server>/rapids-hpo@sha256:...``)."""
    rest = image.split("@", 1)[0]
    if registry_of(image) != DOCKER_HUB:
        rest = rest.split("/", 1)[1]
    name, _, tag = rest.rpartition(":")
    return name if name and "/" not in tag else rest


@dataclass(frozen=True)
class ImageChoice:
    """The image a run's VMs pull, and what the plan says of it."""

    reference: str
    source: str
    """``spec``, ``deployment`` or ``default``."""
    registry: str = ""
    """The deployment's registry when the VMs pull from it with their identity (AcrPull), else empty."""

    @property
    def pinned(self) -> bool:
        return DIGEST.search(self.reference) is not None

    @property
    def is_project_image(self) -> bool:
        """Built from ``gpu_jobs/Dockerfile``: repository ``rapids-hpo`` of the deployment's registry, by digest.
        Anything else (a tag could have been re-pushed, another repository holds another build) is treated
        as the stock image: it gets its packages at start, slower but never missing."""
        return bool(self.registry) and self.pinned and repository_of(self.reference) == PROJECT_REPOSITORY

    def describe(self) -> str:
        """One line for ``rapids-hpo plan``: which image, by tag or digest, from where, and why."""
        how = "by digest" if self.pinned else "by tag (a tag can move; a digest cannot)"
        where = (
            f"from the deployment's registry {self.registry}, pulled as the experiment's VM identity (AcrPull)"
            if self.registry
            else f"from {registry_of(self.reference)}, pulled anonymously"
        )
        why = {
            "spec": "compute.docker_image names it",
            "deployment": "the deployment's project image (RAPIDS_HPO_IMAGE, built from gpu_jobs/Dockerfile)",
            "default": "the stock RAPIDS image, as no project image is named (RAPIDS_HPO_IMAGE)",
        }.get(self.source, self.source)
        packages = (
            "it carries the cluster's packages (no pip install at start)"
            if self.is_project_image
            else "its entrypoint pip-installs the cluster's packages at every container start (EXTRA_PIP_PACKAGES)"
        )
        return f"{self.reference}, {how}, {where}: {why}; {packages}"


def resolve_image(compute: VMClusterCompute, azure: AzureSettings) -> ImageChoice:
    """The image a run's VMs pull (the rules in the module docstring)."""
    if compute.docker_image:
        reference, source = compute.docker_image, "spec"
    elif azure.image:
        reference, source = azure.image, "deployment"
    else:
        reference, source = RAPIDS_IMAGE, "default"
    ours = bool(azure.registry) and registry_of(reference) == azure.registry.lower()
    return ImageChoice(reference, source, azure.registry.lower() if ours else "")
