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
    "shared/backends/local/driver.py": "the local driver's main: its own process's edge (the price file its "
    "environment names)",
}
"""Where shared/ may read the environment: where settings are built, at a process's edge."""


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
    choose them. There is no list of exceptions: the Event Grid topic (``Settings.events``), the price file
    (``Settings.prices_file``) and the API's callers (``create_api(auth=...)``) came off the last one."""
    name = path.relative_to(ROOT).as_posix()
    if name.startswith(tuple(SETTINGS_EDGES)):
        return
    assert _reads_the_environment(ast.parse(path.read_text(), name)) == []


def test_an_edge_is_a_module_that_reads_the_environment() -> None:
    """An edge that no longer reads the environment leaves the list (else it would hide a new read there)."""
    for edge in SETTINGS_EDGES:
        files = sorted((ROOT / edge).rglob("*.py")) if edge.endswith("/") else [ROOT / edge]
        assert any(_reads_the_environment(ast.parse(f.read_text(), str(f))) for f in files), edge


# ------------------------------------------------------------------------------- import layering
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "shared/errors.py",
            "shared/bounded.py",
            "shared/config.py",
            "shared/zipstream.py",
            "shared/http_pool.py",
            "shared/api_edge.py",
            "shared/telemetry/traceparent.py",
            "shared/compute_report.py",
        ),
    ),
    ("sections", ("shared/cost/billing.py", "shared/cost/catalogue.py", "shared/compute_spec.py")),
    ("ports", ("shared/ports.py",)),
    (
        "spec",
        (
            "shared/spec/",
            "shared/backends/__init__.py",
            *(f"shared/backends/{n}/__init__.py" for n in REGISTRY),
            *(f"shared/backends/{n}/section.py" for n in REGISTRY),
            "shared/backends/azureml/scope.py",
            "shared/cost/estimate.py",
        ),
    ),
    ("records", ("shared/records.py", "shared/trials.py", "shared/cost/")),
    (
        "adapters",
        (
            "shared/store/",
            "shared/queues/",
            "shared/events/",
            "shared/auth/",
            "shared/api_guard.py",
            "shared/telemetry/",
        ),
    ),
    ("engine", ("shared/hpo/",)),
    ("dashboard", ("shared/dashboard/",)),
    ("backends", ("shared/backends/",)),
    ("control", ("shared/handlers/", "shared/context.py")),
    (
        "edge",
        (
            "shared/api.py",
            "shared/runner.py",
            "shared/cli/",
            "shared/dashboard/routes.py",
            "shared/dashboard/docs.py",
            "function_app.py",
        ),
    ),
)
"""The floors, bottom first: a module imports (at run time, lazily included) only from its floor or below.
The spec sits above the ports because its ``compute`` union is the registry's (a backend package's face,
``__init__.py`` with its ``BACKEND``, and its section are on the spec's floor; only the face's factories
reach up into the package, when called), and below the records, which hold an ``ExperimentSpec``."""


def _floor(path: str) -> int | None:
    matches = [
        (len(prefix), floor)
        for floor, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix))
    ]
    return max(matches)[1] if matches else None


def _module_file(module: str) -> str | None:
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None


def _runtime_imports(tree: ast.Module) -> list[str]:
    """The shared modules ``tree`` imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared"):
            found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("shared")]
    return found


def _arrows_back_up() -> set[tuple[str, str]]:
    arrows = set()
    for path in [*sorted((ROOT / "shared").rglob("*.py")), ROOT / "function_app.py"]:
        name = path.relative_to(ROOT).as_posix()
        own = _floor(name)
        for module in _runtime_imports(ast.parse(path.read_text(), name)):
            target = _module_file(module)
            if target is None or own is None or (floor := _floor(target)) is None or floor <= own:
                continue
            face = name.endswith("/__init__.py") and target.startswith(name.removesuffix("__init__.py"))
            if not face:  # a backend package's face builds its backend when called
                arrows.add((name, target))
    return arrows


def test_imports_run_down_the_floors() -> None:
    """No import runs back up, lazily or not, and there is no list of exceptions: a port building a record's
    type (the compute report is the port's own, below it), the spec building the engine's Optuna objects
    (their builders are the engine's, ``shared.hpo.search_builders``), the engine and the dashboard importing
    each other. A new one fails here with its two files."""
    assert _arrows_back_up() == set()


def test_the_rule_sees_an_import_back_up() -> None:
    """The check itself: a lazy import in a function body, from the ports to the records, is an arrow."""
    tree = ast.parse("def f():\n    from shared.records import ExperimentRecord\n")
    targets = [_module_file(m) for m in _runtime_imports(tree)]
    assert "shared/records.py" in targets
    assert (_floor("shared/records.py") or 0) > (_floor("shared/ports.py") or 0)


def test_a_port_names_no_adapter_even_for_types() -> None:
    """``shared/ports.py`` is what adapters implement: it imports none of them, not even under
    ``TYPE_CHECKING`` (the compute credential and the ingestion report are the port's own types)."""
    tree = ast.parse((ROOT / "shared/ports.py").read_text())
    adapters = ("shared.store", "shared.queues", "shared.events", "shared.auth", "shared.backends.")
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert [m for m in imported if m.startswith(adapters)] == []


def test_only_the_registry_is_imported_from_outside_the_backends() -> None:
    """A backend is reached through the registry: code outside ``shared/backends/`` imports no backend's
    package (its section, handle or driver), so it cannot branch on one (``isinstance(spec.compute,
    LocalCompute)`` in the HPO engine, as run_driver did)."""
    packages = tuple(f"shared.backends.{name}" for name in REGISTRY)
    for path in [*sorted((ROOT / "shared").rglob("*.py")), ROOT / "function_app.py"]:
        name = path.relative_to(ROOT).as_posix()
        if name.startswith(OWN_MODULES):
            continue
        tree = ast.parse(path.read_text(), name)
        assert [m for m in _runtime_imports(tree) if m.startswith(packages)] == [], name
