"""Small pieces the driver needs from Dask's scheduler and Optuna, kept out of the driver's loop."""

from __future__ import annotations

import optuna

from shared.records import TrialState


def own_worker() -> str | None:
    """The address of the Dask worker this driver runs on (vmcluster backend), else None."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return None


def optuna_state(state: TrialState) -> optuna.trial.TrialState:
    """The Optuna state a trial's state means to the sampler: COMPLETE, PRUNED, or FAIL for the rest."""
    if state is TrialState.COMPLETED:
        return optuna.trial.TrialState.COMPLETE
    if state is TrialState.PRUNED:
        return optuna.trial.TrialState.PRUNED
    return optuna.trial.TrialState.FAIL
