"""FAKE of ``AzureMLClient``, the boundary between our AzureML backend and a live workspace (unreachable here).

Every ``AzureMLClient`` call runs through the real azure-ai-ml client against the local stand-in
(``tests/azureml_server.py``); what no local endpoint can give is a sweep actually running on AmlCompute
(HyperDrive scheduling children, a policy cancelling them, a trial logging metrics and writing outputs).
``FakeWorkspace`` scripts those outcomes in memory, with a log of the calls made to it, for the mapping
tests (``tests/test_azureml.py``) and the backend conformance harness (``tests/conformance/backend.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.ai.ml.entities import AmlCompute, Command, Job
from azure.ai.ml.sweep import SweepJob

from shared.backends.azureml import CHECK_OUTPUT, JobInfo, RunMetrics, check_job_name_for, job_name_for
from shared.backends.azureml.refit_job import refit_job_name_for
from shared.errors import BackendError

EXP = "exp-aml-1"
JOB = job_name_for(EXP)
CHECK_JOB = check_job_name_for(EXP)
PASSED = json.dumps(
    {
        "status": "passed",
        "check": {
            "task": "binary",
            "task_reason": "inferred: a boolean target with 2 distinct values",
            "classes": 2,
            "rows": 1000,
            "rows_dropped_missing_target": 0,
            "features": 13,
        },
    }
).encode()
"""A passing verdict, as ``gpu_jobs.check_job`` writes it."""
REFIT_JOB = refit_job_name_for(EXP)
REFIT_MODEL = {"model.joblib": b"refit on all rows", "metrics.json": b"{}"}
"""What the refit job of the best trial writes to its ``model`` output (``gpu_jobs.refit_job``)."""
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
"""A sweep's creation time: relative to now, because a stopped sweep with no end time is measured
against the clock (a fixed date made the status-mapping test fail once it was an hour old)."""
COMPUTE = {"backend": "azureml", "subscription_id": "sub-1", "resource_group": "rg-1", "workspace": "ws-1"}
"""The ``compute`` section of a spec that names the fake's workspace."""


@dataclass
class FakeWorkspace:
    """Fake of ``AzureMLClient``: a workspace in memory, with a log of the calls made to it."""

    jobs: dict[str, JobInfo] = field(default_factory=dict)
    children: dict[str, list[JobInfo]] = field(default_factory=dict)
    runs: dict[str, RunMetrics] = field(default_factory=dict)
    outputs: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    computes: dict[str, AmlCompute] = field(default_factory=dict)
    submitted: list[Job | Command] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    check_verdict: bytes | None = PASSED
    """What a submitted data check job writes, done at once (``Completed``); None: it stays ``NotStarted`` for
    the test to play."""
    refit_model: dict[str, bytes] | None = field(default_factory=lambda: dict(REFIT_MODEL))
    """What a submitted refit job writes to its ``model`` output, done at once; None: it stays ``NotStarted``."""

    def ensure_compute(self, compute: AmlCompute) -> AmlCompute:
        self.calls.append(("ensure_compute", str(compute.name)))
        return self.computes.setdefault(str(compute.name), compute)

    def find(self, name: str) -> JobInfo | None:
        return self.jobs.get(name)

    def submit(self, job: Job | Command) -> str:
        name = str(job.name)
        if name in self.jobs:
            return name
        assert isinstance(job, SweepJob | Command), f"a job the backend does not submit: {type(job)}"
        if isinstance(job, SweepJob):
            assert job.trial is not None, "a sweep job without its trial"
            code_path = job.trial.code
        else:
            code_path = job.code
        assert code_path, "a job without its code"
        code = Path(str(code_path))
        assert (code / "gpu_jobs" / "train.py").is_file(), "the code is staged while the job is created"
        self.calls.append(("create", name))
        self.submitted.append(job)
        status = "NotStarted"
        if isinstance(job, Command) and name.endswith("-check") and self.check_verdict is not None:
            status = "Completed"
            self.outputs[(name, CHECK_OUTPUT)] = {"data_check.json": self.check_verdict}
        if isinstance(job, Command) and name.endswith("-refit") and self.refit_model is not None:
            status = "Completed"
            self.outputs[(name, "model")] = dict(self.refit_model)
        self.jobs[name] = JobInfo(name, status, studio_url=f"https://ml.azure.com/runs/{name}")
        return name

    def get(self, name: str) -> JobInfo:
        if name not in self.jobs:  # as AzureMLClient.get answers a job the workspace lacks
            raise BackendError(f"AzureML job {name} does not exist", retryable=False)
        return self.jobs[name]

    def list_children(self, parent_name: str) -> list[JobInfo]:
        return list(self.children.get(parent_name, []))

    def child_metrics(self, name: str, primary_metric: str) -> RunMetrics | None:
        self.calls.append(("child_metrics", name))
        return self.runs.get(name)

    def download_output(self, job_name: str, output_name: str, path: Path) -> Path:
        self.calls.append(("download", job_name))
        folder = path / "named-outputs" / output_name
        for name, data in self.outputs.get((job_name, output_name), {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder

    def cancel(self, name: str) -> None:
        self.calls.append(("cancel", name))
        self.jobs[name] = replace(self.jobs[name], status="CancelRequested")

    def set_status(self, name: str, status: str, **changes: Any) -> None:
        self.jobs[name] = replace(self.jobs[name], status=status, **changes)

    def model_tags(self, name: str) -> list[dict[str, str]]:
        return []


def child(n: int, status: str, *, minutes: float = 2, created: datetime = T0) -> JobInfo:
    return JobInfo(f"{JOB}_{n}", status, created_at=created, modified_at=created + timedelta(minutes=minutes))


def run(
    history: dict[int, float], *, params: dict[str, str] | None = None, seconds: float = 120, **final: float
) -> RunMetrics:
    last = history[max(history)] if history else None
    metrics = {"accuracy": last} if last is not None and "accuracy" not in final else {}
    metrics.update(final)
    return RunMetrics(
        params=params or {"engine": "gpu"},
        metrics={k: v for k, v in metrics.items() if v is not None},
        history=history,
        status="FINISHED",
        start_time=T0,
        end_time=T0 + timedelta(seconds=seconds),
    )
