"""What a remote compute (the vmcluster head's driver, an AzureML trial) needs to export to Application
Insights as the Function App does, and how it gets there without a VM's custom data or a job's command line.

* **Which identity.** The component refuses its instrumentation key (``DisableLocalAuth``); infra/ grants
  Monitoring Metrics Publisher on it to the Function App and to the computes' user-assigned identities.
  A compute therefore exports with *its own* identity: ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` becomes
  ``Authorization=AAD;ClientId=<the compute identity's client id>`` (the app's own ``ClientId`` is never
  passed on). A compute without an identity of ours (a VM deployment with no ``RAPIDS_HPO_VM_IDENTITY_*``)
  gets no Application Insights settings at all: the ingestion would refuse it.
* **Which road.** A VM's custom data (and so the ``docker run --env`` list in it) is readable by anyone
  who can read the VM; the settings travel instead as ``compute/telemetry.json`` in the experiment's compute
  area, written by the control plane beside the code archive and read by the head with the area's SAS
  (:func:`adopt_area_telemetry`). An AzureML trial gets them as the job's environment variables, not its
  command (:func:`job_environment`).
* **Nothing crosses unchecked, nothing is logged.** The document is parsed strictly
  (:class:`ComputeTelemetry`: known names, bounded values, no control characters; the traceparent by the
  strict W3C parser); a bad one costs the compute its telemetry only, and the message names fields, never
  values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shared.records import TraceParent
from shared.telemetry import api

log = logging.getLogger(__name__)
TELEMETRY_BLOB = "compute/telemetry.json"
"""The compute area's copy of the telemetry settings (control plane writes, the head reads)."""
MAX_DOCUMENT_BYTES = 16 * 1024
Setting = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[\x20-\x7e]+$")]
OtelName = Annotated[str, StringConstraints(pattern=r"^OTEL_[A-Z0-9_]{1,64}$")]
ClientId = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")]


class ComputeTelemetry(BaseModel):
    """The settings a compute exports with (``compute/telemetry.json``), parsed strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    traceparent: TraceParent = Field(default=None, description="the experiment's trace (dropped if malformed)")
    connection_string: Setting | None = Field(default=None, description="the component's (not a secret alone)")
    client_id: ClientId | None = Field(default=None, description="the compute identity's client id")
    otel: dict[OtelName, Setting] = Field(default_factory=dict, max_length=32, description="standard OTEL_*")

    def environment(self) -> dict[str, str]:
        """The process environment these settings mean on the compute."""
        env = dict(self.otel)
        if self.traceparent is not None:
            env["TRACEPARENT"] = self.traceparent
        if self.connection_string is not None:
            env["APPLICATIONINSIGHTS_CONNECTION_STRING"] = self.connection_string
            env["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] = "Authorization=AAD" + (
                f";ClientId={self.client_id}" if self.client_id else ""
            )
        return env


def for_compute(
    traceparent: str | None,
    identity_client_id: str | None,
    *,
    system_identity: bool = False,
    environ: Mapping[str, str] | None = None,
) -> ComputeTelemetry:
    """What the control plane hands a compute: the experiment's trace (the current step's span when it
    belongs to it), this app's ``OTEL_*`` exporter settings and its component's connection string, with the
    compute's identity (``identity_client_id``; ``system_identity``: the compute has a system-assigned one,
    as an AzureML cluster without ours). No identity, no connection string."""
    environ = os.environ if environ is None else environ
    connection = environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip() or None
    if not (identity_client_id or system_identity):
        connection = None
    otel = {k: v for k, v in environ.items() if k.startswith("OTEL_") and v.strip()}
    return ComputeTelemetry(
        traceparent=api.traceparent_for(traceparent),
        connection_string=connection,
        client_id=identity_client_id or None,
        otel=otel,
    )


def job_environment(settings: ComputeTelemetry) -> dict[str, str]:
    """An AzureML job's environment variables for these settings (the trial's ``gpu_jobs.telemetry``
    reads them; the cluster's managed identity answers the token requests)."""
    return settings.environment()


def read_document(data: bytes) -> ComputeTelemetry | None:
    """The area's document, or None if it is not one (logged by field names only: never a value)."""
    if len(data) > MAX_DOCUMENT_BYTES:
        log.warning("%s is larger than %d bytes: telemetry stays off", TELEMETRY_BLOB, MAX_DOCUMENT_BYTES)
        return None
    try:
        return ComputeTelemetry.model_validate_json(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in error["loc"]) or "(document)" for error in exc.errors()})
        log.warning("%s refused (%s): telemetry stays off", TELEMETRY_BLOB, ", ".join(fields)[:300])
        return None


def adopt_area_telemetry(area: Any, environ: MutableMapping[str, str] | None = None) -> bool:
    """The head: put the area's telemetry settings into this process's environment (before
    ``shared.telemetry.setup.configure``). False when there are none or they were refused."""
    from shared.errors import NotFound

    environ = os.environ if environ is None else environ
    try:
        data = area.get(TELEMETRY_BLOB, MAX_DOCUMENT_BYTES)
    except NotFound:
        return False
    except Exception as exc:  # unreadable (too large, storage down): the driver runs without telemetry
        log.warning("%s unreadable (%s): telemetry stays off", TELEMETRY_BLOB, type(exc).__name__)
        return False
    settings = read_document(data)
    if settings is None:
        return False
    environ.update(settings.environment())
    return True


def start_compute_telemetry(area: Any, service_name: str) -> str:
    """The vmcluster head: adopt the area's settings, then start telemetry as they say (the mode)."""
    from shared.telemetry.setup import configure

    adopt_area_telemetry(area)
    return configure(service_name)
