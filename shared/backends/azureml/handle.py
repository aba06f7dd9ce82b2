"""The azureml backend's handle: what it keeps of one experiment in the record (``backend_state``)."""

from __future__ import annotations

from typing import Any, Literal

from shared.compute_report import ComputeReport
from shared.ports import BackendHandle, HandleUpdate, handle_changes
from shared.records import ExperimentRecord


class AzureMLHandle(BackendHandle):
    """The workspace, the AmlCompute cluster and the sweep job of one experiment."""

    kind: Literal["azureml"] = "azureml"
    compute_name: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    check_job: str | None = None
    """The data check's command job, submitted first; the sweep waits for its verdict."""
    job_name: str | None = None
    """The sweep job, submitted once the data check passed (None before)."""
    studio_url: str | None = None
    best_child: str | None = None
    """The best trial's child job (ranked on the final CV mean), whose parameters were refit."""
    refit_job: str | None = None
    """The command job that refit the best trial on all rows once the sweep ended; ``finalize`` stores its model."""
    refit_trial: int | None = None
    """The trial number ``refit_job`` refit."""
    model_files: int | None = None
    azureml_best_child: str | None = None
    """AzureML's own pick (best value ever logged), reported beside ``best_child``."""
    registered_model: dict[str, Any] | None = None
    """``output.register_model``: the registered name, version and id (also on the record)."""

    def compute_report(self) -> ComputeReport:
        return ComputeReport(link=self.studio_url)


def handle_update(record: ExperimentRecord, update: dict[str, Any]) -> HandleUpdate:
    """The fields of ``update`` that differ from the record's handle (a repeated call returns ``{}``)."""
    before = AzureMLHandle.model_validate(record.backend_state)
    return handle_changes(before, before.model_copy(update=update))
