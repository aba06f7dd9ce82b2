"""The compute writes its area, the control plane ingests it: the part every backend whose driver we run
shares (local: a process here; vmcluster: the head VM).

The driver holds one credential, for its experiment's compute area (``ComputeAreas.issue_compute_credential``):
never the control plane's storage connection string, tables or secrets. Each poll the backend takes what
the driver wrote through the one validated, bounded path (:func:`shared.store.ingest.ingest`, quotas and
the watermark included) and reads the driver's outcome from the store only after that; a refusal fails
the run with the reason. :class:`AreaHandle` is the handle's part of it (the watermark), and
:func:`credential_ttl` how long a credential lives.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, Field

from shared.config import CREDENTIAL_MARGIN_SECONDS, CREDENTIAL_MAX_SECONDS
from shared.ports import ComputeAreas

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

log = logging.getLogger(__name__)


class AreaHandle(BaseModel):
    """What a backend handle keeps of its compute area: whether it exists, and the ingestion watermark."""

    area: bool = Field(default=False, description="the experiment's compute area exists")
    ingested_until: datetime | None = Field(default=None, description="the compute area's ingestion watermark")
    ingested_seen: str = Field(default="", description="tags of the blobs taken in at the watermark's second")


HandleT = TypeVar("HandleT", bound=AreaHandle)


def ingest_area(
    areas: ComputeAreas, experiment_id: str, handle: HandleT, quota_bytes: int
) -> tuple[HandleT, str | None]:
    """Take what the compute wrote since the watermark into the store (validated and bounded there); the
    handle with the new watermark, and what was refused in one line (None when nothing was)."""
    if not handle.area:
        return handle, None
    report = areas.ingest_compute_output(
        experiment_id, since=handle.ingested_until, seen=handle.ingested_seen, quota_bytes=quota_bytes
    )
    problem = report.problem()
    if problem:
        log.warning("experiment %s: %s", experiment_id, problem)
    return handle.model_copy(update={"ingested_until": report.watermark, "ingested_seen": report.seen}), problem


def credential_ttl(spec: ExperimentSpec) -> timedelta:
    """How long a compute credential lives: the run's ``limits.timeout`` and a margin, or the longest a
    credential may (a run without a timeout)."""
    timeout = spec.limits.timeout
    seconds = float(timeout) + CREDENTIAL_MARGIN_SECONDS if timeout else float(CREDENTIAL_MAX_SECONDS)
    return timedelta(seconds=min(seconds, CREDENTIAL_MAX_SECONDS))
