"""Where the control plane and an experiment's cluster meet: the experiment's compute area.

The area and its ingestion are :mod:`shared.store.compute`'s (one container per experiment, ingested into
the tables each poll, deleted at teardown); the VMs reach it as the experiment's own identity
(:mod:`.identity`). This module adds what the cluster needs there beyond trials and artifacts:

    compute/code.zip                 ``shared`` and ``gpu_jobs`` (the VMs' image lacks them), written by
                                     the control plane, fetched by ``boot.py``
    compute/tls.json                 the cluster's TLS key and certificate (``{"ca", "cert", "key"}``),
                                     written by the control plane at submit, read by ``boot.py``: a secret
                                     the VMs' customData never holds
    artifacts/driver/heartbeat.json  the driver's last sign of life (UTC time), every few seconds
    artifacts/driver/outcome.json    how the run ended (``shared.config.DRIVER_OUTCOME_ARTIFACT``)

The record the compute reads (``experiment.json``: the spec, and its status for a cancel) is
published by the store on every ingestion.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

CODE_BLOB = "compute/code.zip"
TLS_BLOB = "compute/tls.json"
HEARTBEAT_ARTIFACT = "driver/heartbeat.json"
CODE_PACKAGES = ("shared", "gpu_jobs")
ROOT = Path(__file__).resolve().parents[3]


def build_code_archive(path: Path, root: Path = ROOT) -> Path:
    """Zip ``shared`` and ``gpu_jobs`` (sources only): what the VMs put on their Python path."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in CODE_PACKAGES:
            for file in sorted((root / package).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    archive.write(file, file.relative_to(root).as_posix())
    return path


class Heartbeat(BaseModel):
    """``driver/heartbeat.json`` as the control plane reads it (the compute writes it: parsed, not trusted)."""

    model_config = ConfigDict(extra="ignore")

    at: AwareDatetime = Field(description="the driver's clock when it wrote this (UTC)")
