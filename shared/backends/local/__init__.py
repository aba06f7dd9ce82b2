"""The ``local`` backend: the HPO driver as a process beside the host, trials on a Dask LocalCluster.

:mod:`.section` (the spec's ``compute`` section), :mod:`.backend` (the protocol: the driver process),
:mod:`.driver` (the driver process's entry point). The driver is a compute like any other: it holds its
experiment's compute credential only and writes its area, which the control plane ingests each poll.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.backends.local.section import LocalCompute
from shared.ports import Capabilities, Registration

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ports import ComputeBackend, Planner, Store


def _create(store: Store, settings: Settings) -> ComputeBackend:
    from shared.backends.local.backend import LocalBackend

    return LocalBackend(store, settings)


def _planner() -> Planner:
    from shared.backends.local.backend import LocalPlanner

    return LocalPlanner()


CAPABILITIES = Capabilities(
    model_from="driver",
    cloud_resources=False,
    finds_orphans=False,
    restarts_driver=True,
    model_on_cancel=True,
    reasons={
        "model_from": "the driver refits the best trial and writes the model into its area",
        "cloud_resources": "a process and a LocalCluster on this machine: nothing in Azure",
        "finds_orphans": "nothing outlives teardown but a process, which teardown kills by pid",
        "restarts_driver": "poll starts a dead driver again (it resumes from the trials it wrote)",
        "model_on_cancel": "SIGTERM to the driver alone: it ends its trials, refits the best finished one on its "
        "cluster and writes its outcome; poll starts no driver while the experiment is CANCELLING",
    },
)
BACKEND = Registration(section=LocalCompute, capabilities=CAPABILITIES, create=_create, planner=_planner)

_WHERE = dict.fromkeys(["LocalBackend", "LocalHandle", "LocalPlanner", "MAX_DRIVER_RESTARTS", "is_alive"], "backend")


def __getattr__(name: str) -> Any:  # lazy: the registry imports this package for its section only
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
