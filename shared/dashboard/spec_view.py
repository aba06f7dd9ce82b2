"""The spec on an experiment's page: one line saying what runs (data, model, search, policy, limits), and
the whole stored spec as YAML under it, folded. Everything is escaped: the spec is the submitter's text."""

from __future__ import annotations

from html import escape
from typing import Any

import yaml

from shared.spec import ExperimentSpec

MAX_SPEC_CHARS = 20_000
"""The YAML shown on the page at most (a spec is a few KiB; the rest is at ``/study``)."""


def spec_summary(spec: ExperimentSpec) -> str:
    """``builtin://nycflights13 → ArrDelayBinary (auto) · random_forest, 3 folds · 3 parameters (...) by random
    · bandit · 10 trials, 2 at a time`` (plain text: the caller escapes it)."""
    dataset, trial, limits = spec.dataset, spec.trial, spec.limits
    rows = f", {dataset.max_rows} rows sampled" if dataset.max_rows else ""
    data = f"{dataset.uri} → {dataset.target}" + (f" ({dataset.task})" if dataset.task else "") + rows
    model = f"{trial.model}, {trial.cv_folds} folds"
    names = list(spec.search_space)
    search = f"{len(names)} parameters ({', '.join(names)}) by {spec.sampling_algorithm.type}"
    policy = spec.early_termination.type if spec.early_termination is not None else "no early termination"
    at_once = f"{limits.max_total_trials} trials, {limits.max_concurrent_trials} at a time"
    return " · ".join((data, model, search, policy, at_once))


def _set(value: Any) -> Any:
    """``value`` without the keys left unset (``None``): the normalized spec spells out every default."""
    if isinstance(value, dict):
        return {k: _set(v) for k, v in value.items() if v is not None}
    return [_set(v) for v in value] if isinstance(value, list) else value


def spec_html(spec: ExperimentSpec | None) -> str:
    """The summary line, then the spec as YAML (unset keys left out) in a folded ``<details id="spec">``;
    "" for a request refused at intake (no spec)."""
    if spec is None:
        return ""
    text = yaml.safe_dump(_set(spec.to_document()), sort_keys=False, width=100, allow_unicode=True)
    if len(text) > MAX_SPEC_CHARS:
        text = text[:MAX_SPEC_CHARS] + "\n# ... cut here: the whole spec is at /api/experiments/<id>/study\n"
    return (
        f'<details id="spec"><summary>spec: <span id="spec-summary">{escape(spec_summary(spec))}</span></summary>'
        f"<pre>{escape(text)}</pre></details>"
    )
