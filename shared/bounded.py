"""Bounded value types for what the control plane stores from outside: the compute's trials, outcome and
heartbeat above all (issue 20). A record typed with these cannot hold a NaN, an infinity, an integer past
64 bits, a megabyte string or an unbounded mapping, so what reads it (the API, the dashboard's SVG, the
cost ledger, the status queue's 64 KB messages) never meets one.

Numbers and names are refused when out of bounds; free text (an ``error``) is clipped instead, since a
long error is still worth showing and refusing it would lose the reason a run failed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool

MAX_TEXT = 4096
"""Characters kept of free text (errors, reasons): the rest is cut and marked."""
MAX_NAME = 256
"""Characters in a name or a short string value (a metric's name, an engine, a parameter's string value)."""
MAX_ENTRIES = 64
"""Entries in a mapping of metrics or parameters."""
MAX_SERIES = 1000
"""Values in one list (a metric's per-fold scores)."""
MAX_MAPPING_BYTES = 64 * 1024
"""JSON size of one mapping of metrics or parameters, all entries together."""
INT_BOUND = 2**63 - 1
"""Integers beyond a signed 64-bit value are refused (``float()`` of 10**400 overflows, a table column too)."""


def clip(value: Any, limit: int = MAX_TEXT) -> Any:
    """``value`` cut to ``limit`` characters (marked with the count cut) when it is a longer str; other
    values pass unchanged for the type to judge (a dict is still refused as an error)."""
    if isinstance(value, str) and len(value) > limit:
        marker = f"... [{len(value) - limit + 40} characters cut]"
        return value[: limit - len(marker)] + marker
    return value


def _small(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_MAPPING_BYTES:
        raise ValueError(f"{size} bytes of JSON; at most {MAX_MAPPING_BYTES}")
    return value


FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=False)]
BoundedInt = Annotated[int, Field(ge=-INT_BOUND, le=INT_BOUND)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
ShortStr = Annotated[str, Field(max_length=MAX_NAME)]
Text = Annotated[str, BeforeValidator(clip)]
"""Free text, clipped to :data:`MAX_TEXT` characters."""
Scalar = StrictBool | BoundedInt | FiniteFloat | ShortStr | None
"""A parameter's or a metric's plain value."""
NumberSeries = Annotated[list[FiniteFloat], Field(max_length=MAX_SERIES)]
NameList = Annotated[list[ShortStr], Field(max_length=MAX_SERIES)]
SeriesByName = Annotated[dict[Name, NumberSeries], Field(max_length=MAX_ENTRIES)]
MetricValue = Scalar | NumberSeries | NameList | SeriesByName
"""A metric: a number, a short string, a list of numbers or of names (ignored parameters), or number lists
by name (``fold_scores``: each metric's per-fold scores)."""
Metrics = Annotated[dict[Name, MetricValue], Field(max_length=MAX_ENTRIES), AfterValidator(_small)]
Params = Annotated[dict[Name, Scalar], Field(max_length=MAX_ENTRIES), AfterValidator(_small)]
