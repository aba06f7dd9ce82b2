"""shared.backends.vmcluster.network: the real azure-mgmt-network SDK against a local fake ARM endpoint."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest

from shared.backends.arm import RetrySettings
from shared.backends.vmcluster.handle import NetworkHandle
from shared.backends.vmcluster.network import (
    delete_network_resources,
    ensure_network,
    find_orphaned_networks,
    make_network_client,
    teardown_network,
)
from shared.backends.vmcluster.network_layout import (
    CREATED_BY,
    CREATED_BY_TAG,
    EXPERIMENT_TAG,
    INSTANCE_TAG,
    network_names,
)
from shared.backends.vmcluster.section import NetworkSpec
from shared.errors import BackendError
from tests.arm_server import FakeArm, StaticTokenCredential

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-hpo"
LOC = "westeurope"
NET = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network"
NSG_PATH = f"{NET}/networkSecurityGroups/nsg-exp-1"
VNET_PATH = f"{NET}/virtualNetworks/vnet-exp-1"
NAT_PATH = f"{NET}/natGateways/ng-exp-1"
NAT_IP_PATH = f"{NET}/publicIPAddresses/pip-ng-exp-1"
CREATED = [NSG_PATH, NAT_IP_PATH, NAT_PATH, VNET_PATH]
"""What a new experiment network creates, in creation order."""
OPEN_TO_ALL = {"*", "Internet", "0.0.0.0/0", "Any"}


@pytest.fixture
def client(arm: FakeArm) -> Any:
    return make_network_client(SUB, StaticTokenCredential(arm.token), arm.base_url, polling_interval=0)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def retry(sleeps: list[float]) -> RetrySettings:
    return RetrySettings(attempts=4, initial_wait_s=0.5, max_wait_s=30, jitter_s=0, sleep=sleeps.append)


def _ensure(client: Any, retry: RetrySettings, spec: NetworkSpec | None = None, **kw: Any) -> NetworkHandle:
    kw.setdefault("experiment_id", "exp-1")
    return ensure_network(client, resource_group=RG, location=LOC, spec=spec or NetworkSpec(), retry=retry, **kw)


def _flow(arm: FakeArm) -> list[tuple[str, str]]:
    """The recorded requests as (method, what): resource name or 'poll'."""
    out = []
    for r in arm.requests:
        what = "poll" if "/locations/" in r.path else r.path.rsplit("/", 1)[-1]
        out.append((r.method, what))
    return out


def _sources(rule: dict[str, Any]) -> list[str]:
    props = rule["properties"]
    return [*props.get("sourceAddressPrefixes", []), *filter(None, [props.get("sourceAddressPrefix")])]


# --- names -------------------------------------------------------------------------------------------


def test_network_names_are_valid_bounded_and_distinct() -> None:
    assert network_names("exp-1") == network_names("exp-1")
    names = network_names("exp-1")
    assert (names.vnet, names.subnet, names.nsg) == ("vnet-exp-1", "snet-exp-1", "nsg-exp-1")

    valid = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9_]$")
    long_a, long_b = "x" * 100 + "a", "x" * 100 + "b"
    odd = ["Exp 1/β?", "--weird--", "UPPER", long_a, long_b, "___"]
    for experiment_id in odd:
        n = network_names(experiment_id)
        for name in (n.vnet, n.subnet, n.nsg):
            assert len(name) <= 64 and valid.match(name), name
    assert network_names(long_a).vnet != network_names(long_b).vnet
    assert network_names("UPPER").nsg != network_names("upper").nsg
    with pytest.raises(ValueError):
        network_names(" ")


# --- create --------------------------------------------------------------------------------------------


def test_creates_nsg_then_vnet_through_polled_long_running_operations(
    arm: FakeArm, client: Any, retry: RetrySettings
) -> None:
    handle = _ensure(client, retry, tags={"team": "ml", EXPERIMENT_TAG: "spoofed"})

    assert _flow(arm) == [
        ("GET", "nsg-exp-1"),
        ("PUT", "nsg-exp-1"),
        ("GET", "poll"),  # Azure-AsyncOperation: InProgress
        ("GET", "poll"),  # Succeeded
        ("GET", "nsg-exp-1"),  # the LRO's final GET
        ("GET", "pip-ng-exp-1"),  # the way out: a NAT gateway with a public IP (subnets are private)
        ("PUT", "pip-ng-exp-1"),
        ("GET", "poll"),
        ("GET", "poll"),
        ("GET", "pip-ng-exp-1"),
        ("GET", "ng-exp-1"),
        ("PUT", "ng-exp-1"),
        ("GET", "poll"),
        ("GET", "poll"),
        ("GET", "ng-exp-1"),
        ("GET", "vnet-exp-1"),
        ("PUT", "vnet-exp-1"),
        ("GET", "poll"),
        ("GET", "poll"),
        ("GET", "vnet-exp-1"),
    ]
    polls = arm.calls("GET", "/operations/")
    assert len(polls) == 8 and all("/locations/westeurope/operations/" in r.path for r in polls)
    for r in arm.requests:
        assert r.query["api-version"] == "2026-03-01"
        assert r.headers["authorization"] == f"Bearer {arm.token}"

    [nsg_put] = arm.calls("PUT", "networkSecurityGroups")
    expected_tags = {"team": "ml", EXPERIMENT_TAG: "exp-1", CREATED_BY_TAG: CREATED_BY}
    assert nsg_put.body["location"] == LOC
    assert nsg_put.body["tags"] == expected_tags
    rule, deny = nsg_put.body["properties"]["securityRules"]
    props = rule["properties"]
    assert props["protocol"] == "Tcp"
    assert props["direction"] == "Inbound"
    assert props["access"] == "Allow"
    assert props["priority"] == 1000
    assert props["destinationPortRanges"] == ["8786", "8787"]
    assert _sources(rule) == ["10.0.0.0/24"]  # the experiment's own subnet, nothing else of the VNet
    assert deny["properties"]["access"] == "Deny" and _sources(deny) == ["*"]
    assert deny["properties"]["priority"] == 1100 and deny["properties"]["destinationPortRanges"] == ["8786", "8787"]

    [vnet_put] = arm.calls("PUT", "virtualNetworks")
    assert vnet_put.body["tags"] == expected_tags
    assert vnet_put.body["properties"]["addressSpace"] == {"addressPrefixes": ["10.0.0.0/16"]}
    [subnet] = vnet_put.body["properties"]["subnets"]
    assert subnet["name"] == "snet-exp-1"
    assert subnet["properties"]["addressPrefix"] == "10.0.0.0/24"
    assert subnet["properties"]["networkSecurityGroup"] == {"id": handle.nsg_id}
    assert subnet["properties"]["natGateway"] == {"id": NAT_PATH}
    assert subnet["properties"]["defaultOutboundAccess"] is False  # explicit: the NAT gateway is the way out
    [nat_put] = arm.calls("PUT", "natGateways")
    assert nat_put.body["sku"] == {"name": "Standard"} and nat_put.body["tags"] == expected_tags
    assert nat_put.body["properties"]["publicIpAddresses"] == [{"id": NAT_IP_PATH}]
    [ip_put] = arm.calls("PUT", "publicIPAddresses")
    assert (
        ip_put.body["sku"] == {"name": "Standard"} and ip_put.body["properties"]["publicIPAllocationMethod"] == "Static"
    )

    assert handle.nsg_id == NSG_PATH and handle.vnet_id == VNET_PATH
    assert handle.subnet_id == f"{VNET_PATH}/subnets/snet-exp-1"
    assert (handle.vnet_name, handle.subnet_name, handle.nsg_name) == (
        "vnet-exp-1",
        "snet-exp-1",
        "nsg-exp-1",
    )
    assert handle.created == CREATED
    assert NetworkHandle.model_validate_json(handle.model_dump_json()) == handle
    assert arm.resource(NSG_PATH)["tags"] == expected_tags  # type: ignore[index]


def test_custom_address_space_and_named_sources_never_internet(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    spec = NetworkSpec(
        vnet_address_space="172.16.0.0/20",
        subnet_prefix="172.16.4.0/24",
        allowed_source_prefixes=["203.0.113.0/24", "198.51.100.7/32"],  # service tags: refused by the spec
    )
    _ensure(client, retry, spec)

    [nsg_put] = arm.calls("PUT", "networkSecurityGroups")
    *rules, deny = nsg_put.body["properties"]["securityRules"]
    # The address prefixes share one rule (the subnet's first).
    assert [_sources(r) for r in rules] == [["172.16.4.0/24", "203.0.113.0/24", "198.51.100.7/32"]]
    assert [r["properties"]["priority"] for r in rules] == [1000]
    assert deny["properties"]["access"] == "Deny"
    for r in rules:
        assert r["properties"]["destinationPortRanges"] == ["8786", "8787"]
        assert not OPEN_TO_ALL & set(_sources(r))
    [vnet_put] = arm.calls("PUT", "virtualNetworks")
    assert vnet_put.body["properties"]["addressSpace"]["addressPrefixes"] == ["172.16.0.0/20"]
    assert vnet_put.body["properties"]["subnets"][0]["properties"]["addressPrefix"] == "172.16.4.0/24"


def test_rerun_creates_nothing_and_returns_the_same_handle(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    first = _ensure(client, retry)
    arm.clear_requests()

    second = _ensure(client, retry)

    assert second == first
    assert _flow(arm) == [("GET", "nsg-exp-1"), ("GET", "pip-ng-exp-1"), ("GET", "ng-exp-1"), ("GET", "vnet-exp-1")]


def test_rerun_reconciles_a_changed_rule_and_subnet_keeping_foreign_rules(
    arm: FakeArm, client: Any, retry: RetrySettings
) -> None:
    _ensure(client, retry)
    stored = arm.resources[NSG_PATH.lower()]
    stored["properties"]["securityRules"].append(
        {
            "name": "ssh-from-office",
            "properties": {"protocol": "Tcp", "priority": 300, "access": "Allow", "direction": "Inbound"},
        }
    )
    arm.clear_requests()

    spec = NetworkSpec(subnet_prefix="10.0.8.0/24", allowed_source_prefixes=["203.0.113.0/24"])
    handle = _ensure(client, retry, spec)

    [nsg_put] = arm.calls("PUT", "networkSecurityGroups")
    rules = {r["name"]: r for r in nsg_put.body["properties"]["securityRules"]}
    assert set(rules) == {"ssh-from-office", "rapids-hpo-dask-0", "rapids-hpo-dask-deny"}
    assert _sources(rules["rapids-hpo-dask-0"]) == ["10.0.8.0/24", "203.0.113.0/24"]
    [vnet_put] = arm.calls("PUT", "virtualNetworks")
    assert vnet_put.body["properties"]["subnets"][0]["properties"]["addressPrefix"] == "10.0.8.0/24"
    assert handle.created == CREATED


# --- ownership -----------------------------------------------------------------------------------------


def test_refuses_a_same_named_resource_without_our_tag(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    arm.seed(NSG_PATH, {"location": LOC, "tags": {"owner": "someone"}, "properties": {}})

    with pytest.raises(BackendError, match=r"network security group 'nsg-exp-1' already exists.*refusing"):
        _ensure(client, retry)

    assert arm.calls("PUT") == [] and arm.calls("DELETE") == []
    assert arm.resource(NSG_PATH)["tags"] == {"owner": "someone"}  # type: ignore[index]


def test_refuses_a_vnet_of_another_experiment(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    arm.seed(VNET_PATH, {"location": LOC, "tags": {EXPERIMENT_TAG: "exp-other"}, "properties": {}})

    with pytest.raises(BackendError, match=r"virtual network 'vnet-exp-1'.*experiment 'exp-other'"):
        _ensure(client, retry)

    assert [r.path for r in arm.calls("PUT")] == CREATED[:3]  # ours (tagged: the sweep finds them)


def test_existing_resources_are_used_and_never_created_or_deleted(
    arm: FakeArm, client: Any, retry: RetrySettings
) -> None:
    vnet_id = f"{NET}/virtualNetworks/shared-vnet"
    nsg_id = f"{NET}/networkSecurityGroups/shared-nsg"
    arm.seed(nsg_id, {"location": LOC, "properties": {}})
    subnets = [{"name": n, "properties": {"addressPrefix": p}} for n, p in [("a", "10.9.0.0/24"), ("b", "10.9.1.0/24")]]
    arm.seed(
        vnet_id,
        {
            "location": LOC,
            "properties": {"addressSpace": {"addressPrefixes": ["10.9.0.0/16"]}, "subnets": subnets},
        },
    )
    spec = NetworkSpec(existing_vnet="shared-vnet", existing_subnet="b", existing_security_group="shared-nsg")

    handle = _ensure(client, retry, spec)

    assert (handle.vnet_id, handle.nsg_id, handle.subnet_id) == (vnet_id, nsg_id, f"{vnet_id}/subnets/b")
    assert handle.created == []
    assert {r.method for r in arm.requests} == {"GET"}

    assert teardown_network(client, resource_group=RG, handle=handle, retry=retry) == []
    assert arm.calls("DELETE") == []
    assert arm.resource(vnet_id) and arm.resource(nsg_id)


def test_existing_vnet_with_our_own_nsg_deletes_only_the_nsg(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    """The documented deployment: infra's VNet in the control plane's resource group, named by resource
    id; the subnet chosen by name (never the first, which is the Function App's delegated one)."""
    other_rg = f"/subscriptions/{SUB}/resourceGroups/rg-control-plane/providers/Microsoft.Network"
    vnet_id = f"{other_rg}/virtualNetworks/vnet-hpo"
    delegated = {
        "name": "functions",
        "properties": {
            "addressPrefix": "10.40.0.0/24",
            "delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.App/environments"}}],
        },
    }
    dask = {"name": "dask", "properties": {"addressPrefix": "10.40.1.0/24"}}
    private = {"name": "private", "properties": {"addressPrefix": "10.40.2.0/24", "defaultOutboundAccess": False}}
    arm.seed(vnet_id, {"location": LOC, "properties": {"subnets": [delegated, dask, private]}})

    handle = _ensure(client, retry, NetworkSpec(existing_vnet=vnet_id, existing_subnet="dask"))

    assert handle.subnet_id == f"{vnet_id}/subnets/dask"
    assert handle.created == [NSG_PATH]
    [nsg_put] = arm.calls("PUT")
    assert nsg_put.path == NSG_PATH
    assert _sources(nsg_put.body["properties"]["securityRules"][0]) == ["10.40.1.0/24"]
    assert teardown_network(client, resource_group=RG, handle=handle, retry=retry) == [NSG_PATH]
    assert [r.path for r in arm.calls("DELETE")] == [NSG_PATH]
    assert arm.resource(vnet_id) is not None
    assert not [r for r in arm.calls("GET") if r.path.endswith("/vnet-hpo")], "the subnet is read, never its VNet"

    with pytest.raises(BackendError, match=r"delegated to Microsoft\.App/environments"):
        _ensure(client, retry, NetworkSpec(existing_vnet=vnet_id, existing_subnet="functions"))
    with pytest.raises(BackendError, match=r"subnet 'private' .*has no way out .*NAT gateway"):
        _ensure(client, retry, NetworkSpec(existing_vnet=vnet_id, existing_subnet="private"))
    with pytest.raises(ValueError, match="chosen by name"):
        NetworkSpec(existing_vnet=vnet_id)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            NetworkSpec(existing_vnet="nope", existing_subnet="a"),
            r"subnet 'a' .*does not exist in virtual network 'nope' of resource group 'rg-hpo'",
        ),
        (NetworkSpec(existing_security_group="nope"), r"network security group 'nope' .*does not exist"),
        (NetworkSpec(existing_vnet="shared-vnet", existing_subnet="z"), r"subnet 'z' .*does not exist"),
    ],
)
def test_existing_resources_must_exist_in_our_region(
    arm: FakeArm, client: Any, retry: RetrySettings, spec: NetworkSpec, message: str
) -> None:
    arm.seed(f"{NET}/virtualNetworks/shared-vnet", {"location": LOC, "properties": {"subnets": []}})
    arm.seed(f"{NET}/virtualNetworks/far-vnet", {"location": "East US", "properties": {"subnets": []}})
    with pytest.raises(BackendError, match=message):
        _ensure(client, retry, spec)
    assert arm.calls("PUT", "virtualNetworks") == []


