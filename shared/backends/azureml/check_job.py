"""The data check on AzureML: one command job on the experiment's cluster before its sweep (offline, pure).

The local and vmcluster drivers check the data as a task on a worker before any trial
(``shared.hpo.run_driver.check_data_first``). AzureML runs no driver of ours, so the check is a command job of
its own, named after the experiment (:func:`check_job_name_for`: a redelivered step finds it instead of
submitting a second), with the trial's code, environment, data binding and identity. It runs
``python -m gpu_jobs.check_job`` with the trial's flags and writes its verdict to its ``check`` output; the
backend submits the sweep only once the verdict says the data fits (:mod:`shared.backends.azureml.backend`).

The verdict crosses in from the compute, so it is read as untrusted (:func:`read_verdict`): at most
:data:`MAX_VERDICT_BYTES`, one strict JSON document (no unknown keys, bounded fields). A verdict that is
none of that fails this experiment with a reason that says so, never the control plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from azure.ai.ml.entities import Command
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.backends.azureml.data_input import DataBinding
from shared.backends.azureml.sweep_job import (
    ComputeIdentity,
    command_job,
    data_flags,
    job_name_for,
    submitted_alone,
    with_install,
)
from shared.bounded import Text
from shared.records import DataCheckReport
from shared.spec import ExperimentSpec

CHECK_OUTPUT = "check"
VERDICT_FILE = "data_check.json"
"""What ``gpu_jobs.check_job`` writes into the job's ``check`` output (``gpu_jobs.check_job.VERDICT_FILE``)."""
MAX_VERDICT_BYTES = 64 * 1024
"""A verdict is a few hundred bytes; anything past this is not one."""
DATA_CHECK_FAILED = "data check failed"
"""The error's prefix, as the other backends' drivers write it (``shared.hpo.run_driver``)."""
_SUFFIX = "-check"


def check_job_name_for(experiment_id: str) -> str:
    """The check job's name: the sweep's (:func:`job_name_for`) plus ``-check``, within AzureML's 255."""
    return job_name_for(experiment_id)[: 255 - len(_SUFFIX)] + _SUFFIX


def check_command(spec: ExperimentSpec, data: DataBinding, *, install: bool) -> str:
    """``python -m gpu_jobs.check_job`` with the trial's data flags (after installing what reading needs)."""
    line = " ".join(["python -m gpu_jobs.check_job", *data_flags(spec, data, CHECK_OUTPUT)])
    return with_install(line, data.packages if install else ())


def build_check_job(
    spec: ExperimentSpec,
    experiment_id: str,
    *,
    code_dir: Path,
    data_asset_type: str | None = None,
    identity: ComputeIdentity | None = None,
    traceparent: str | None = None,
) -> Command:
    """The data check's command job for ``spec`` (see :func:`shared.backends.azureml.sweep_job.command_job`), as the
    ``command()`` builder makes it: ``jobs.create_or_update`` takes that form (a ``CommandJob`` it refuses)."""
    job = command_job(
        spec,
        experiment_id,
        code_dir=code_dir,
        line=lambda data, install: check_command(spec, data, install=install),
        output=CHECK_OUTPUT,
        data_asset_type=data_asset_type,
        identity=identity,
        traceparent=traceparent,
    )
    return submitted_alone(job, spec, experiment_id, name=check_job_name_for(experiment_id), label="data check")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Report(DataCheckReport):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Passed(_Strict):
    status: Literal["passed"]
    check: _Report


class _Failed(_Strict):
    status: Literal["failed"]
    reason: Text = Field(min_length=1)


_VERDICT: TypeAdapter[_Passed | _Failed] = TypeAdapter(Annotated[_Passed | _Failed, Field(discriminator="status")])


@dataclass(frozen=True)
class Verdict:
    """What the check found: ``report`` when the data fits, else ``error`` (the experiment's error, in full)."""

    report: DataCheckReport | None = None
    error: str | None = None


def parse_verdict(data: bytes) -> Verdict:
    """The verdict ``data`` holds; an oversized or malformed one is an error saying so (never its content)."""
    if len(data) > MAX_VERDICT_BYTES:
        return Verdict(error=f"the data check's verdict is over {MAX_VERDICT_BYTES} bytes: not a verdict")
    try:
        parsed = _VERDICT.validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        return Verdict(
            error=f"the data check's verdict is not valid ({exc.error_count()} errors; {where}: {first['msg']})"
        )
    if isinstance(parsed, _Failed):
        return Verdict(error=f"{DATA_CHECK_FAILED}: {' '.join(parsed.reason.split())}")
    return Verdict(report=DataCheckReport.model_validate(parsed.check.model_dump()))


def read_verdict(folder: Path) -> Verdict:
    """The verdict in a downloaded ``check`` output: its one file, read boundedly and parsed strictly."""
    path = folder / VERDICT_FILE
    if not path.is_file():
        return Verdict(error=f"the data check wrote no {VERDICT_FILE} to its '{CHECK_OUTPUT}' output")
    with path.open("rb") as handle:
        return parse_verdict(handle.read(MAX_VERDICT_BYTES + 1))
