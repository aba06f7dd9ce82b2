"""The spec's size and magnitude caps: every number a document may hold, and how much work it may ask for.

A spec is read in time proportional to its size: the caps below keep both the reading and what a run
built from it does (Optuna's grid is the product of the choices, a q-distribution's support is
``span / q`` points, a credential is minted for the timeout) far from any overflow or blow-up:

- every number anywhere in the document lies within ``±MAX_INTEGER`` (``2**53``: an integer that size is
  exact as a float, so no conversion downstream raises ``OverflowError``, and a float like ``1e300`` cannot
  reach an integer field as a 300-digit integer); every float is finite;
- a ``choice`` has at most :data:`MAX_CHOICE_VALUES` values, a search space at most
  :data:`MAX_SEARCH_SPACE` entries, a grid at most :data:`MAX_GRID_POINTS` points;
- a q-distribution spans at most :data:`MAX_Q_STEPS` multiples of ``q`` (``q: 5e-324`` is refused);
- ``limits.timeout`` and ``trial_timeout`` are at most :data:`~shared.config.MAX_RUN_SECONDS`, so the run
  ends while the credential its compute writes with is valid.
"""

from __future__ import annotations

import math
from typing import Any

from shared.config import MAX_RUN_SECONDS
from shared.spec.errors import Loc, Problems, echo

MAX_INTEGER = 2**53
"""Largest integer magnitude anywhere in a spec (exactly representable as a float and in JSON clients)."""
MAX_CHOICE_VALUES = 1000
"""Most values one ``choice`` may list (a sweep runs at most 1,000 trials)."""
MAX_SEARCH_SPACE = 32
"""Most entries a search space may have (a model here has at most ten hyperparameters)."""
MAX_GRID_POINTS = 100_000
"""Most points a grid may have: Optuna's grid sampler holds the whole product in memory."""
MAX_Q_STEPS = 1_000_000
"""Most multiples of ``q`` a q-distribution may span (``span / q``)."""
MAX_TAGS = 50
"""Most tags a spec may carry (Azure's limit on a resource)."""

__all__ = [
    "MAX_CHOICE_VALUES",
    "MAX_GRID_POINTS",
    "MAX_INTEGER",
    "MAX_Q_STEPS",
    "MAX_RUN_SECONDS",
    "MAX_SEARCH_SPACE",
    "MAX_TAGS",
    "number_problem",
    "numbers_problems",
    "q_problem",
]


def number_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable number here (a bool, a non-number, too large, not finite), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {echo(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if abs(value) > MAX_INTEGER:
        size = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else f"{value:g}"
        return f"must be at most {MAX_INTEGER} (2**53) in magnitude, got {size}"
    return None


def numbers_problems(document: Any, problems: Problems) -> None:
    """Add a problem for every number beyond ``±MAX_INTEGER`` and every non-finite float in ``document``,
    located by its path. Iterative (a deep document cannot raise ``RecursionError``) and linear; a path is
    built only for a problem (a list of 40,000 numbers costs one comparison each)."""
    stack: list[tuple[Loc, Any]] = [((), document)]
    while stack:
        loc, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            kind = type(value)
            if kind is int or kind is float:  # bool is neither; NaN fails the comparison
                if not -MAX_INTEGER <= value <= MAX_INTEGER:
                    problems.add((*loc, key), number_problem(value) or "")
            elif kind is dict or kind is list or kind is tuple:
                stack.append(((*loc, key), value))


def q_problem(span: float, q: float, what: str) -> str | None:
    """Why ``q`` is too fine for a distribution spanning ``span`` (``what`` says which span), or None."""
    if not math.isfinite(span / q) or span / q > MAX_Q_STEPS:
        return f"q={q:g} splits {what} ({span:g}) into more than {MAX_Q_STEPS} steps: use q >= {span / MAX_Q_STEPS:.3g}"
    return None