# --- teardown and the sweep ----------------------------------------------------------------------------


def test_teardown_deletes_created_resources_vnet_first(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    handle = _ensure(client, retry)
    assert handle.created == CREATED  # creation order; deletion must reverse it (the fake refuses otherwise)
    arm.clear_requests()

    deleted = teardown_network(client, resource_group=RG, handle=handle, retry=retry)

    assert deleted == [VNET_PATH, NAT_PATH, NAT_IP_PATH, NSG_PATH]
    polls = [("GET", "poll"), ("GET", "poll")]  # Location: 202, then 204
    assert _flow(arm) == [
        ("DELETE", "vnet-exp-1"),
        *polls,
        ("DELETE", "ng-exp-1"),
        *polls,
        ("DELETE", "pip-ng-exp-1"),
        *polls,
        ("DELETE", "nsg-exp-1"),
        *polls,
    ]
    assert all("/operationResults/" in r.path for r in arm.calls("GET"))  # Location polling
    assert arm.resources == {}


def test_teardown_treats_404_as_already_gone(
    arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]
) -> None:
    handle = _ensure(client, retry)
    arm.fail("DELETE", "virtualNetworks/vnet-exp-1", 404, "ResourceNotFound", "gone")
    arm.resources.pop(VNET_PATH.lower())

    assert teardown_network(client, resource_group=RG, handle=handle, retry=retry) == [NAT_PATH, NAT_IP_PATH, NSG_PATH]
    assert len(arm.calls("DELETE", "vnet-exp-1")) == 1 and sleeps == []


