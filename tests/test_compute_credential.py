"""Least privilege for compute (issue 10, finding 7): what an experiment's compute holds reaches only that
experiment's compute area, and the control plane ingests what it wrote.

The round trip runs over both stores (local folder, Azurite); the isolation proofs run on Azurite, with
clients built from nothing but the SAS the control plane minted, so Azure Storage itself decides.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueServiceClient

from shared.config import DRIVER_OUTCOME_ARTIFACT
from shared.errors import NotFound
from shared.ports import ComputeCredential
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, TrialState
from shared.spec import load_spec
from shared.store import AzureStore, LocalStore
from shared.store.compute import ComputeStore, ContainerArea, FolderArea, area_name
from shared.store.ingest import CONTROL_BLOBS, MAX_OTHER_BLOBS, trial_budget
from tests.control_plane import tiny_spec

DENIED = (ClientAuthenticationError, HttpResponseError)


def denied(call, *args, **kwargs) -> int:
    """Run ``call``; it must be refused by the storage service for want of authorization (401/403)."""
    with pytest.raises(DENIED) as raised:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, bytes | str):
            list(result)
    status = raised.value.status_code
    assert status in {401, 403}, f"{call}: {status} {raised.value}"
    return status


@pytest.fixture(params=["local", pytest.param("azure", marks=pytest.mark.azurite)])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        yield request.getfixturevalue("azure_store")


def experiment(store, experiment_id: str) -> ExperimentRecord:
    """A stored experiment whose spec allows 6 trials (ingestion takes trial numbers 0-5 only)."""
    spec = load_spec(tiny_spec(limits={"max_total_trials": 6, "max_concurrent_trials": 2})).to_document()
    return store.create_experiment(ExperimentRecord(id=experiment_id, name=experiment_id, spec=spec))


def trial(experiment_id: str, number: int, value: float = 0.5) -> TrialRecord:
    return TrialRecord(
        experiment_id=experiment_id, number=number, params={"max_depth": 4}, state=TrialState.COMPLETED, value=value
    )


# -------------------------------------------------------------------- the round trip, both stores
def test_compute_writes_with_its_credential_and_the_control_plane_ingests(store) -> None:
    experiment(store, "exp-a")
    credential = store.issue_compute_credential("exp-a", timedelta(hours=1))
    assert credential.experiment_id == "exp-a" and credential.expires_at > datetime.now(UTC)
    assert credential.token not in repr(credential) or not credential.token

    compute = ComputeStore.from_json(credential.to_json())  # all the compute receives
    assert compute.get_experiment("exp-a").spec == store.get_experiment("exp-a").spec
    compute.put_trial(trial("exp-a", 0, 0.7))
    compute.put_trial(trial("exp-a", 1, 0.8))
    compute.put_artifact("exp-a", "model/model.json", b"{}")
    compute.put_artifact("exp-a", DRIVER_OUTCOME_ARTIFACT, b'{"status": "COMPLETED"}')
    assert [t.number for t in compute.list_trials("exp-a")] == [0, 1]
    assert store.list_trials("exp-a") == []  # nothing reaches the tables until the control plane ingests

    report = store.ingest_compute_output("exp-a")
    assert sorted(report.trials) == [0, 1] and not report.refused
    assert sorted(report.artifacts) == [DRIVER_OUTCOME_ARTIFACT, "model/model.json"]
    assert [t.value for t in store.list_trials("exp-a")] == [0.7, 0.8]
    assert store.get_artifact("exp-a", DRIVER_OUTCOME_ARTIFACT) == b'{"status": "COMPLETED"}'

    record = store.get_experiment("exp-a")  # a cancel reaches the compute at the next ingestion
    store.update_experiment(record.model_copy(update={"status": ExperimentStatus.CANCELLING}))
    again = store.ingest_compute_output("exp-a", since=report.watermark)
    assert compute.get_experiment("exp-a").status is ExperimentStatus.CANCELLING
    assert set(again.trials) <= {0, 1}  # at or after the watermark only

    store.revoke_compute_credential("exp-a")
    with pytest.raises((HttpResponseError, NotFound)):  # the area is gone
        compute.get_experiment("exp-a")
    assert store.ingest_compute_output("exp-a").trials == []


def test_the_watermark_takes_each_blob_once(store) -> None:
    """Issue 20: the inclusive watermark copied the newest blob again on every poll. Now a blob is taken in
    once, a rewritten one again, and one written in the watermark's own second still is."""
    experiment(store, "exp-a")
    compute = ComputeStore.from_credential(store.issue_compute_credential("exp-a", timedelta(hours=1)))
    compute.put_trial(trial("exp-a", 0))
    compute.put_artifact("exp-a", "model/model.json", b"{}")
    first = store.ingest_compute_output("exp-a")
    assert first.trials == [0] and first.artifacts == ["model/model.json"] and first.seen

    def again():
        return store.ingest_compute_output("exp-a", since=first.watermark, seen=first.seen)

    for _ in range(3):  # nothing new: nothing copied, however often it polls
        repeat = again()
        assert (repeat.trials, repeat.artifacts, repeat.refused) == ([], [], {})
        assert (repeat.watermark, repeat.seen) == (first.watermark, first.seen)
    compute.put_trial(trial("exp-a", 1))  # often within the same second as the watermark
    compute.put_trial(trial("exp-a", 0, value=0.9))  # rewritten
    later = again()
    assert sorted(later.trials) == [0, 1] and not later.artifacts
    assert store.list_trials("exp-a")[0].value == 0.9


