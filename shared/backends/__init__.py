"""The registry of compute backends: the one place that lists them (the composition root).

Each backend is a package that describes itself in its ``BACKEND`` (a :class:`shared.ports.Registration`:
its ``compute`` section, its capabilities with their reasons, a factory and a planner factory that import
the backend only when called: the Azure SDKs are slow to import). Everything else that knows the backends
is derived from :data:`REGISTRY` here: the spec's ``compute`` union (:data:`ComputeSpec`), the sections
(:data:`COMPUTE_SECTIONS`), the orphan finders, and (from the union) the spec errors' union tags. A backend
is built from what it uses (the store and the settings), never from the whole context, so
``shared.context`` depends on this package and not the other way round. Adding a backend: a package, one
line below, and a conformance harness (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from shared.backends import azureml, local, vmcluster
from shared.compute_spec import ComputeSection
from shared.ports import Registration

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ports import ComputeBackend, Planner, Store

REGISTRY: dict[str, Registration] = {
    r.name: r
    for r in (
        local.BACKEND,  # the first is the default: a spec without compute.backend runs here
        vmcluster.BACKEND,
        azureml.BACKEND,
    )
}
BACKENDS = tuple(REGISTRY)
DEFAULT_BACKEND = BACKENDS[0]
COMPUTE_SECTIONS: tuple[type[ComputeSection], ...] = tuple(r.section for r in REGISTRY.values())
if TYPE_CHECKING:
    ComputeSpec = ComputeSection
else:
    ComputeSpec = Annotated[Union[COMPUTE_SECTIONS], Field(discriminator="backend")]  # noqa: UP007
"""The spec's ``compute`` section: one of the registered sections, chosen by its ``backend`` tag."""
ORPHAN_FINDERS = tuple(name for name, r in REGISTRY.items() if r.capabilities.finds_orphans)
"""The backends the timer's orphan sweep builds; the others are never imported by it."""


def default_section() -> ComputeSection:
    """The ``compute`` section of a spec that names none: the default backend's, with its defaults."""
    return REGISTRY[DEFAULT_BACKEND].section.model_validate({})


def backends_where(declares: Callable[[type[ComputeSection]], bool]) -> list[str]:
    """The names of the backends whose section ``declares`` holds for (for error messages)."""
    return [name for name, r in REGISTRY.items() if declares(r.section)]


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