def test_teardown_retries_an_nsg_still_in_use(
    arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]
) -> None:
    """Deleting the NSG before its subnet is gone answers 409; that is retried (VM teardown lags)."""
    handle = _ensure(client, retry)
    arm.fail("DELETE", "nsg-exp-1", 409, "InUseNetworkSecurityGroupCannotBeDeleted", "in use", times=2)

    deleted = teardown_network(client, resource_group=RG, handle=handle, retry=retry)
    assert deleted == [VNET_PATH, NAT_PATH, NAT_IP_PATH, NSG_PATH]
    assert len(arm.calls("DELETE", "nsg-exp-1")) == 3 and sleeps == [0.5, 1.0]


def test_delete_refuses_foreign_ids(client: Any, retry: RetrySettings) -> None:
    with pytest.raises(BackendError, match="not a network resource an experiment creates"):
        delete_network_resources(client, resource_group=RG, resource_ids=[f"{NET}/loadBalancers/lb"], retry=retry)
    other_rg = VNET_PATH.replace(RG, "rg-other")
    with pytest.raises(BackendError, match="not in resource group"):
        delete_network_resources(client, resource_group=RG, resource_ids=[other_rg], retry=retry)


def test_find_orphaned_networks_by_tag_across_pages(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    mine = {INSTANCE_TAG: "sthpoprod"}
    dead = _ensure(client, retry, experiment_id="exp-dead", tags=mine)
    _ensure(
        client,
        retry,
        experiment_id="exp-live",
        spec=NetworkSpec(vnet_address_space="10.1.0.0/16", subnet_prefix="10.1.0.0/24"),
        tags=mine,
    )
    _ensure(  # another control plane's experiment in the same resource group: not ours to delete
        client,
        retry,
        experiment_id="exp-of-dev",
        spec=NetworkSpec(vnet_address_space="10.2.0.0/16", subnet_prefix="10.2.0.0/24"),
        tags={INSTANCE_TAG: "sthpodev"},
    )
    arm.seed(f"{NET}/virtualNetworks/hand-made", {"location": LOC, "properties": {}})
    arm.seed(f"{NET}/virtualNetworks/untagged-owner", {"location": LOC, "tags": {EXPERIMENT_TAG: "exp-dead"}})
    arm.clear_requests()

    def orphans() -> list[str]:
        return find_orphaned_networks(
            client, resource_group=RG, live_experiment_ids={"exp-live"}, instance_id="sthpoprod", retry=retry
        )

    found = orphans()
    assert sorted(found) == sorted(dead.created)
    assert arm.calls("GET", "/virtualNetworks")[-1].query.get("$skiptoken")  # followed nextLink
    assert delete_network_resources(client, resource_group=RG, resource_ids=found, retry=retry) == found
    assert orphans() == []
    assert len(arm.of_type("virtualNetworks")) == 4  # live, dev's, and the two never ours


# --- retries -------------------------------------------------------------------------------------------


def test_429_honours_retry_after_and_the_sdk_does_not_retry_too(
    arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]
) -> None:
    arm.fail("PUT", "nsg-exp-1", 429, "TooManyRequests", "slow down", times=2, headers={"Retry-After": "7"})

    handle = _ensure(client, retry)

    assert len(arm.calls("PUT", "nsg-exp-1")) == 3  # 2 throttled + 1 accepted: one HTTP request per try
    assert sleeps == [7.0, 7.0]
    assert handle.created == CREATED


