"""Rebuild the catalogue's prices from the public Azure Retail Prices API.

The API (``GET https://prices.azure.com/api/retail/prices?$filter=...``, no authentication) answers pages of
``{"BillingCurrency", "CustomerEntityId", "CustomerEntityType", "Items": [...], "NextPageLink", "Count"}``;
``NextPageLink`` is the next page's full URL, or null on the last page. Each item is one meter: ``armSkuName``
(``Standard_NC4as_T4_v3``), ``armRegionName``, ``retailPrice``, ``unitOfMeasure`` (``1 Hour``), ``type``
(``Consumption``, ``Reservation``, ``DevTestConsumption``), ``productName`` (ending in ``Windows`` for
Windows meters), ``skuName``/``meterName`` (ending in ``Spot`` or ``Low Priority`` for those tiers),
``effectiveStartDate``, ``currencyCode``.

We keep Linux ``Consumption`` hourly meters in USD, newest ``effectiveStartDate`` per (size, region, tier),
and lay them over the sizes the catalogue already knows, its GPU sizes and its host sizes (the vmcluster's CPU
head) alike: the API knows prices, not hardware, so a size the catalogue lacks is never added.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shared.cost.catalogue import Catalogue, GpuSize, HostSize, RegionPrice, Source, Tier

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
API_DOCS = "https://learn.microsoft.com/rest/api/cost-management/retail-prices/azure-retail-prices"
MAX_PAGES = 200
"""A guard against a server that never ends its paging."""

Fetch = Callable[[str], dict[str, Any]]
Prices = dict[str, dict[str, dict[Tier, float]]]
"""``{size: {region: {tier: USD/hour}}}``."""
Sized = TypeVar("Sized", GpuSize, HostSize)


def _http_get_json(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        document: dict[str, Any] = json.loads(response.read().decode("utf-8"))
        return document


def price_filter(sizes: Iterable[str], region: str) -> str:
    """The OData ``$filter`` for the VM meters of ``sizes`` in ``region`` (values are case-sensitive)."""
    names = " or ".join(f"armSkuName eq '{name}'" for name in sorted(sizes))
    return f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' and ({names})"


def query_url(base_url: str, sizes: Iterable[str], region: str) -> str:
    return (
        f"{base_url}?{urllib.parse.urlencode({'$filter': price_filter(sizes, region)}, quote_via=urllib.parse.quote)}"
    )


def iter_items(first_url: str, fetch: Fetch = _http_get_json) -> Iterator[dict[str, Any]]:
    """Every item of every page, following ``NextPageLink`` until it is null or empty."""
    url: str | None = first_url
    for _ in range(MAX_PAGES):
        if not url:
            return
        page = fetch(url)
        yield from page.get("Items") or []
        url = page.get("NextPageLink")
    raise RuntimeError(f"the price API kept paging past {MAX_PAGES} pages; stopped")


def tier_of(item: dict[str, Any]) -> Tier | None:
    """The tier a Linux consumption meter prices, or None for a meter we do not use."""
    if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
        return None
    if item.get("currencyCode", "USD") != "USD" or str(item.get("productName", "")).endswith("Windows"):
        return None
    name = f"{item.get('skuName', '')} {item.get('meterName', '')}"
    if "Low Priority" in name:
        return Tier.LOW_PRIORITY
    if "Spot" in name:
        return Tier.SPOT
    return Tier.PAYG


def collect_prices(items: Iterable[dict[str, Any]]) -> Prices:
    """The prices of ``items``, the newest meter winning where several overlap."""
    chosen: dict[tuple[str, str, Tier], tuple[str, float]] = {}
    for item in items:
        tier = tier_of(item)
        size, region = item.get("armSkuName"), item.get("armRegionName")
        price = item.get("retailPrice")
        if tier is None or not size or not region or not isinstance(price, int | float) or price < 0:
            continue
        key = (size, region, tier)
        started = str(item.get("effectiveStartDate", ""))
        if key not in chosen or started >= chosen[key][0]:
            chosen[key] = (started, float(price))
    prices: Prices = {}
    for (size, region, tier), (_, price) in chosen.items():
        prices.setdefault(size, {}).setdefault(region, {})[tier] = price
    return prices


def _repriced(sizes: dict[str, Sized], prices: Prices) -> dict[str, Sized]:
    """``sizes`` with the fetched regions' prices replaced by ``prices`` (other regions kept)."""
    repriced = {}
    for name, size in sizes.items():
        regional = dict(size.prices)
        for region, tiers in prices.get(name, {}).items():
            regional[region] = RegionPrice(**{tier.value: value for tier, value in tiers.items()})
        repriced[name] = size.model_copy(update={"prices": regional})
    return repriced


def rebuild(catalogue: Catalogue, prices: Prices, *, source_url: str, retrieved: datetime) -> Catalogue:
    """``catalogue`` with the fetched regions' prices, GPU and host sizes alike, replaced by ``prices``."""
    day = retrieved.astimezone(UTC).date().isoformat()
    fetched_regions = {region for by_region in prices.values() for region in by_region}
    source = Source(
        title="Azure Retail Prices API",
        url=source_url,
        retrieved=day,
        note=f"Linux Consumption meters, newest effectiveStartDate per size, region and tier; format: {API_DOCS}",
    )
    return catalogue.model_copy(
        update={
            "retrieved": day,
            "sizes": _repriced(catalogue.sizes, prices),
            "host_sizes": _repriced(catalogue.host_sizes, prices),
            "regions": sorted({*catalogue.regions, *fetched_regions}),
            "sources": {**catalogue.sources, "prices": source},
        }
    )


def refresh(
    catalogue: Catalogue,
    regions: Iterable[str],
    *,
    base_url: str = RETAIL_PRICES_URL,
    fetch: Fetch = _http_get_json,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Catalogue:
    """Ask the API for every catalogued size, GPU and host, in each of ``regions`` and rebuild the catalogue."""
    sizes = [*catalogue.sizes, *catalogue.host_sizes]
    items: list[dict[str, Any]] = []
    for region in regions:
        items.extend(iter_items(query_url(base_url, sizes, region), fetch))
    prices = collect_prices(items)
    if not prices:
        raise RuntimeError(f"the price API returned no usable Linux hourly meters for {list(regions)}")
    return rebuild(catalogue, prices, source_url=base_url, retrieved=now())


def write_catalogue(catalogue: Catalogue, path: Path) -> Path:
    """Write ``catalogue`` in the bundled file's schema (a file ``RAPIDS_HPO_PRICES_FILE`` may name)."""
    document = catalogue.model_dump(mode="json", by_alias=True, exclude={"origin"}, exclude_none=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Written by `rapids-hpo prices refresh` on {catalogue.retrieved} from {catalogue.sources['prices'].url}\n"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False, width=110), encoding="utf-8")
    return path
