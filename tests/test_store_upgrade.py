"""Upgrading the Azure store over live data: idempotency claims earlier versions wrote in the ``idempotency``
table still bind their keys, so a client's retry that spans the deploy gets the experiment its first send
created instead of a second one (on Azurite)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.errors import NotFound
from shared.store import AzureStore
from tests.conformance.test_store import experiment

pytestmark = pytest.mark.azurite


@pytest.fixture
def legacy_claims(azure_store: AzureStore) -> Iterator[tuple[AzureStore, object]]:
    """The store's tables as the earlier version left them: a legacy ``idempotency`` table beside them."""
    prefix = azure_store.table_names[0].removesuffix("experiments")
    table = azure_store.table_service.create_table(f"{prefix}idempotency")
    yield azure_store, table
    with contextlib.suppress(ResourceNotFoundError):
        azure_store.table_service.delete_table(f"{prefix}idempotency")


def claim(table: object, key: str, experiment_id: str) -> None:
    """A claim as the earlier version wrote it (PartitionKey: SHA-256 of the key, RowKey ``key``)."""
    entity = {"PartitionKey": hashlib.sha256(key.encode()).hexdigest(), "RowKey": "key", "ExperimentId": experiment_id}
    table.create_entity(entity)  # type: ignore[attr-defined]


def upgraded(store: AzureStore) -> AzureStore:
    """A process of the new version on the same tables (it looks for the legacy table when it starts)."""
    return AzureStore(
        store.table_service,
        store.blob_service,
        table_prefix=store.table_names[0].removesuffix("experiments"),
        container=store.container_name,
        secrets_container=store.secrets_container_name,
    )


def test_a_retry_spanning_the_upgrade_gets_the_experiment_its_first_send_created(legacy_claims) -> None:
    store, table = legacy_claims
    store.create_experiment(experiment("exp-before", idempotency_key="k"))  # the old version's two steps
    claim(table, "k", "exp-before")
    record, created = upgraded(store).create_keyed_experiment(experiment("exp-retry", idempotency_key="k"))
    assert not created and record.id == "exp-before"
    with pytest.raises(NotFound):
        store.get_experiment("exp-retry")
    again, created = upgraded(store).create_keyed_experiment(experiment("exp-third", idempotency_key="k"))
    assert not created and again.id == "exp-before"


def test_a_bare_legacy_claim_gets_its_experiment_under_the_claimed_id(legacy_claims) -> None:
    """The old writer claimed, then stopped before creating: the next request creates it, once."""
    store, table = legacy_claims
    claim(table, "k", "exp-claimed")
    record, created = upgraded(store).create_keyed_experiment(experiment("exp-new", idempotency_key="k"))
    assert created and record.id == "exp-claimed"
    assert store.get_experiment("exp-claimed").idempotency_key == "k"
    record, created = upgraded(store).create_keyed_experiment(experiment("exp-newer", idempotency_key="k"))
    assert not created and record.id == "exp-claimed"


def test_other_keys_and_stores_without_the_legacy_table_are_unaffected(legacy_claims, azure_store) -> None:
    store, table = legacy_claims
    claim(table, "old", "exp-old")
    record, created = upgraded(store).create_keyed_experiment(experiment("exp-1", idempotency_key="new"))
    assert created and record.id == "exp-1"
