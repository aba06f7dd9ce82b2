"""Compute backends, one module each, imported lazily by name (the Azure SDKs are slow to import).

A backend is built from what it uses (the store and the settings), never from the whole context, so
``shared.context`` depends on this package and not the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ports import ComputeBackend, Store

BACKENDS = ("local", "vmcluster", "azureml")


def create_backend(name: str, store: Store, settings: Settings) -> ComputeBackend:
    """Build the backend called ``name`` over ``store`` with ``settings``."""
    if name == "local":
        from shared.backends.local import LocalBackend

        return LocalBackend(store, settings)
    if name == "vmcluster":
        from shared.backends.vmcluster import VMClusterBackend, VMIdentity
        from shared.config import env

        resource_id, client_id = env("RAPIDS_HPO_VM_IDENTITY_ID"), env("RAPIDS_HPO_VM_IDENTITY_CLIENT_ID")
        identity = VMIdentity(resource_id, client_id) if resource_id and client_id else None
        return VMClusterBackend(store, settings, identity=identity)
    if name == "azureml":
        from shared.backends.azureml import AzureMLBackend

        return AzureMLBackend(store, settings)
    raise ValueError(f"unknown compute backend {name!r}: expected one of {', '.join(BACKENDS)}")
