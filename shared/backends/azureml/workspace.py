"""The AzureML workspace: the calls the backend makes (:class:`WorkspaceClient`) and the real client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from azure.ai.ml.entities import AmlCompute, Command, Job, Model
from azure.core.exceptions import ResourceNotFoundError

from shared.backends.arm import DEFAULT_RETRY, RetrySettings, arm_call, is_not_found
from shared.backends.azureml.section import AzureMLCompute
from shared.backends.azureml.sweep_job import TAG_EXPERIMENT
from shared.config import AzureMLSettings, AzureSettings
from shared.errors import BackendError
from shared.records import RegisteredModel

T = TypeVar("T")


@dataclass(frozen=True)
class JobInfo:
    """What the backend needs of an AzureML job (the sweep or one of its trials)."""

    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    modified_at: datetime | None = None
    studio_url: str | None = None

    @classmethod
    def from_job(cls, job: Any) -> JobInfo:
        context = getattr(job, "creation_context", None)
        return cls(
            name=str(job.name),
            # azure-ai-ml returns a JobStatus (a str enum) for jobs.get: str() of it is "JobStatus.RUNNING"
            status=str(getattr(job.status, "value", job.status) or "Unknown"),
            tags=dict(job.tags or {}),
            properties=dict(getattr(job, "properties", None) or {}),
            created_at=getattr(context, "created_at", None),
            modified_at=getattr(context, "last_modified_at", None),
            studio_url=getattr(job, "studio_url", None),
        )


@dataclass(frozen=True)
class RunMetrics:
    """A trial's MLflow run: logged params (strings), latest metrics, the primary metric by step."""

    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[int, float]
    status: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


class WorkspaceClient(Protocol):
    """The workspace operations the backend uses (:class:`AzureMLClient`; tests give a fake)."""

    def ensure_compute(self, compute: AmlCompute) -> AmlCompute: ...

    def find(self, name: str) -> JobInfo | None: ...

    def submit(self, job: Job | Command) -> str: ...

    def get(self, name: str) -> JobInfo: ...

    def list_children(self, parent_name: str) -> list[JobInfo]: ...

    def child_metrics(self, name: str, primary_metric: str) -> RunMetrics | None: ...

    def download_output(self, job_name: str, output_name: str, path: Path) -> Path: ...

    def cancel(self, name: str) -> None: ...

    def register_model(self, model: Model) -> RegisteredModel: ...

    def model_tags(self, name: str) -> list[dict[str, str]]: ...

    def data_asset_type(self, name: str, version: str | None) -> str: ...


def workspace_settings(compute: AzureMLCompute, azure: AzureSettings, azureml: AzureMLSettings) -> tuple[str, str, str]:
    """Subscription, resource group and workspace from the spec, else the deployment's settings."""
    values = {
        "AZURE_SUBSCRIPTION_ID": compute.subscription_id or azure.subscription_id,
        "AZURE_RESOURCE_GROUP": compute.resource_group or azure.resource_group,
        "AZUREML_WORKSPACE": compute.workspace or azureml.workspace,
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise BackendError(
            "the AzureML workspace is not configured: set compute.subscription_id/resource_group/workspace "
            f"in the spec or {', '.join(missing)} in the environment",
            retryable=False,
        )
    return values["AZURE_SUBSCRIPTION_ID"], values["AZURE_RESOURCE_GROUP"], values["AZUREML_WORKSPACE"]


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, ResourceNotFoundError) or is_not_found(exc)


def _from_millis(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)


