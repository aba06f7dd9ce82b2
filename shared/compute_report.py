"""What users see of an experiment's compute, as its backend's handle tells it (:class:`ComputeReport`).

The port's own type (``shared.ports.BackendHandle.compute_report`` returns it) on the floor below the ports,
so the port builds one without importing the records, which sit above it (they hold the spec); the record
keeps it as ``ExperimentRecord.compute`` (``shared.records`` re-exports it by name).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field


class ComputeReport(BaseModel):
    """What the compute went through, as its backend's handle tells it (the API's ``compute``, ``status``)."""

    driver_restarts: int = Field(default=0, ge=0, description="times the HPO driver was started again after dying")
    evictions: int = Field(default=0, ge=0, description="worker VMs lost (Spot evictions) and replaced")
    heartbeat_at: datetime | None = Field(default=None, description="the driver's last sign of life on the compute")
    link: str | None = Field(default=None, description="the run in Azure's own UI (the AzureML studio job page)")

    def summary(self, now: datetime | None = None, *, link: bool = True) -> str:
        """``2 workers evicted (replaced), driver restarted 1x, heartbeat 12 s ago, https://...``; "" when
        there is nothing to say (``status``, ``watch``, the dashboard)."""
        parts = []
        if self.evictions:
            parts.append(f"{self.evictions} workers evicted (replaced)")
        if self.driver_restarts:
            parts.append(f"driver restarted {self.driver_restarts}x")
        if self.heartbeat_at:
            seconds = max(((now or datetime.now(UTC)) - self.heartbeat_at).total_seconds(), 0.0)
            parts.append(f"heartbeat {seconds:.0f} s ago")
        if link and self.link:
            parts.append(self.link)
        return ", ".join(parts)