def test_ingestion_refuses_what_names_another_experiment(store) -> None:
    experiment(store, "exp-a")
    experiment(store, "exp-b")
    compute = ComputeStore.from_credential(store.issue_compute_credential("exp-a", timedelta(hours=1)))
    compute.area.put("trials/0000000000.json", trial("exp-b", 0).model_dump_json().encode())  # forged
    compute.area.put("trials/0000000003.json", trial("exp-a", 4).model_dump_json().encode())  # misnumbered
    compute.area.put("trials/0000000005.json", b"not json")
    compute.area.put("elsewhere.txt", b"x")
    report = store.ingest_compute_output("exp-a")
    assert report.trials == [] and set(report.refused) == {
        "trials/0000000000.json",
        "trials/0000000003.json",
        "trials/0000000005.json",
        "elsewhere.txt",
    }
    assert store.list_trials("exp-b") == [] and store.list_trials("exp-a") == []


def test_the_compute_store_offers_nothing_beyond_its_experiment(store) -> None:
    experiment(store, "exp-a")
    compute = ComputeStore.from_credential(store.issue_compute_credential("exp-a", timedelta(hours=1)))
    with pytest.raises(PermissionError):
        compute.put_trial(trial("exp-b", 0))
    with pytest.raises(PermissionError):
        compute.get_experiment("exp-b")
    for name in ("create_experiment", "update_experiment", "list_experiments", "put_secret", "get_secret"):
        with pytest.raises(PermissionError):
            getattr(compute, name)


def test_a_credential_needs_a_lifetime_and_is_capped(store) -> None:
    experiment(store, "exp-a")
    with pytest.raises(ValueError):
        store.issue_compute_credential("exp-a", timedelta(0))
    capped = store.issue_compute_credential("exp-a", timedelta(days=30))
    assert capped.expires_at <= datetime.now(UTC) + timedelta(days=7, minutes=1)


def test_area_names_are_valid_containers_and_distinct() -> None:
    names = {area_name("artifacts-run", i) for i in ("exp-A", "exp-a", "exp_a", "a" * 64, "exp-20261201082600-a1b2c3")}
    assert len(names) == 5
    for name in names:
        assert 3 <= len(name) <= 63 and name == name.lower() and "--" not in name and name[0].isalnum()


# ------------------------------------------------------------------- isolation, decided by Azurite
def _sas_container(credential: ComputeCredential, url: str | None = None) -> ContainerClient:
    return ContainerClient.from_container_url(f"{url or credential.url}?{credential.token}")


