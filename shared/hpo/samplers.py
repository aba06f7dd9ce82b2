"""Samplers whose state survives a driver restart: QMC and CMA-ES as an uninterrupted run has them.

Our driver keeps its study in memory and, restarted, rebuilds it from the trial records, which keep Optuna's
numeric per-trial system attributes (:func:`shared.hpo.resume.optuna_attrs`) and nothing else. Two Optuna
samplers keep their state elsewhere and so lost it:

* ``QMCSampler`` counts the points it drew in a *study* attribute; a rebuilt study starts the sequence
  again, so the restarted run re-proposed the points it had already tried. :class:`ResumableQMCSampler`
  also writes each draw's index on its trial (``qmc:sample_id``, a number the record keeps) and draws
  the next index after the largest its study's trials carry.
* ``CmaEsSampler`` pickles its optimizer into the trial that updated it (a string, which the record does
  not keep, and would be unpickled from storage if it did). :class:`ResumableCmaEsSampler` rebuilds the
  optimizer from the trials instead: a fresh one told each generation's solutions, in trial order, up to the
  latest generation a finished trial carries (``cma:generation``, a number the record keeps). That is the
  optimizer the uninterrupted run restores: ``tell`` is deterministic and the optimizer's random state is
  reseeded before every ``ask``.

Values read back from records are numbers already (bounded, finite); they are used only when they are
non-negative integers no larger than the study's trial count, so a corrupt record cannot make a sampler skip
far ahead or replay without end. With ``max_concurrent_trials > 1`` the order trials finish in varies, and
no run repeats exactly (as for TPE); the restart then loses nothing an uninterrupted run would have kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import CmaEsSampler, QMCSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

if TYPE_CHECKING:
    from optuna.samplers._cmaes import CmaClass

QMC_SAMPLE_ID = "qmc:sample_id"
"""The per-trial system attribute holding the index of the QMC point the trial drew."""


def _count(value: Any, limit: int) -> int | None:
    """``value`` as an index in ``[0, limit]``, or None (not a whole number, negative, or too large)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        return None
    return int(value) if 0 <= value <= limit else None


class ResumableQMCSampler(QMCSampler):
    """Optuna's ``QMCSampler`` whose position in the sequence is read from the trials, not only the study."""

    _drawing: FrozenTrial | None = None

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._drawing = trial
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            self._drawing = None

    def _find_sample_id(self, study: optuna.Study, search_space: dict[str, BaseDistribution]) -> int:
        counted = super()._find_sample_id(study, search_space)  # the study's count: lost on a restart
        trials = study._get_trials(deepcopy=False, use_cache=False)
        drawn = (_count(t.system_attrs.get(QMC_SAMPLE_ID), len(trials)) for t in trials)
        sample_id = max(counted, 1 + max((i for i in drawn if i is not None), default=-1))
        if self._drawing is not None:
            study._storage.set_trial_system_attr(self._drawing._trial_id, QMC_SAMPLE_ID, sample_id)
        return sample_id


class ResumableCmaEsSampler(CmaEsSampler):
    """Optuna's ``CmaEsSampler`` that rebuilds its optimizer from the trials when none of them holds it."""

    _space: dict[str, BaseDistribution] | None = None
    _direction: StudyDirection = StudyDirection.MINIMIZE

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._space, self._direction = search_space, study.direction
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            self._space = None

    def _restore_optimizer(self, completed_trials: list[FrozenTrial]) -> CmaClass | None:
        found = super()._restore_optimizer(completed_trials)  # what this process stored, if anything
        if found is not None or self._space is None:
            return found
        return self._replay(completed_trials, self._space)

    def _replay(self, completed: list[FrozenTrial], space: dict[str, BaseDistribution]) -> CmaClass | None:
        key = self._attr_key_generation
        generations = [_count(t.system_attrs.get(key), len(completed)) for t in completed]
        latest = max((g for g in generations if g is not None), default=0)
        if latest == 0:
            return None  # never told: a fresh optimizer is the uninterrupted run's too
        from optuna._transform import _SearchSpaceTransform

        trans = _SearchSpaceTransform(space, transform_step=not self._with_margin, transform_0_1=True)
        state = self._cma_rng.rng.get_state()  # building one must not move the seed of this trial's ask
        optimizer = self._init_optimizer(trans, self._direction)
        self._cma_rng.rng.set_state(state)
        sign = 1.0 if self._direction is StudyDirection.MINIMIZE else -1.0
        for generation in range(latest):
            solutions = self._get_solution_trials(completed, generation)[: optimizer.population_size]
            if len(solutions) < optimizer.population_size or any(t.value is None for t in solutions):
                return None  # not the trials a run of this sampler leaves: start afresh
            optimizer.tell([(trans.transform(t.params), sign * float(t.value or 0.0)) for t in solutions])
        return optimizer