class AzureMLClient:
    """The only code that talks to the workspace: ``MLClient`` (built on first use with
    ``DefaultAzureCredential``) and the workspace's MLflow tracking server. Every call goes through
    :func:`shared.backends.arm.arm_call` (transient errors retried, the rest :class:`BackendError`)."""

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        *,
        credential: Any = None,
        mlflow_tracking_uri: str | None = None,
        retry: RetrySettings = DEFAULT_RETRY,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace = workspace
        self._credential = credential
        self._ml_client: Any = None
        self._tracking_uri = mlflow_tracking_uri
        self._mlflow: Any = None
        self.retry = retry

    @classmethod
    def from_compute(cls, compute: AzureMLCompute, azure: AzureSettings, azureml: AzureMLSettings) -> AzureMLClient:
        return cls(*workspace_settings(compute, azure, azureml))

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        return arm_call(action, fn, self.retry)

    @property
    def ml_client(self) -> Any:
        if self._ml_client is None:
            from azure.ai.ml import MLClient

            credential = self._credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            # retry_total=0: arm_call retries whole operations; SDK retries on top would multiply them.
            self._ml_client = MLClient(
                credential, self.subscription_id, self.resource_group, self.workspace, retry_total=0
            )
        return self._ml_client

    def ensure_compute(self, compute: AmlCompute) -> AmlCompute:
        """The cluster called ``compute.name``, created (and waited for) if missing; an existing one is
        left as it is."""

        def get_or_create() -> AmlCompute:
            found: AmlCompute  # ml_client is untyped here
            try:
                found = self.ml_client.compute.get(compute.name)
                return found
            except Exception as exc:
                if not _not_found(exc):
                    raise
            found = self.ml_client.compute.begin_create_or_update(compute).result()
            return found

        return self._call(f"ensuring AmlCompute {compute.name}", get_or_create)

    def find(self, name: str) -> JobInfo | None:
        """The job called ``name``, or None."""

        def lookup() -> JobInfo | None:
            try:
                return JobInfo.from_job(self.ml_client.jobs.get(name))
            except Exception as exc:
                if _not_found(exc):
                    return None
                raise

        return self._call(f"looking up job {name}", lookup)

    def submit(self, job: Job | Command) -> str:
        """Create ``job`` (the sweep or the data check) unless a job of its name exists (a retried submit);
        return the name."""
        name = str(job.name)  # build_sweep_job and build_check_job always name it
        if self.find(name) is not None:
            return name
        try:
            created = self._call(f"creating job {name}", lambda: self.ml_client.jobs.create_or_update(job))
        except BackendError:
            if self.find(name) is not None:  # a concurrent submit created it first
                return name
            raise
        return str(created.name)

    def get(self, name: str) -> JobInfo:
        info = self.find(name)
        if info is None:
            raise BackendError(f"AzureML job {name} does not exist", retryable=False)
        return info

    def list_children(self, parent_name: str) -> list[JobInfo]:
        """The trials of a sweep (``jobs.list(parent_job_name=...)``)."""
        return self._call(
            f"listing the trials of {parent_name}",
            lambda: [JobInfo.from_job(j) for j in self.ml_client.jobs.list(parent_job_name=parent_name) if j],
        )

    def _mlflow_client(self) -> Any:
        if self._mlflow is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:
                raise BackendError(
                    "reading trial metrics needs mlflow-skinny and azureml-mlflow beside the control plane",
                    retryable=False,
                ) from exc
            uri = self._tracking_uri or self._call(
                f"reading workspace {self.workspace}",
                lambda: self.ml_client.workspaces.get(self.workspace).mlflow_tracking_uri,
            )
            self._mlflow = MlflowClient(tracking_uri=uri)
        return self._mlflow

    def child_metrics(self, name: str, primary_metric: str) -> RunMetrics | None:
        """The MLflow run of job ``name`` (AzureML's run id is the job name), None if it has none yet."""
        client = self._mlflow_client()  # raises BackendError if MLflow is not installed
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(name)
            history = client.get_metric_history(name, primary_metric)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise BackendError(f"reading the MLflow run of {name} failed: {exc}", retryable=True) from exc
        by_step: dict[int, float] = {}
        for point in sorted(history, key=lambda m: (m.step, m.timestamp)):
            by_step[int(point.step)] = float(point.value)
        return RunMetrics(
            params=dict(run.data.params),
            metrics={k: float(v) for k, v in run.data.metrics.items()},
            history=by_step,
            status=run.info.status,
            start_time=_from_millis(run.info.start_time),
            end_time=_from_millis(run.info.end_time),
        )

    def download_output(self, job_name: str, output_name: str, path: Path) -> Path:
        """Download a named output of a job (``jobs.download``); return the folder holding its files."""
        self._call(
            f"downloading output {output_name} of {job_name}",
            lambda: self.ml_client.jobs.download(job_name, download_path=str(path), output_name=output_name),
        )
        return Path(path) / "named-outputs" / output_name

    def cancel(self, name: str) -> None:
        """Ask AzureML to cancel a job (``jobs.begin_cancel``); does not wait for it to stop."""
        self._call(f"cancelling job {name}", lambda: self.ml_client.jobs.begin_cancel(name))

    def register_model(self, model: Model) -> RegisteredModel:
        """Register ``model`` (``models.create_or_update``) unless a version of its name already carries
        its experiment tag (a retried finalize); return the registered name and version."""
        experiment = (model.tags or {}).get(TAG_EXPERIMENT)

        def register() -> Any:
            try:
                for existing in self.ml_client.models.list(name=model.name):
                    if experiment is not None and (existing.tags or {}).get(TAG_EXPERIMENT) == experiment:
                        return existing
            except Exception as exc:
                if not _not_found(exc):
                    raise
            return self.ml_client.models.create_or_update(model)

        registered = self._call(f"registering model {model.name}", register)
        return RegisteredModel(name=str(registered.name), version=str(registered.version), id=registered.id)

    def model_tags(self, name: str) -> list[dict[str, str]]:
        """The tags of every version of model ``name`` (``[]`` when there is none)."""

        def versions() -> list[dict[str, str]]:
            try:
                return [dict(m.tags or {}) for m in self.ml_client.models.list(name=name)]
            except Exception as exc:
                if _not_found(exc):
                    return []
                raise

        return self._call(f"listing the versions of model {name}", versions)

    def data_asset_type(self, name: str, version: str | None) -> str:
        """The type (``uri_file`` or ``uri_folder``) of data asset ``name`` (``version``, else the latest);
        an ``mltable`` or a missing asset is an error in the spec, not retried."""

        def lookup() -> str:
            try:
                data = (
                    self.ml_client.data.get(name, version=version)
                    if version
                    else self.ml_client.data.get(name, label="latest")
                )
            except Exception as exc:
                if _not_found(exc):
                    raise BackendError(
                        f"dataset.uri: AzureML data asset {name}:{version or 'latest'} does not exist in workspace "
                        f"{self.workspace}",
                        retryable=False,
                    ) from exc
                raise
            return str(getattr(data.type, "value", data.type))

        kind = self._call(f"reading data asset {name}", lookup)
        if kind not in {"uri_file", "uri_folder"}:
            raise BackendError(
                f"dataset.uri: data asset {name} is {kind!r}; the trial reads a uri_file or uri_folder asset",
                retryable=False,
            )
        return kind
