"""The trial function a spec's ``trial.fidelity`` needs: what a trial grows at each step (``gpu_jobs.steps``).

``rounds`` is ``run_trial``'s own default, so the driver runs its default trial function. ``rows`` refits the
whole model on a growing share of each fold's rows, its levels set by the rung policy's reduction factor
(:func:`shared.spec.pruning.row_factor`); the trial hears both through the function the driver is given,
because :class:`~shared.hpo.trial_task.TrialTask` carries no fidelity yet. Whoever builds an
:class:`~shared.hpo.driver.HpoDriver` for a spec passes ``trial_fn=trial_function(spec)``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from shared.spec.pruning import row_factor

if TYPE_CHECKING:
    from shared.hpo.trial_task import TrialFunction
    from shared.spec import ExperimentSpec


def trial_function(spec: ExperimentSpec) -> TrialFunction | None:
    """``gpu_jobs.train.run_trial`` told the spec's fidelity; None (the driver's default) for ``rounds``."""
    if spec.trial.fidelity == "rounds":
        return None
    from gpu_jobs.train import run_trial

    return functools.partial(run_trial, fidelity=spec.trial.fidelity, row_factor=row_factor(spec))
