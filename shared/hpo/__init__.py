"""The HPO engine's Optuna side: AzureML's sampling and early-termination semantics for an experiment spec.

The re-exports below load lazily, so importing a light submodule of ``shared.hpo`` does not import Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BanditPruner": "shared.hpo.pruners",
    "MedianStoppingPruner": "shared.hpo.pruners",
    "TruncationSelectionPruner": "shared.hpo.pruners",
    "is_evaluation_step": "shared.hpo.pruners",
    "make_pruner": "shared.hpo.search_space",
    "make_sampler": "shared.hpo.search_space",
    "suggest_params": "shared.hpo.search_space",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
