"""Shape rules the code keeps: only the registry and each backend's own modules name a backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.backends import REGISTRY
from shared.compute_spec import COMPUTE_SECTIONS, backends_where

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
