"""Spec errors: :class:`SpecError` with dotted locations, and the base model that names unknown keys."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]


class SpecError(ValueError):
    """An invalid spec. ``errors`` lists ``{"loc": "search_space.max_depth.values[2]", "msg": "..."}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        lines = [f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in errors]
        super().__init__("invalid experiment spec:\n  " + "\n  ".join(lines))

    @classmethod
    def single(cls, msg: str, loc: str = "") -> SpecError:
        return cls([{"loc": loc, "msg": msg}])

    @classmethod
    def from_validation_error(cls, exc: ValidationError, document: Any) -> SpecError:
        """Translate pydantic's errors: dotted locations without union tags, messages without prefixes."""
        errors: list[dict[str, str]] = []
        for error in exc.errors(include_url=False):
            loc = format_loc(_strip_tags(tuple(error["loc"]), document))
            msg = str(error["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            item = {"loc": loc, "msg": msg}
            if item not in errors:
                errors.append(item)
        return cls(errors)


def format_loc(loc: Iterable[str | int]) -> str:
    """``("search_space", "max_depth", "values", 2)`` -> ``"search_space.max_depth.values[2]"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_UNION_TAGS: frozenset[str] = frozenset(
    {
        "choice",
        "randint",
        "uniform",
        "quniform",
        "loguniform",
        "qloguniform",
        "normal",
        "qnormal",
        "lognormal",
        "qlognormal",
        "bandit",
        "median_stopping",
        "truncation_selection",
        "local",
        "vmcluster",
        "azureml",
    }
)


def _strip_tags(loc: Loc, document: Any) -> Loc:
    """Drop the union tags pydantic inserts (``search_space.x.choice.values``), guided by the input."""
    out: list[str | int] = []
    node = document
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif isinstance(part, str) and part in _UNION_TAGS:
                continue
            else:
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        out.append(part)
    return tuple(out)


def fail(errors: Sequence[tuple[Loc, str]], title: str = "ExperimentSpec") -> None:
    """Raise the errors as one ``ValidationError`` with precise locations (relative to the caller)."""
    if errors:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(type=PydanticCustomError("spec", "{msg}", {"msg": msg}), loc=loc, input=None)
                for loc, msg in errors
            ],
        )


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class SpecModel(BaseModel):
    """Base of the spec's models: unknown keys are errors that name the valid ones."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = list(cls.model_fields)
            fail(
                [
                    (
                        (key,),
                        f"unknown field {key!r}{did_you_mean(str(key), fields)}; expected one of: {', '.join(fields)}",
                    )
                    for key in data
                    if key not in cls.model_fields
                ],
                cls.__name__,
            )
        return data