def test_5xx_backs_off_exponentially_then_succeeds(
    arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]
) -> None:
    arm.fail("PUT", "vnet-exp-1", 500, "InternalServerError", "boom", times=1)
    arm.fail("PUT", "vnet-exp-1", 503, "ServiceUnavailable", "busy", times=1)

    _ensure(client, retry)

    assert len(arm.calls("PUT", "vnet-exp-1")) == 3
    assert sleeps == [0.5, 1.0]


def test_409_another_operation_in_progress_is_retried(
    arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]
) -> None:
    arm.fail(
        "PUT",
        "nsg-exp-1",
        409,
        "AnotherOperationInProgress",
        "Another operation on this resource is in progress.",
    )

    _ensure(client, retry)

    assert len(arm.calls("PUT", "nsg-exp-1")) == 2 and sleeps == [0.5]


def test_a_failed_poll_retries_the_whole_operation(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    arm.fail("GET", "/operations/", 500, "InternalServerError", "poll broke")

    _ensure(client, retry)

    assert len(arm.calls("PUT", "nsg-exp-1")) == 2  # PUT is idempotent: sent again


def test_retries_exhausted_raise_a_clear_error(
    arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]
) -> None:
    arm.fail(
        "PUT",
        "nsg-exp-1",
        429,
        "TooManyRequests",
        "Too many requests, retry later.",
        times=99,
        headers={"Retry-After": "1"},
    )

    with pytest.raises(BackendError) as info:
        _ensure(client, retry)

    assert str(info.value) == (
        "creating network security group nsg-exp-1 failed after 4 attempts: "
        "429 TooManyRequests: Too many requests, retry later."
    )
    assert info.value.retryable is True and info.value.code == "TooManyRequests"  # a later step may get through
    assert len(arm.calls("PUT", "nsg-exp-1")) == 4 and sleeps == [1.0, 1.0, 1.0]
    assert arm.calls("PUT", "virtualNetworks") == []


