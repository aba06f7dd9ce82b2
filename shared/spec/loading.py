"""The one strict reader of spec documents (HTTP bodies, queue messages, CLI files) and :func:`load_spec`.

A document is YAML or JSON text (bytes are UTF-8, a BOM allowed); it is never a path: only
:func:`read_spec_file` reads a file, for the CLI, which names it explicitly. Refused, each with a
:class:`DocumentError` naming the problem: more than :data:`MAX_DOCUMENT_BYTES`, text that is not UTF-8,
duplicate keys, non-string keys, YAML tags beyond the safe ones, several YAML documents, aliases
expanding past :data:`MAX_NODES` nodes or forming a cycle (alias bombs), nesting deeper than
:data:`MAX_DEPTH`, and a top level that is not a mapping.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.spec.admission import admit
from shared.spec.errors import SpecError
from shared.spec.experiment import ExperimentSpec
from shared.spec.policy import SpecPolicy, is_relative_path

MAX_DOCUMENT_BYTES = 256 * 1024
"""Largest spec document (a real one is a few KiB; a queue message is at most 64 KiB)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists (a spec needs 4)."""
MAX_NODES = 20_000
"""Most values a document may expand to, aliases counted at every use."""

DOCUMENT_LOC = ""
"""The location of a problem with the document as a whole (the API reports it as ``body``)."""


class DocumentError(SpecError):
    """A document that cannot be read. ``status`` is the HTTP status it maps to (413 or 422)."""

    def __init__(self, msg: str, status: int = 422) -> None:
        super().__init__([{"loc": DOCUMENT_LOC, "msg": msg}])
        self.status = status


_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML was built with it (the wheels are): it composes a 120 KB document in
milliseconds where the pure-Python parser takes seconds of CPU (``bench/spec_validation.py``)."""


class _YamlLoader(_SafeBase):  # type: ignore[valid-type,misc]
    """A safe loader that rejects duplicate and non-string keys, bounds aliases and depth, and reads
    ``1e-3`` as a float (YAML 1.2, like JSON)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return self.construct_document(node)


def _check_graph(root: yaml.Node) -> None:
    """Count the values ``root`` expands to (an alias counts its whole target again) and its depth."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
    visiting: set[int] = set()

    def measure(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise _problem("a YAML alias refers to a mapping or list that contains it", node)
        if not isinstance(node, yaml.CollectionNode):
            return 1, 0
        visiting.add(key)
        total, depth = 1, 0
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
        for child in children:
            child_total, child_depth = measure(child)
            total, depth = total + child_total, max(depth, child_depth)
            if total > MAX_NODES:
                raise _problem(f"the document expands to more than {MAX_NODES} values (YAML aliases?)", node)
        depth += 1
        if depth > MAX_DEPTH:
            raise _problem(f"the document nests deeper than {MAX_DEPTH} levels", node)
        visiting.discard(key)
        sizes[key] = (total, depth)
        return total, depth

    measure(root)


def _problem(msg: str, node: yaml.Node | yaml.Event) -> yaml.constructor.ConstructorError:
    mark: Any = node.start_mark  # libyaml's parser gives its own Mark type, with the same line and column
    return yaml.constructor.ConstructorError(None, None, msg, mark)


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise _problem("found an unhashable key", key_node)
        if not isinstance(key, str):
            raise _problem(f"keys must be strings, found {key!r} ({type(key).__name__}); quote it", key_node)
        if key in mapping:
            raise _problem(f"duplicate key {key!r}", key_node)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _count_values(text: str) -> None:
    """Refuse a document of more than ``MAX_NODES`` scalars and aliases from the parser's event stream,
    before the nodes are composed (composing costs several times the parse)."""
    values = 0
    for event in yaml.parse(text, Loader=_SafeBase):
        if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            values += 1
            if values > MAX_NODES:
                raise _problem(f"the document holds more than {MAX_NODES} values", event)


def _parse_yaml(text: str) -> Any:
    try:
        _count_values(text)
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise DocumentError(f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise DocumentError(f"the document nests deeper than {MAX_DEPTH} levels") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _json_depth(value: Any) -> int:
    """How deep ``value`` nests (0 for a scalar), counted without recursion and only through containers."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return depth
        children = node.values() if isinstance(node, dict) else node
        if children:
            deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _parse_json(text: str) -> Any:
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise DocumentError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise DocumentError(f"the document nests deeper than {MAX_DEPTH} levels") from None
    if _json_depth(document) > MAX_DEPTH:
        raise DocumentError(f"the document nests deeper than {MAX_DEPTH} levels")
    return document


def parse_document(source: str | bytes) -> Any:
    """Parse YAML or JSON text (JSON when it starts with ``{`` or ``[``) into Python values, strictly."""
    if isinstance(source, bytes):
        if len(source) > MAX_DOCUMENT_BYTES:
            raise DocumentError(f"the document is {len(source)} bytes; the limit is {MAX_DOCUMENT_BYTES}", 413)
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"the document is not UTF-8 text: {exc}") from None
    elif isinstance(source, str):
        size = len(source.encode("utf-8", "surrogatepass"))
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentError(f"the document is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}", 413)
        text = source.removeprefix("\ufeff")
    else:
        raise TypeError(f"a document is YAML/JSON text or bytes, not {type(source).__name__}")
    if not text.strip():
        raise DocumentError("the document is empty: the spec must be a mapping (a YAML/JSON object)")
    return _parse_json(text) if text.lstrip().startswith(("{", "[")) else _parse_yaml(text)


def _mapping(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        hint = " (a document, never a file name)" if isinstance(document, str) else ""
        raise DocumentError(f"the spec must be a mapping (a YAML/JSON object){hint}, got {kind}")
    return document


def read_document(source: str | bytes | dict[str, Any] | Path | Any) -> dict[str, Any]:
    """Parse ``source`` (text, bytes, an already parsed value, or an explicit :class:`~pathlib.Path`)
    into a mapping without validating it. A ``str`` is always a document, never a file name."""
    if isinstance(source, Path):
        return read_spec_file(source)
    return _mapping(parse_document(source) if isinstance(source, str | bytes) else source)


def read_spec_file(path: Path) -> dict[str, Any]:
    """Read a spec file the user named (the CLI only), with the same rules as any document. A relative
    local ``dataset.uri`` means relative to the file's folder, as a user writing ``../data/x.csv`` beside
    the spec expects: it is made absolute here, so the spec means the same wherever it is run or sent."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read spec file {str(path)!r}: {exc}") from None
    document = read_document(data)
    dataset = document.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("uri"), str) and is_relative_path(dataset["uri"]):
        absolute = os.path.normpath(path.absolute().parent / dataset["uri"])
        document = {**document, "dataset": {**dataset, "uri": absolute}}
    return document


def validate_spec(document: dict[str, Any], policy: SpecPolicy | None = None) -> ExperimentSpec:
    """Admit a parsed document (the edge): its shape, then the rules of the world now (the size
    catalogue, ``policy``: hosted mode's rules; :func:`~shared.spec.admission.admit`)."""
    try:
        spec = ExperimentSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError.from_validation_error(exc, document, ExperimentSpec) from None
    return admit(spec, policy)


def load_spec(source: str | bytes | dict[str, Any] | Path, policy: SpecPolicy | None = None) -> ExperimentSpec:
    """Load and validate a spec from YAML/JSON text or bytes, a parsed dict, or a :class:`~pathlib.Path`
    (an explicit file; a ``str`` is always a document, never a file name).

    Raises :class:`SpecError` listing every problem found with its location (:class:`DocumentError` when
    the document itself cannot be read).
    """
    return validate_spec(read_document(source), policy)
