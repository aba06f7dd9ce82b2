"""Shape rules the code keeps: only the registry and each backend's own modules name a backend."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from shared.backends import COMPUTE_SECTIONS, REGISTRY, backends_where
from shared.backends.local.section import LocalCompute
from shared.compute_spec import ComputeSection
from shared.spec import SpecError, load_spec
from shared.spec.errors import union_tags
from tests.control_plane import tiny_spec

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAMES = set(REGISTRY)
OWN_MODULES = ("shared/backends/",)
"""The registry and the backends themselves may name a backend (a backend checks its own name)."""


def _is_a_backend(node: ast.AST) -> bool:
    """``x.backend``, ``backend``, ``x.get("backend")`` or ``x["backend"]``: an expression naming a backend."""
    if isinstance(node, ast.Attribute):
        return node.attr == "backend"
    if isinstance(node, ast.Name):
        return node.id == "backend"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return any(isinstance(a, ast.Constant) and a.value == "backend" for a in node.args)
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "backend"
    return False


def _names_compared(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, name)`` of every comparison of a backend with a backend's name (``==``, ``!=``, ``in``)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if not any(_is_a_backend(operand) for operand in operands):
            continue
        for operand in operands:
            values = operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
            for value in values:
                if isinstance(value, ast.Constant) and value.value in BACKEND_NAMES:
                    found.append((node.lineno, value.value))
    return found


def _control_plane_modules() -> list[Path]:
    files = [*sorted((ROOT / "shared").rglob("*.py")), ROOT / "function_app.py"]
    return [f for f in files if not f.relative_to(ROOT).as_posix().startswith(OWN_MODULES)]


def test_the_rule_sees_a_branch_on_a_backend_name() -> None:
    assert _names_compared(ast.parse('if spec.compute.backend == "vmcluster":\n    pass')) == [(1, "vmcluster")]
    assert _names_compared(ast.parse('ok = backend in {"local", "azureml"}')) == [(1, "local"), (1, "azureml")]
    assert _names_compared(ast.parse('ok = doc.get("backend") != "local"')) == [(1, "local")]
    assert _names_compared(ast.parse('label = "local"')) == []
    assert _names_compared(ast.parse('if scheme == "azureml":\n    pass')) == []  # a URI scheme, not a backend


@pytest.mark.parametrize("path", _control_plane_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_branch_on_a_backend_name_outside_the_backends(path: Path) -> None:
    """Cost, the CLI, the state machine and the spec ask a backend's planner, capabilities or compute
    section what it does; they never compare its name."""
    assert _names_compared(ast.parse(path.read_text(), str(path))) == []


def test_every_registered_backend_has_a_compute_section() -> None:
    assert backends_where(lambda section: True) == list(REGISTRY)
    assert all(section.model_fields["backend"].default for section in COMPUTE_SECTIONS)


@pytest.mark.parametrize("section", COMPUTE_SECTIONS, ids=lambda s: s.model_fields["backend"].default)
def test_an_error_in_every_compute_section_names_its_own_path(section: type[ComputeSection]) -> None:
    """pydantic puts the union's tag (``compute.<backend>.<field>``) into the location; the spec error takes
    it out for every registered section, a new one included, with nothing to list by hand."""
    backend = section.model_fields["backend"].default
    with pytest.raises(SpecError) as caught:
        load_spec(tiny_spec(compute={"backend": backend, "no_such_setting": 1}))
    places = [e["loc"] for e in caught.value.errors]
    assert "compute.no_such_setting" in places
    assert not [place for place in places if place.startswith(f"compute.{backend}")]


def test_union_tags_are_read_from_the_model() -> None:
    """A union member added to a model is a tag at once (the old hand-kept list let a new compute section's
    every error report ``compute.<backend>.<field>``)."""

    class Ours(ComputeSection):
        backend: Literal["ours"] = "ours"
        size: int = 1

    class Spec(BaseModel):
        compute: Annotated[LocalCompute | Ours, Field(discriminator="backend")]

    assert {"local", "ours"} <= union_tags(Spec)
    document = {"compute": {"backend": "ours", "size": "big"}}
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate(document)
    error = SpecError.from_validation_error(caught.value, document, Spec)
    assert [e["loc"] for e in error.errors] == ["compute.size"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_backend_says_why_it_does_what_it_declares(name: str) -> None:
    capabilities = REGISTRY[name].capabilities
    declared = set(type(capabilities).model_fields) - {"reasons"}
    assert set(capabilities.reasons) == declared
    assert all(reason.strip() for reason in capabilities.reasons.values())
