"""``warm_start: {experiment: <id>}``: the referenced experiment's trials, read at submit through the store.

The control plane reads them (the compute holds a credential for its own experiment only) and keeps what
the driver needs in the new experiment's record (:class:`~shared.records.WarmStartSeed`, at most
:data:`~shared.records.MAX_WARM_TRIALS` trials, best first). The referenced experiment must exist, be one
the submitter may read as the API would let them (``may_read``: the API's visibility rule; the request
queue reads only experiments submitted by the same sender) and be finished with a completed trial;
otherwise the submit is refused with a 422 at ``warm_start.experiment`` (a ``SpecError``), and an
experiment the caller may not see is refused in the words of one that does not exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from shared.errors import NotFound
from shared.ports import Store
from shared.records import (
    MAX_WARM_TRIALS,
    ExperimentRecord,
    SubmittedBy,
    TrialState,
    WarmStartSeed,
    WarmTrial,
)
from shared.spec import ExperimentSpec, SpecError

LOC = "warm_start.experiment"
ReadRule = Callable[[ExperimentRecord], bool]


def _refuse(message: str) -> SpecError:
    return SpecError([{"loc": LOC, "msg": message}])


def same_sender(sender: SubmittedBy | None) -> ReadRule:
    """The queue's rule: an Entra principal reads its own experiments, an unnamed queue sender those the
    queue submitted; None (the local CLI, whose user owns the store) reads every one."""
    if sender is None:
        return lambda record: True
    if sender.object_id:
        return lambda record: record.submitted_by is not None and record.submitted_by.same_principal(sender)
    return lambda record: record.submitted_by is not None and record.submitted_by.kind == sender.kind


def read_seed(store: Store, spec: ExperimentSpec, may_read: ReadRule) -> WarmStartSeed | None:
    """The seed for ``spec.warm_start`` (None without one); ``SpecError`` at ``warm_start.experiment``."""
    if spec.warm_start is None:
        return None
    reference = spec.warm_start.experiment
    try:
        record = store.get_experiment(reference)
    except NotFound:
        record = None
    if record is None or not may_read(record):
        raise _refuse(f"no experiment {reference!r} (or not one you may read)")
    if not record.status.terminal:
        raise _refuse(f"experiment {reference!r} is {record.status.value}: a warm start needs a finished one")
    earlier = record.spec  # as admitted then: what the catalogue retired since does not matter here
    if earlier is None:
        raise _refuse(f"experiment {reference!r} was refused at intake: it has no spec to start from")
    goal = earlier.objective.goal
    sign = -1.0 if goal == "maximize" else 1.0
    completed = [
        t
        for t in store.list_trials(reference)
        if t.state is TrialState.COMPLETED and t.value is not None and math.isfinite(t.value)
    ]
    if not completed:
        raise _refuse(f"experiment {reference!r} has no completed trial to start from")
    completed.sort(key=lambda t: (sign * float(t.value or 0.0), t.number))
    same = (
        earlier.search_space == spec.search_space
        and earlier.trial.model == spec.trial.model
        and earlier.objective == spec.objective
        and not spec.objective.multi  # a seed carries the primary value only: several objectives enqueue
    )
    keep = MAX_WARM_TRIALS if same else spec.warm_start.best
    trials = [
        WarmTrial(number=t.number, params=t.params, sampler_params=t.sampler_params, value=float(t.value or 0.0))
        for t in completed[:keep]
    ]
    return WarmStartSeed(experiment=reference, same_space=same, goal=goal, trials=trials)
