"""The experiment create's transaction writer, against Azurite: all rows or none, the same stored values
and ETags as the SDK's own ``submit_transaction``, and the service's refusals as the SDK's errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient

from shared.store._table_batch import insert_together

pytestmark = pytest.mark.azurite


@pytest.fixture
def table(azurite: str) -> Iterator[TableClient]:
    service = TableServiceClient.from_connection_string(azurite)
    name = f"batch{uuid.uuid4().hex[:12]}"
    client = service.create_table(name)
    try:
        yield client
    finally:
        service.delete_table(name)


class Recording(RequestsTransport):
    """The SDK's own transport, remembering the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[object] = []

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        self.sent.append(request)
        return super().send(request, **kwargs)


def entity(row: str, **properties: object) -> dict[str, object]:
    return {"PartitionKey": "p", "RowKey": row, **properties}


def test_rows_are_stored_as_the_sdk_stores_them_with_their_etags(table: TableClient) -> None:
    when = datetime(2026, 12, 1, 8, 26, 0, 123456, tzinfo=UTC)
    properties = {"Name": "naïve ✓ 𝄞", "CreatedAt": when, "Chunks": -3, "On": True, "Gone": None}

    etags = insert_together(table, [entity("a", **properties), entity("b", Key="t:1")])
    table.submit_transaction([("create", entity("c", **properties))])  # the SDK's write, to compare

    ours, sdks = table.get_entity("p", "a"), table.get_entity("p", "c")
    assert {k: v for k, v in ours.items() if k != "RowKey"} == {k: v for k, v in sdks.items() if k != "RowKey"}
    assert ours["Name"] == "naïve ✓ 𝄞" and ours["CreatedAt"] == when and ours["Chunks"] == -3 and "Gone" not in ours
    assert etags == [ours.metadata["etag"], table.get_entity("p", "b").metadata["etag"]]


def test_the_request_carries_the_headers_the_sdk_batch_carries(azurite: str, table: TableClient) -> None:
    transport = Recording()
    client = TableServiceClient.from_connection_string(azurite, transport=transport).get_table_client(table.table_name)

    insert_together(client, [entity("a"), entity("b")])
    client.submit_transaction([("create", entity("c")), ("create", entity("d"))])

    ours, sdks = (request for request in transport.sent if request.url.endswith("/$batch"))  # type: ignore[attr-defined]
    wanted = {"x-ms-version", "DataServiceVersion", "MaxDataServiceVersion", "Accept", "Authorization", "x-ms-date"}
    assert {name: ours.headers[name] for name in wanted - {"Authorization", "x-ms-date"}} == {
        name: sdks.headers[name] for name in wanted - {"Authorization", "x-ms-date"}
    }
    assert wanted <= set(ours.headers) and ours.headers["x-ms-version"] == client.api_version
    body = ours.content.decode() if isinstance(ours.content, bytes) else str(ours.content)
    assert body.count(f"x-ms-version: {client.api_version}") == 2  # each operation names the version too


def test_a_taken_row_key_writes_nothing_and_raises_resource_exists(table: TableClient) -> None:
    table.create_entity(entity("taken", Old=1))

    with pytest.raises(ResourceExistsError, match="EntityAlreadyExists"):
        insert_together(table, [entity("new"), entity("taken", Old=2)])

    with pytest.raises(ResourceNotFoundError):
        table.get_entity("p", "new")
    assert table.get_entity("p", "taken")["Old"] == 1


def test_other_refusals_carry_the_service_status_and_code(table: TableClient) -> None:
    too_long = "x" * 40_000  # a string property holds at most 64 KiB (32K UTF-16 units)

    with pytest.raises(HttpResponseError) as refused:
        insert_together(table, [entity("a"), entity("b", Body=too_long)])

    assert refused.value.status_code is not None and 400 <= refused.value.status_code < 500
    assert not isinstance(refused.value, ResourceExistsError)
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("p", "a")


def test_a_missing_table_is_an_error_not_a_silent_success(azurite: str) -> None:
    missing = TableServiceClient.from_connection_string(azurite).get_table_client(f"gone{uuid.uuid4().hex[:10]}")

    with pytest.raises(HttpResponseError):
        insert_together(missing, [entity("a")])


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ([], "1 to 100"),
        ([entity("a"), {"PartitionKey": "q", "RowKey": "b"}], "one PartitionKey"),
        ([entity("a", When=datetime(2026, 1, 1))], "naive datetime"),
        ([entity("a", Raw=b"bytes")], "bytes is not a property type"),
        ([entity("a", Big=2**31)], "does not fit an Edm.Int32"),
    ],
)
def test_what_it_cannot_write_is_refused_before_any_request(
    table: TableClient, entities: list[dict[str, object]], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        insert_together(table, entities)