@pytest.mark.azurite
def test_experiment_a_credential_cannot_read_or_write_experiment_b(azure_store: AzureStore) -> None:
    experiment(azure_store, "exp-a")
    experiment(azure_store, "exp-b")
    cred_a = azure_store.issue_compute_credential("exp-a", timedelta(hours=1))
    cred_b = azure_store.issue_compute_credential("exp-b", timedelta(hours=1))
    ComputeStore.from_credential(cred_b).put_trial(trial("exp-b", 0))

    own = _sas_container(cred_a)
    own.upload_blob("trials/0000000000.json", trial("exp-a", 0).model_dump_json(), overwrite=True)
    assert [b.name for b in own.list_blobs()] == ["experiment.json", "trials/0000000000.json"]

    b_with_a = _sas_container(cred_a, cred_b.url)  # A's token on B's area
    denied(lambda: b_with_a.download_blob("trials/0000000000.json").readall())
    denied(lambda: b_with_a.download_blob("experiment.json").readall())
    denied(b_with_a.upload_blob, "trials/0000000001.json", b"{}", overwrite=True)
    denied(b_with_a.list_blobs)
    assert [t.experiment_id for t in ComputeStore.from_credential(cred_b).list_trials("exp-b")] == ["exp-b"]


@pytest.mark.azurite
def test_a_compute_credential_reaches_no_table_queue_secret_or_artifact(azure_store: AzureStore, azurite: str) -> None:
    record = experiment(azure_store, "exp-a")
    azure_store.put_secret("exp-a", "tls.json", b"secret")
    azure_store.put_artifact("exp-a", "model/model.json", b"{}")
    cred = azure_store.issue_compute_credential("exp-a", timedelta(hours=1))
    account = azure_store.blob_service.url.rstrip("/")

    for container in (azure_store.secrets_container_name, azure_store.container_name):
        other = _sas_container(cred, f"{account}/{container}")
        denied(lambda other=other: other.download_blob("exp-a/tls.json").readall())
        denied(other.list_blobs)
        denied(other.upload_blob, "exp-a/model/model.json", b"overwritten", overwrite=True)
    assert azure_store.get_artifact("exp-a", "model/model.json") == b"{}"

    blobs = BlobServiceClient(account, credential=AzureSasCredential(cred.token))
    denied(blobs.list_containers)
    denied(blobs.create_container, f"new-{uuid.uuid4().hex[:8]}")

    tables = TableServiceClient(endpoint=azure_store.table_service.url, credential=AzureSasCredential(cred.token))
    experiments = tables.get_table_client(azure_store.table_names[0])
    denied(experiments.list_entities)
    denied(experiments.upsert_entity, {"PartitionKey": "experiment", "RowKey": "id:exp-a", "Key": "forged"})
    assert azure_store.get_experiment("exp-a").name == record.name

    account_queues = QueueServiceClient.from_connection_string(azurite)
    name = f"q{uuid.uuid4().hex[:8]}"
    account_queues.create_queue(name)
    try:
        queue = QueueServiceClient(account_queues.url, credential=AzureSasCredential(cred.token)).get_queue_client(name)
        denied(queue.send_message, "forged event")
        denied(queue.receive_messages)
    finally:
        account_queues.delete_queue(name)


@pytest.mark.azurite
def test_revoking_ends_the_credential_before_it_expires(azure_store: AzureStore) -> None:
    experiment(azure_store, "exp-a")
    cred = azure_store.issue_compute_credential("exp-a", timedelta(hours=1))
    azure_store.revoke_compute_credential("exp-a")
    area = _sas_container(cred)
    with pytest.raises(ResourceNotFoundError):
        area.download_blob("experiment.json").readall()
    denied(area.create_container)  # a container SAS cannot bring its area back
    assert not azure_store.blob_service.get_container_client(area.container_name).exists()


