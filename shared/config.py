"""Names and settings shared by the code, host.json and infra/ (one place, checked by tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Queues (Azure Storage queues in Azure, SQLite tables locally).
QUEUE_REQUESTS = "experiment-requests"
"""Specs submitted by other services (Event Grid, Logic Apps, scripts)."""
QUEUE_EVENTS = "experiment-events"
"""Internal state-machine events."""
QUEUE_STATUS = "experiment-status"
"""One message per experiment reaching a terminal state, for other services to react to."""
QUEUE_TRUSTED_REQUESTS = "experiment-requests-trusted"
"""Specs from one trusted service, whose envelope may name the submitter (``submitted_by``): its send role
(Storage Queue Data Message Sender) is assigned on this queue only, to that service (README)."""
QUEUES = (QUEUE_REQUESTS, QUEUE_TRUSTED_REQUESTS, QUEUE_EVENTS, QUEUE_STATUS)
POISON_SUFFIX = "-poison"

# Tables and blob containers.
TABLE_EXPERIMENTS = "experiments"
TABLE_TRIALS = "trials"
TABLES = (TABLE_EXPERIMENTS, TABLE_TRIALS)  # idempotency claims are rows of experiments
CONTAINER_ARTIFACTS = "artifacts"
CONTAINER_SECRETS = "secrets"
"""Credentials the control plane keeps (a Dask cluster's TLS keys): never listed or served, and out of
reach of the compute's identity, which may write only to ``artifacts``."""
CONTAINERS = (CONTAINER_ARTIFACTS, CONTAINER_SECRETS)

DRIVER_OUTCOME_ARTIFACT = "driver/outcome.json"
DATA_CHECK_ARTIFACT = "driver/data_check.json"
"""What the driver's data check learned before any trial (task, its reason, rows): ``gpu_jobs.data_check``."""
"""Written by the HPO driver when it ends; the poll step reads it."""
MODEL_PREFIX = "model/"
"""Artifact prefix of the best trial's refitted model."""
FRONT_MODEL_PREFIX = "front-models/"
"""Artifact prefix of the other kept Pareto front members' models, ``front-models/<number>/``: apart from
``model/``, so the best model's zip never holds another trial's files."""


def front_model_prefix(number: int) -> str:
    return f"{FRONT_MODEL_PREFIX}{number}/"


EXPERIMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""What an experiment id may be at every edge (API path, queue envelope): ASCII, one path segment, a table
key, a blob prefix and an Azure resource-name part. Generated ids look like ``exp-20261201082600-a1b2c3``."""

# How long an experiment's compute credential (its SAS) may live, and how long it outlives the run.
CREDENTIAL_MAX_SECONDS = 7 * 24 * 3600
"""User-delegation keys live at most seven days (Azure's limit); account-key SAS are capped alike."""
CREDENTIAL_MARGIN_SECONDS = 6 * 3600
"""The compute's credential outlives the experiment's ``limits.timeout`` by this much."""
MAX_RUN_SECONDS = CREDENTIAL_MAX_SECONDS - CREDENTIAL_MARGIN_SECONDS
"""The longest ``limits.timeout`` (and ``trial_timeout``) a spec may ask for: a run must end while the
credential its compute writes with is still valid."""

# Queue semantics mirrored from host.json (tests check they agree).
MAX_DEQUEUE_COUNT = 5

# Environment settings: name -> documented default ("" = unset means "not used").
ENV_DEFAULTS: dict[str, str] = {
    "AzureWebJobsStorage": "",
    "AzureWebJobsStorage__accountName": "",
    "RAPIDS_HPO_HOME": ".rapids-hpo",
    "RAPIDS_HPO_POLL_SECONDS": "10",
    "RAPIDS_HPO_STALL_SECONDS": "900",
    "RAPIDS_HPO_CANCEL_WAIT_SECONDS": "600",
    "AZURE_SUBSCRIPTION_ID": "",
    "AZURE_RESOURCE_GROUP": "",
    "AZURE_LOCATION": "",
    "AZUREML_WORKSPACE": "",
    # The AzureML backend (shared.backends.azureml.scope, shared.backends.azureml): the clusters' managed identity
    # (jobs run as it) and what a hosted deployment lets a spec touch in the workspace.
    "AZUREML_COMPUTE_IDENTITY_ID": "",
    "AZUREML_COMPUTE_IDENTITY_CLIENT_ID": "",
    "AZUREML_COMPUTE_ALLOWLIST": "",
    "AZUREML_MODEL_PREFIX": "",
    "AZUREML_IMAGE_PATTERN": "",
    "RAPIDS_HPO_VM_IDENTITY_ID": "",
    "RAPIDS_HPO_VM_IDENTITY_CLIENT_ID": "",
    # The control plane's storage account (ARM id): each vmcluster experiment's VM identity gets a role on its
    # container there, so no secret goes into the VMs' customData.
    "RAPIDS_HPO_STORAGE_ACCOUNT_ID": "",
    # The deployment's container registry (vmcluster): its login server and ARM id (each experiment's VM identity
    # gets AcrPull there), and the project image built into it, by digest (README: deploy).
    "RAPIDS_HPO_REGISTRY": "",
    "RAPIDS_HPO_REGISTRY_ID": "",
    "RAPIDS_HPO_IMAGE": "",
    "RAPIDS_HPO_INSTANCE_ID": "",
    "RAPIDS_HPO_API_URL": "http://127.0.0.1:7071",
    "RAPIDS_HPO_FUNCTION_KEY": "",
    # CloudEvents on Event Grid (shared.events): off while the endpoint is unset.
    "EVENTGRID_TOPIC_ENDPOINT": "",
    "EVENTGRID_TOPIC_KEY": "",
    "RAPIDS_HPO_EVENTS_SOURCE": "/rapids-hpo-control",
    "RAPIDS_HPO_PRICES_FILE": "",
    "RAPIDS_HPO_HOSTED": "",
    "RAPIDS_HPO_DATA_HOSTS": "",
    # The web edge (shared.api_guard): host names the API answers to beside loopback and the Function App's
    "RAPIDS_HPO_ALLOWED_HOSTS": "",
    # Where `serve` leaves its key for the CLI (default: the user's state folder, platformdirs)
    "RAPIDS_HPO_STATE_DIR": "",
    # Callers' identities (shared.auth): "key" (the Functions key; its holder may do everything) or "entra".
    "RAPIDS_HPO_AUTH": "key",
    "RAPIDS_HPO_AUTH_TENANT_ID": "",
    "RAPIDS_HPO_AUTH_CLIENT_ID": "",
    "RAPIDS_HPO_AUTH_AUDIENCE": "",
    "RAPIDS_HPO_AUTH_AUTHORITY": "https://login.microsoftonline.com",
    "RAPIDS_HPO_READERS_SEE": "own",
    # The CLI's sign-in for an API in "entra" mode: the API's scope (api://<client-id>/.default) and how.
    "RAPIDS_HPO_API_SCOPE": "",
    "RAPIDS_HPO_CLI_CREDENTIAL": "cli",
    # What one experiment's compute may write into its area, in bytes (shared.store.ingest).
    "RAPIDS_HPO_MAX_ARTIFACT_BYTES": "2147483648",
    # The Application Insights component's resource id: the dashboard links an experiment's trace there.
    "RAPIDS_HPO_APPINSIGHTS_ID": "",
}
HOSTED_MARKER = "WEBSITE_SITE_NAME"
"""Set by Azure on every Function App: its presence turns hosted mode on."""
SITE_HOSTNAME = "WEBSITE_HOSTNAME"
"""Set by Azure on every Function App: its default host name (``<app>.azurewebsites.net``), which the web
edge trusts; custom domains go in ``RAPIDS_HPO_ALLOWED_HOSTS``."""
EASY_AUTH_MARKER = "WEBSITE_AUTH_ENABLED"
"""Set by App Service (``True``) when its built-in authentication runs in front of the app: the only case in
which the ``X-MS-CLIENT-PRINCIPAL`` header comes from the platform (which strips a client's own copy)."""


def env(name: str) -> str:
    """Read a setting declared in ``ENV_DEFAULTS`` (a typo is a ``KeyError``, not a silent default)."""
    return os.environ.get(name, ENV_DEFAULTS[name])


_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class ManagedIdentity:
    """A user-assigned managed identity: its ARM resource id and its client id."""

    resource_id: str
    client_id: str

    @classmethod
    def named(cls, resource_id: str, client_id: str) -> ManagedIdentity | None:
        """The identity when both ids are set, else None (the setting is not used)."""
        return cls(resource_id, client_id) if resource_id and client_id else None


@dataclass(frozen=True)
class AzureSettings:
    """Where this deployment's own Azure resources are: the defaults a spec may leave out, and the id that
    tags what it creates (the orphan sweeps consider only resources carrying it)."""

    subscription_id: str = ""
    """``AZURE_SUBSCRIPTION_ID``."""
    resource_group: str = ""
    """``AZURE_RESOURCE_GROUP``."""
    location: str = ""
    """``AZURE_LOCATION``."""
    instance_id: str = ""
    """``RAPIDS_HPO_INSTANCE_ID``."""
    vm_identity: ManagedIdentity | None = None
    """``RAPIDS_HPO_VM_IDENTITY_ID`` and ``_CLIENT_ID``: the identity the Dask VMs run as."""
    storage_account_id: str = ""
    """``RAPIDS_HPO_STORAGE_ACCOUNT_ID``: the control plane's storage account (the scope of experiment areas)."""
    registry: str = ""
    """``RAPIDS_HPO_REGISTRY``: the deployment's registry's login server (``<name>.azurecr.io``), or empty."""
    registry_id: str = ""
    """``RAPIDS_HPO_REGISTRY_ID``: that registry's ARM id, the scope of each experiment identity's AcrPull."""
    image: str = ""
    """``RAPIDS_HPO_IMAGE``: the project image in that registry, by digest (``<server>/rapids-hpo@sha256:...``)."""

    @classmethod
    def from_env(cls) -> AzureSettings:
        return cls(
            subscription_id=env("AZURE_SUBSCRIPTION_ID").strip(),
            resource_group=env("AZURE_RESOURCE_GROUP").strip(),
            location=env("AZURE_LOCATION").strip(),
            instance_id=env("RAPIDS_HPO_INSTANCE_ID").strip(),
            vm_identity=ManagedIdentity.named(
                env("RAPIDS_HPO_VM_IDENTITY_ID"), env("RAPIDS_HPO_VM_IDENTITY_CLIENT_ID")
            ),
            storage_account_id=env("RAPIDS_HPO_STORAGE_ACCOUNT_ID").strip(),
            registry=env("RAPIDS_HPO_REGISTRY").strip().lower(),
            registry_id=env("RAPIDS_HPO_REGISTRY_ID").strip(),
            image=env("RAPIDS_HPO_IMAGE").strip(),
        )


@dataclass(frozen=True)
class AzureMLSettings:
    """What the azureml backend uses of this deployment: its workspace, the identity its clusters run as,
    and what a hosted deployment lets a spec touch there (``""``: the backend's default)."""

    workspace: str = ""
    """``AZUREML_WORKSPACE``."""
    compute_identity: ManagedIdentity | None = None
    """``AZUREML_COMPUTE_IDENTITY_ID`` and ``_CLIENT_ID``: jobs run as the clusters' managed identity."""
    compute_allowlist: tuple[str, ...] = ()
    """``AZUREML_COMPUTE_ALLOWLIST``: clusters this deployment did not create that its jobs may use."""
    model_prefix: str = ""
    """``AZUREML_MODEL_PREFIX``: the names this deployment registers models under."""
    image_pattern: str = ""
    """``AZUREML_IMAGE_PATTERN``: the trial images a hosted deployment accepts."""

    @classmethod
    def from_env(cls) -> AzureMLSettings:
        return cls(
            workspace=env("AZUREML_WORKSPACE").strip(),
            compute_identity=ManagedIdentity.named(
                env("AZUREML_COMPUTE_IDENTITY_ID"), env("AZUREML_COMPUTE_IDENTITY_CLIENT_ID")
            ),
            compute_allowlist=tuple(env("AZUREML_COMPUTE_ALLOWLIST").replace(",", " ").split()),
            model_prefix=env("AZUREML_MODEL_PREFIX").strip(),
            image_pattern=env("AZUREML_IMAGE_PATTERN").strip(),
        )


@dataclass(frozen=True)
class EventSettings:
    """Where the control plane announces its CloudEvents (:mod:`shared.events`): off while
    ``topic_endpoint`` is empty."""

    topic_endpoint: str = ""
    """``EVENTGRID_TOPIC_ENDPOINT``."""
    topic_key: str = field(default="", repr=False)
    """``EVENTGRID_TOPIC_KEY``: a local or development topic's key; empty, the managed identity signs in."""
    source: str = ENV_DEFAULTS["RAPIDS_HPO_EVENTS_SOURCE"]
    """``RAPIDS_HPO_EVENTS_SOURCE``: this control plane's name in each event's ``source``."""

    @classmethod
    def from_env(cls) -> EventSettings:
        return cls(
            topic_endpoint=env("EVENTGRID_TOPIC_ENDPOINT").strip(),
            topic_key=env("EVENTGRID_TOPIC_KEY"),
            source=env("RAPIDS_HPO_EVENTS_SOURCE"),
        )


@dataclass(frozen=True)
class Settings:
    """The settings one process runs with, read from the environment once."""

    storage_connection_string: str
    storage_account_name: str
    home: Path
    poll_seconds: int
    stall_seconds: int
    hosted: bool = False
    """Hosted mode (:mod:`shared.spec.policy`): in a Function App or with ``RAPIDS_HPO_HOSTED=1``."""
    data_hosts: tuple[str, ...] = ()
    """``RAPIDS_HPO_DATA_HOSTS``: data hosts allowed in hosted mode beside Azure storage."""
    trusted_hosts: tuple[str, ...] = ()
    """Host names the API answers to beside loopback (:mod:`shared.api_guard`): ``RAPIDS_HPO_ALLOWED_HOSTS``
    and, in Azure, the Function App's own (``WEBSITE_HOSTNAME``, ``WEBSITE_SITE_NAME``)."""
    max_artifact_bytes: int = 2 * 1024**3
    """``RAPIDS_HPO_MAX_ARTIFACT_BYTES``: the quota on what one experiment's compute writes (all blobs)."""
    cancel_wait_seconds: int = 600
    """``RAPIDS_HPO_CANCEL_WAIT_SECONDS``: how long a cancelled run has to end with its best model (the
    driver stops its trials and refits the best finished one) before the teardown goes ahead without it."""
    azure: AzureSettings = field(default_factory=AzureSettings)
    azureml: AzureMLSettings = field(default_factory=AzureMLSettings)
    """The deployment's Azure defaults and identities (the backends read them from here, never the
    environment)."""
    events: EventSettings = field(default_factory=EventSettings)
    """The Event Grid topic the control plane announces to (none by default)."""
    prices_file: str = ""
    """``RAPIDS_HPO_PRICES_FILE``: a user's price catalogue laid over the bundled one (empty: none); the
    edge hands it to ``shared.cost.catalogue.use_prices_file``."""

    @property
    def uses_azure_storage(self) -> bool:
        return bool(self.storage_connection_string or self.storage_account_name)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            storage_connection_string=env("AzureWebJobsStorage"),
            storage_account_name=env("AzureWebJobsStorage__accountName"),
            home=Path(env("RAPIDS_HPO_HOME")).expanduser().resolve(),
            poll_seconds=int(env("RAPIDS_HPO_POLL_SECONDS")),
            stall_seconds=int(env("RAPIDS_HPO_STALL_SECONDS")),
            hosted=bool(os.environ.get(HOSTED_MARKER)) or env("RAPIDS_HPO_HOSTED").strip().lower() in _TRUE,
            data_hosts=tuple(h.lower() for h in env("RAPIDS_HPO_DATA_HOSTS").replace(",", " ").split()),
            trusted_hosts=_trusted_hosts(),
            max_artifact_bytes=int(env("RAPIDS_HPO_MAX_ARTIFACT_BYTES")),
            cancel_wait_seconds=int(env("RAPIDS_HPO_CANCEL_WAIT_SECONDS")),
            azure=AzureSettings.from_env(),
            azureml=AzureMLSettings.from_env(),
            events=EventSettings.from_env(),
            prices_file=env("RAPIDS_HPO_PRICES_FILE").strip(),
        )


def _trusted_hosts() -> tuple[str, ...]:
    """``RAPIDS_HPO_ALLOWED_HOSTS``, and in Azure the app's host name and its site name: App Service's front
    end forwards ``Host: <site>`` beside ``DISGUISED-HOST: <site>.azurewebsites.net``, and the Functions host
    puts the latter back (azure-functions-host PR 2833); either may reach the app."""
    configured = env("RAPIDS_HPO_ALLOWED_HOSTS").replace(",", " ").split()
    platform = [os.environ.get(SITE_HOSTNAME, ""), os.environ.get(HOSTED_MARKER, "")]
    return tuple(h.strip().lower() for h in [*configured, *platform] if h.strip())


AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development account (public, documented by Microsoft; not a secret)."""


def expand_connection_string(connection_string: str) -> str:
    """Spell out ``UseDevelopmentStorage=true`` as Azurite's explicit endpoints.

    Not every SDK release we can be pinned to parses the shorthand for every service (azureml-mlflow
    caps azure-storage-blob at a release whose parser rejects it), so expand it once, here.
    """
    if connection_string.strip().rstrip(";").lower() != "usedevelopmentstorage=true":
        return connection_string
    base = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={base}:10000/{AZURITE_ACCOUNT};QueueEndpoint={base}:10001/{AZURITE_ACCOUNT};"
        f"TableEndpoint={base}:10002/{AZURITE_ACCOUNT};"
    )
