"""Reading a spec document (YAML or JSON) strictly, and :func:`load_spec`."""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.spec.errors import SpecError
from shared.spec.experiment import ExperimentSpec


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float (YAML 1.2, like JSON)."""


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(None, None, "found an unhashable key", key_node.start_mark)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
    return mapping


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise SpecError.single(f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError.single(f"invalid YAML: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise SpecError.single(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise SpecError.single(f"invalid JSON: {exc}") from None


def _read_path(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError.single(f"cannot read spec file {str(path)!r}: {exc}") from None
    return _parse_json(text) if path.suffix.lower() == ".json" else _parse_yaml(text)


def _parse_text(text: str) -> Any:
    return _parse_json(text) if text.lstrip().startswith("{") else _parse_yaml(text)


def read_document(source: str | Path | bytes | dict[str, Any]) -> dict[str, Any]:
    """Parse ``source`` into a dict without validating it (see :func:`load_spec` for the forms)."""
    if isinstance(source, dict):
        document: Any = source
    elif isinstance(source, Path):
        document = _read_path(source)
    elif isinstance(source, bytes):
        try:
            document = _parse_text(source.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise SpecError.single(f"the spec is not UTF-8 text: {exc}") from None
    elif isinstance(source, str):
        stripped = source.strip()
        one_line = "\n" not in stripped
        looks_like_file = stripped.lower().endswith((".yaml", ".yml", ".json"))
        if one_line and (looks_like_file or (stripped and ":" not in stripped and Path(stripped).is_file())):
            document = _read_path(Path(stripped))
        else:
            document = _parse_text(source)
    else:
        raise TypeError(f"load_spec takes a path, YAML/JSON text, bytes or a dict, not {type(source).__name__}")
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError.single(f"the spec must be a mapping (a YAML/JSON object), got {kind}")
    return document


def load_spec(source: str | Path | bytes | dict[str, Any]) -> ExperimentSpec:
    """Load and validate a spec from a ``.yaml``/``.yml``/``.json`` path, YAML or JSON text, or a dict.

    Raises :class:`SpecError` listing every problem found with its location.
    """
    document = read_document(source)
    try:
        return ExperimentSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError.from_validation_error(exc, document) from None