@pytest.mark.parametrize("days", [1, 7, 30])
def test_a_user_delegation_key_expires_strictly_within_seven_days(days: int) -> None:
    """Azure answers 400 to a user-delegation key expiring more than 7 days after its own clock's now: the
    key (and the SAS it signs) stop short of that by a margin for a clock of ours that runs fast."""
    import base64
    from types import SimpleNamespace

    from azure.storage.blob import UserDelegationKey

    from shared.store.compute import KEY_CLOCK_MARGIN, container_credential

    asked: list[tuple[datetime, datetime]] = []

    def get_user_delegation_key(start: datetime, expiry: datetime) -> UserDelegationKey:
        asked.append((start, expiry))
        key = UserDelegationKey()
        key.signed_oid, key.signed_tid, key.signed_service, key.signed_version = "oid", "tid", "b", "2025-11-05"
        key.signed_start, key.signed_expiry = start.isoformat(), expiry.isoformat()
        key.value = base64.b64encode(b"k" * 32).decode()
        return key

    service = SimpleNamespace(credential=object(), account_name="acct", get_user_delegation_key=get_user_delegation_key)
    container = SimpleNamespace(url="https://acct.blob.core.windows.net/area", container_name="area")
    before = datetime.now(UTC)
    credential = container_credential(service, container, "exp-1", timedelta(days=days))

    [(_, key_expiry)] = asked
    limit = before + timedelta(days=7)
    assert key_expiry <= limit - KEY_CLOCK_MARGIN + timedelta(seconds=5)
    assert credential.expires_at <= key_expiry  # the SAS never outlives its key
    if days == 1:
        assert key_expiry >= before + timedelta(days=1) - timedelta(seconds=5)  # a short one is not cut


def test_a_listing_stops_at_its_limit(store) -> None:
    """Both adapters (a folder, and a container through the compute's SAS on Azurite) return at most
    ``limit`` blobs, and without a limit every blob, in name order."""
    experiment(store, "exp-a")
    compute = ComputeStore.from_credential(store.issue_compute_credential("exp-a", timedelta(hours=1)))
    names = [f"artifacts/plots/p{n:02d}.svg" for n in range(12)]
    for name in names:
        compute.area.put(name, b"")
    assert len(compute.area.list("artifacts/", limit=5)) == 5
    assert [blob.name for blob in compute.area.list("artifacts/")] == names


def test_a_container_listing_reads_no_further_than_its_limit() -> None:
    """The SDK's pager fetches pages as they are read, so a limit must stop the reading, not trim a full list.
    A Python stand-in for ``ContainerClient.list_blobs`` counts what was read (the real pager runs on Azurite
    in the test above and in every ingestion test)."""
    read: list[int] = []

    class EndlessContainer:
        def list_blobs(self, name_starts_with=None):
            for number in itertools.count():
                read.append(number)
                yield SimpleNamespace(name=f"b{number}", size=0, last_modified=datetime.now(UTC), etag="e")

    assert len(ContainerArea(EndlessContainer()).list(limit=7)) == 7
    assert len(read) == 7


def test_more_blobs_than_any_quota_allows_are_refused_without_listing_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, bounded work: a compute may write millions of empty blobs with its SAS. Ingestion lists no
    more than the most any quota allows (the trial budget, the other blobs, the control plane's own) plus
    one, and refuses the area; before, every POLL listed them all first."""
    store = LocalStore(tmp_path / "store")
    experiment(store, "exp-a")
    compute = ComputeStore.from_credential(store.issue_compute_credential("exp-a", timedelta(hours=1)))
    most = trial_budget(store.get_experiment("exp-a").spec) + MAX_OTHER_BLOBS + len(CONTROL_BLOBS)
    for number in range(most + 40):
        compute.area.put(f"artifacts/plots/p{number}.svg", b"")
    listed: list[int] = []
    list_folder = FolderArea.list

    def counted(self, prefix="", limit=None):
        blobs = list_folder(self, prefix, limit)
        listed.append(len(blobs))
        return blobs

    monkeypatch.setattr(FolderArea, "list", counted)
    report = store.ingest_compute_output("exp-a")
    assert report.over_quota is not None and report.over_quota.startswith(f"more than {most} blobs")
    assert (report.trials, report.artifacts) == ([], [])
    assert listed == [most + 1]
    assert store.list_artifacts("exp-a") == []
