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


# --------------------------------------------------------------------- one configuration path
SETTINGS_EDGES = {
    "shared/config.py": "builds Settings from the environment (Settings.from_env, env)",
    "shared/auth/settings.py": "builds AuthSettings from the environment",
    "shared/context.py": "the process-wide context is built from the environment once (the Functions edge)",
    "shared/cli/": "the CLI is an edge: it reads its own settings and builds Settings once",
    "shared/backends/vmcluster/boot.py": "the VMs' first program: its own process's edge (stdlib only)",
    "shared/http_pool.py": "requests' own semantics: proxy and CA bundle variables, as requests reads them",
    "shared/telemetry/": "OpenTelemetry's SDK is configured by OTEL_* variables at process start",
    "shared/backends/local/backend.py": "starts the driver process: hands it this process's environment, less the "
    "control plane's credentials (the driver's edge)",
}
"""Where shared/ may read the environment: where settings are built, at a process's edge."""
CALL_TIME_READS = {
    "shared/api.py": "create_api falls back to AuthSettings.from_env() when no settings are passed",
    "shared/events/__init__.py": "the Event Grid topic is read when the announcer is opened",
    "shared/cost/catalogue.py": "RAPIDS_HPO_PRICES_FILE is read when the catalogue is first loaded",
    "shared/backends/azureml/scope.py": "AzureMLScope.from_env: the hosted rules read the scope at validation",
    "shared/backends/azureml/section.py": "hosted_problems asks AzureMLScope.from_env()",
    "shared/backends/azureml/backend.py": "the backend's scope and identity default to the environment's",
    "shared/backends/azureml/sweep_job.py": "ComputeIdentity.from_env",
    "shared/backends/azureml/workspace.py": "workspace_settings defaults to the environment's",
}
"""Call-time reads left (issue 21b): each is to take a typed sub-settings passed in; none may be added."""


def _reads_the_environment(tree: ast.AST) -> list[int]:
    """Lines that read the environment: ``env(...)``, ``os.environ``, ``os.getenv`` or ``X.from_env()``."""
    found = []
    for node in ast.walk(tree):
        if (
            (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "env")
            or (isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"})
            or (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_env")
        ):
            found.append(node.lineno)
    return found


def test_the_rule_sees_an_environment_read() -> None:
    for code in ('x = env("RAPIDS_HPO_HOME")', 'x = os.environ.get("A")', 'x = os.getenv("A")', "s = S.from_env()"):
        assert _reads_the_environment(ast.parse(code)) == [1], code
    assert _reads_the_environment(ast.parse("x = settings.azure.subscription_id")) == []


@pytest.mark.parametrize("path", sorted((ROOT / "shared").rglob("*.py")), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_settings_are_read_once_at_the_edge(path: Path) -> None:
    """Settings are built once, at a process's edge (function_app.py, the CLI, a driver's main), and passed
    in: nothing in shared/ reads the environment at call time, where a test or a second app could not
    choose them."""
    name = path.relative_to(ROOT).as_posix()
    if name.startswith(tuple(SETTINGS_EDGES)) or name in CALL_TIME_READS:
        return
    assert _reads_the_environment(ast.parse(path.read_text(), name)) == []


def test_the_list_of_call_time_reads_only_shrinks() -> None:
    """An entry fixed is an entry removed (else the list would hide a new read in the same file)."""
    for name in CALL_TIME_READS:
        assert _reads_the_environment(ast.parse((ROOT / name).read_text(), name)), f"{name} no longer reads it"
