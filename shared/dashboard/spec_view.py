"""The spec on an experiment's page: one line saying what runs (data, model, search, policy, limits), and
the whole stored spec as YAML under it, folded. Everything is escaped: the spec is the submitter's text."""

from __future__ import annotations

from html import escape
from typing import Any

import yaml

MAX_SPEC_CHARS = 20_000
"""The YAML shown on the page at most (a spec is a few KiB; the rest is at ``/study``)."""


def _get(document: dict[str, Any], *path: str) -> Any:
    value: Any = document
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def spec_summary(spec: dict[str, Any]) -> str:
    """``builtin://nycflights13 → ArrDelayBinary (auto) · random_forest, 3 folds · 3 parameters (...) by random
    · bandit · 10 trials, 2 at a time`` (plain text: the caller escapes it)."""
    target = f"{_get(spec, 'dataset', 'uri')} → {_get(spec, 'dataset', 'target')}"
    task = _get(spec, "dataset", "task")
    rows = _get(spec, "dataset", "max_rows")
    data = target + (f" ({task})" if task else "") + (f", {rows} rows sampled" if rows else "")
    folds = _get(spec, "trial", "cv_folds")
    model = f"{_get(spec, 'trial', 'model')}" + (f", {folds} folds" if folds else "")
    names = list(_get(spec, "search_space") or {})
    sampler = _get(spec, "sampling_algorithm", "type") or "random"
    search = f"{len(names)} parameters ({', '.join(names)}) by {sampler}"
    policy = _get(spec, "early_termination", "type") or "no early termination"
    total, concurrent = _get(spec, "limits", "max_total_trials"), _get(spec, "limits", "max_concurrent_trials")
    limits = f"{total} trials" + (f", {concurrent} at a time" if concurrent else "")
    return " · ".join(str(part) for part in (data, model, search, policy, limits))


def _set(value: Any) -> Any:
    """``value`` without the keys left unset (``None``): the normalized spec spells out every default."""
    if isinstance(value, dict):
        return {k: _set(v) for k, v in value.items() if v is not None}
    return [_set(v) for v in value] if isinstance(value, list) else value


def spec_html(spec: dict[str, Any]) -> str:
    """The summary line, then the spec as YAML (unset keys left out) in a folded ``<details id="spec">``."""
    text = yaml.safe_dump(_set(spec), sort_keys=False, width=100, allow_unicode=True)
    if len(text) > MAX_SPEC_CHARS:
        text = text[:MAX_SPEC_CHARS] + "\n# ... cut here: the whole spec is at /api/experiments/<id>/study\n"
    return (
        f'<details id="spec"><summary>spec: <span id="spec-summary">{escape(spec_summary(spec))}</span></summary>'
        f"<pre>{escape(text)}</pre></details>"
    )
