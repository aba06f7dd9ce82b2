"""Compute backends, one module each, imported lazily by name (the Azure SDKs are slow to import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.context import Context
    from shared.ports import ComputeBackend

BACKENDS = ("local", "vmcluster", "azureml")


def create_backend(name: str, ctx: Context) -> ComputeBackend:
    """Build the backend called ``name`` for this process."""
    if name == "local":
        from shared.backends.local import LocalBackend

        return LocalBackend(ctx)
    if name == "vmcluster":
        from shared.backends.vmcluster import VMClusterBackend, VMIdentity
        from shared.config import env

        resource_id, client_id = env("RAPIDS_HPO_VM_IDENTITY_ID"), env("RAPIDS_HPO_VM_IDENTITY_CLIENT_ID")
        identity = VMIdentity(resource_id, client_id) if resource_id and client_id else None
        return VMClusterBackend(ctx, identity=identity)
    if name == "azureml":
        from shared.backends.azureml import AzureMLBackend

        return AzureMLBackend(ctx)
    raise ValueError(f"unknown compute backend {name!r}: expected one of {', '.join(BACKENDS)}")