def test_403_fails_at_once(arm: FakeArm, client: Any, retry: RetrySettings, sleeps: list[float]) -> None:
    arm.fail("PUT", "nsg-exp-1", 403, "AuthorizationFailed", "The client does not have authorization.")

    with pytest.raises(BackendError) as info:
        _ensure(client, retry)

    assert str(info.value).startswith(
        "creating network security group nsg-exp-1 failed: 403 AuthorizationFailed: "
        "The client does not have authorization. (the Function App's identity lacks this role: deploy infra/"
    )
    assert "up to 10 minutes for new role assignments" in str(info.value)  # what a user can act on
    assert info.value.retryable is False and info.value.code == "AuthorizationFailed"
    assert len(arm.calls("PUT")) == 1 and sleeps == []


def test_a_failed_long_running_operation_is_not_retried(arm: FakeArm, client: Any, retry: RetrySettings) -> None:
    arm.fail_next_operation("SubnetIsFull", "Subnet snet-exp-1 has no free addresses.")

    with pytest.raises(
        BackendError,
        match=r"creating network security group nsg-exp-1 failed: operation failed: SubnetIsFull",
    ):
        _ensure(client, retry)

    assert len(arm.calls("PUT")) == 1


def test_unreachable_endpoint_is_retried_then_reported(retry: RetrySettings, sleeps: list[float]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connection refused
    client = make_network_client(SUB, StaticTokenCredential(), f"http://127.0.0.1:{port}", polling_interval=0)

    with pytest.raises(
        BackendError,
        match=r"reading network security group nsg-exp-1 failed after 4 attempts: ServiceRequestError",
    ):
        _ensure(client, retry)
    assert sleeps == [0.5, 1.0, 2.0]


def test_plain_http_only_for_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        make_network_client(SUB, StaticTokenCredential(), "http://arm.example.com")
    make_network_client(SUB, StaticTokenCredential(), "https://management.azure.com")
