"""The registry of compute backends: the one place that names them (the composition root).

Each backend lives in its own module, imported on first use (the Azure SDKs are slow to import), and is
built from what it uses (the store and the settings), never from the whole context, so ``shared.context``
depends on this package and not the other way round. Adding a backend: see CONTRIBUTING.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ports import ComputeBackend, Planner, Store


def _local(store: Store, settings: Settings) -> ComputeBackend:
    from shared.backends.local import LocalBackend

    return LocalBackend(store, settings)


def _local_planner() -> Planner:
    from shared.backends.local import LocalPlanner

    return LocalPlanner()


def _vmcluster(store: Store, settings: Settings) -> ComputeBackend:
    from shared.backends.vmcluster.backend import VMClusterBackend
    from shared.backends.vmcluster.settings import VMIdentity
    from shared.config import env

    resource_id, client_id = env("RAPIDS_HPO_VM_IDENTITY_ID"), env("RAPIDS_HPO_VM_IDENTITY_CLIENT_ID")
    identity = VMIdentity(resource_id, client_id) if resource_id and client_id else None
    return VMClusterBackend(store, settings, identity=identity)


def _vmcluster_planner() -> Planner:
    from shared.backends.vmcluster.dryrun import VMClusterPlanner

    return VMClusterPlanner()


def _azureml(store: Store, settings: Settings) -> ComputeBackend:
    from shared.backends.azureml import AzureMLBackend

    return AzureMLBackend(store, settings)


def _azureml_planner() -> Planner:
    from shared.backends.azureml import AzureMLPlanner

    return AzureMLPlanner()


@dataclass(frozen=True)
class Registration:
    """How to build one backend and its offline planner."""

    name: str
    create: Callable[[Store, Settings], ComputeBackend]
    planner: Callable[[], Planner]
    finds_orphans: bool = False
    """The backend's ``capabilities.finds_orphans``, declared here so the timer builds (and imports) only the
    backends that can find orphans (tests/conformance/test_backend.py checks the two agree)."""


REGISTRY: dict[str, Registration] = {
    r.name: r
    for r in (
        Registration("local", _local, _local_planner),
        Registration("vmcluster", _vmcluster, _vmcluster_planner, finds_orphans=True),
        Registration("azureml", _azureml, _azureml_planner),
    )
}
BACKENDS = tuple(REGISTRY)
ORPHAN_FINDERS = tuple(r.name for r in REGISTRY.values() if r.finds_orphans)
"""The backends the timer's orphan sweep builds; the others are never imported by it."""


def _registration(name: str) -> Registration:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown compute backend {name!r}: expected one of {', '.join(BACKENDS)}") from None


def create_backend(name: str, store: Store, settings: Settings) -> ComputeBackend:
    """Build the backend called ``name`` over ``store`` with ``settings``."""
    return _registration(name).create(store, settings)


def get_planner(name: str) -> Planner:
    """The offline planner (dry run, description, billing profile) of the backend called ``name``."""
    return _registration(name).planner()
