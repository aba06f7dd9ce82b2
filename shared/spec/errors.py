"""Spec errors: :class:`SpecError` with dotted locations, and the base model that names unknown keys.

Error collection is linear and capped: at most :data:`MAX_ERRORS` problems are kept (their messages
built), later ones are only counted (:attr:`SpecError.more`), duplicates are dropped through a set. A
hostile document therefore costs time in proportion to its size, never its square.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]
MAX_ERRORS = 100
"""Most problems one refusal lists; the rest are counted (``and N more``)."""
MAX_ECHO = 80
"""Most characters of a caller's key or value an error message repeats."""
MAX_MESSAGE = 1000
"""Longest message one error carries (pydantic's own may quote the input: a union tag, a literal)."""
_MORE = "spec_more"
"""The pydantic error type that carries a count of problems left out (see :func:`fail`)."""


class SpecError(ValueError):
    """An invalid spec. ``errors`` lists ``{"loc": "search_space.max_depth.values[2]", "msg": "..."}``
    (at most :data:`MAX_ERRORS`); ``more`` counts the problems found beyond them."""

    def __init__(self, errors: list[dict[str, str]], more: int = 0) -> None:
        self.errors = errors[:MAX_ERRORS]
        self.more = more + len(errors[MAX_ERRORS:])
        lines = [f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in self.errors]
        if self.more:
            lines.append(f"and {self.more} more")
        super().__init__("invalid experiment spec:\n  " + "\n  ".join(lines))

    @classmethod
    def single(cls, msg: str, loc: str = "") -> SpecError:
        return cls([{"loc": loc, "msg": msg}])

    @classmethod
    def from_validation_error(cls, exc: ValidationError, document: Any, model: type[BaseModel]) -> SpecError:
        """Translate pydantic's errors of validating ``document`` as ``model``: dotted locations without
        ``model``'s union tags, messages without prefixes."""
        tags = union_tags(model)
        errors: list[dict[str, str]] = []
        seen: set[tuple[str, str]] = set()
        more = 0
        for error in exc.errors(include_url=False, include_context=True, include_input=False):
            if error["type"] == _MORE:
                more += int(error["ctx"]["count"])
                continue
            if len(errors) >= MAX_ERRORS:
                more += 1
                continue
            loc = format_loc(_strip_tags(tuple(error["loc"]), document, tags))
            msg = str(error["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            msg = msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 1] + "…"
            if (loc, msg) not in seen:
                seen.add((loc, msg))
                errors.append({"loc": loc, "msg": msg})
        return cls(errors, more)


def format_loc(loc: Iterable[str | int]) -> str:
    """``("search_space", "max_depth", "values", 2)`` -> ``"search_space.max_depth.values[2]"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part) if len(str(part)) <= MAX_ECHO else str(part)[: MAX_ECHO - 1] + "…"
            name = name or '""'  # an empty key is still a place
            out += f".{name}" if out else name
    return out


def union_tags(model: type[BaseModel]) -> frozenset[str]:
    """The tags of every discriminated union in ``model`` (a parameter's ``type``, a policy's, the compute
    section's ``backend``), read from its pydantic core schema: pydantic puts the chosen tag into an error's
    location, and :func:`_strip_tags` takes it out again. Derived, never listed: a new compute section or
    parameter type is a tag the moment it is a member of its union."""
    return _union_tags(model)


@functools.cache
def _union_tags(model: type[BaseModel]) -> frozenset[str]:
    found: set[str] = set()
    stack: list[Any] = [model.__pydantic_core_schema__]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "tagged-union":
                found.update(tag for tag in node["choices"] if isinstance(tag, str))
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return frozenset(found)


def _strip_tags(loc: Loc, document: Any, tags: frozenset[str]) -> Loc:
    """Drop the union tags pydantic inserts (``search_space.x.choice.values``), guided by the input."""
    out: list[str | int] = []
    node = document
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif isinstance(part, str) and part in tags:
                continue
            else:
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        out.append(part)
    return tuple(out)


class Problems:
    """Problems as a validator finds them: kept up to :data:`MAX_ERRORS`, only counted beyond, so a
    validator looping over a hostile list stops building messages once the cap is reached (check
    :attr:`full` before building an expensive one)."""

    def __init__(self) -> None:
        self.found: list[tuple[Loc, str]] = []
        self.more = 0

    @property
    def full(self) -> bool:
        return len(self.found) >= MAX_ERRORS

    def add(self, loc: Loc, msg: str) -> None:
        if self.full:
            self.more += 1
        else:
            self.found.append((loc, msg))

    def count(self, n: int = 1) -> None:
        """Count ``n`` problems without building their messages (the cap is reached)."""
        self.more += n

    def __bool__(self) -> bool:
        return bool(self.found or self.more)

    def fail(self, title: str = "ExperimentSpec") -> None:
        fail(self.found, title, more=self.more)


def fail(errors: Sequence[tuple[Loc, str]], title: str = "ExperimentSpec", *, more: int = 0) -> None:
    """Raise the errors as one ``ValidationError`` with precise locations (relative to the caller); past
    :data:`MAX_ERRORS` they are counted, carried as one ``spec_more`` item that :class:`SpecError` adds up."""
    more += max(0, len(errors) - MAX_ERRORS)
    details = [
        InitErrorDetails(type=PydanticCustomError("spec", "{msg}", {"msg": msg}), loc=loc, input=None)
        for loc, msg in errors[:MAX_ERRORS]
    ]
    if more:
        details.append(
            InitErrorDetails(type=PydanticCustomError(_MORE, "{count} more", {"count": more}), loc=(), input=None)
        )
    if details:
        raise ValidationError.from_exception_data(title, details)


def echo(value: Any) -> str:
    """``repr(value)`` clipped to :data:`MAX_ECHO` characters: errors name what they refuse without
    sending a caller's megabyte back (or repeating it a hundred times)."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"


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
            problems = Problems()
            for key in data:
                if key in cls.model_fields:
                    continue
                if problems.full:
                    problems.count()
                    continue
                hint = did_you_mean(str(key), fields) if len(str(key)) <= MAX_ECHO else ""
                problems.add((key,), f"unknown field {echo(key)}{hint}; expected one of: {', '.join(fields)}")
            problems.fail(cls.__name__)
        return data
