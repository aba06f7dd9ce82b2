"""The GPU size catalogue: the bundled file, the user's overlay, prices, retirements, and the prices refresh."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote

import pytest
import yaml

from shared.cost import refresh as price_refresh
from shared.cost.catalogue import Tier, bundled_catalogue, load_catalogue
from tests.retail_prices_server import retail_prices_server

T4 = "Standard_NC4as_T4_v3"
A100 = "Standard_NC24ads_A100_v4"


def test_bundled_catalogue_is_dated_sourced_and_rapids_capable():
    catalogue = bundled_catalogue()
    assert catalogue.retrieved and catalogue.currency == "USD"
    assert {"prices", "sizes", "retirements"} <= set(catalogue.sources)
    assert all(source.url.startswith("https://") and source.retrieved for source in catalogue.sources.values())
    families = {size.family for size in catalogue.sizes.values()}
    assert {"NCasT4_v3", "NVadsA10_v5", "NC_A100_v4", "ND_A100_v4", "NCads_H100_v5", "ND_H100_v5"} <= families
    for name, size in catalogue.sizes.items():
        assert float(size.compute_capability) >= 7.0, name  # what RAPIDS needs
        assert name not in catalogue.retired
        for region in size.prices:
            assert region in catalogue.regions
    for name, retired in catalogue.retired.items():
        assert retired.replacement in catalogue.sizes, name


def test_prices_by_region_tier_and_fallbacks():
    catalogue = load_catalogue("")
    payg = catalogue.price(T4, "eastus")
    assert payg and payg.usd_per_hour == pytest.approx(0.526) and "pay-as-you-go" in payg.basis
    spot = catalogue.price(T4, "eastus", Tier.SPOT)
    assert spot and spot.usd_per_hour < payg.usd_per_hour
    low = catalogue.price(T4, "eastus", Tier.LOW_PRIORITY)
    assert low and low.usd_per_hour == spot.usd_per_hour and "Spot price used" in low.basis
    elsewhere = catalogue.price(T4, "westeurope")
    assert elsewhere and elsewhere.region == catalogue.reference_region and "no price for westeurope" in elsewhere.basis
    assert catalogue.price("Standard_NC40ads_H100_v5", "eastus", Tier.SPOT) is None  # not confirmed: left out
    assert catalogue.price("Standard_NV6ads_A10_v5", "eastus") is None  # known, unpriced
    assert catalogue.price("Standard_D4s_v5", "eastus") is None  # unknown


def test_retired_and_unknown_sizes():
    catalogue = load_catalogue("")
    for name in ("Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3"):
        check = catalogue.check(name)
        assert check.error and "2025-09-30" in check.error and "A100" in check.error
    unknown = catalogue.check("Standard_D4s_v5")
    assert unknown.error is None and "no price" in unknown.warning
    assert catalogue.check(T4).error is None and catalogue.check(T4).warning is None


def test_a_users_file_overlays_the_bundled_one(tmp_path):
    user = tmp_path / "prices.yaml"
    user.write_text(
        yaml.safe_dump(
            {
                "retrieved": "2027-01-15",
                "sources": {
                    "prices": {
                        "title": "our negotiated rates",
                        "url": "https://example.invalid/rates",
                        "retrieved": "2027-01-15",
                    }
                },
                "regions": ["westeurope"],
                "sizes": {
                    T4: {
                        "family": "NCasT4_v3",
                        "gpu": "T4",
                        "gpus": 1,
                        "gpu_memory_gb": 16,
                        "compute_capability": "7.5",
                        "vcpus": 4,
                        "memory_gb": 28,
                        "prices": {"westeurope": {"payg": 0.4}},
                    },
                },
                "retired": {"Standard_NC4as_T4_v2": {"retired_on": "2027-01-01", "replacement": T4}},
            }
        )
    )
    catalogue = load_catalogue(user)
    assert catalogue.price(T4, "westeurope").usd_per_hour == 0.4
    assert "2027-01-15" in catalogue.price(T4, "westeurope").basis
    assert catalogue.price(A100, "eastus").usd_per_hour == pytest.approx(3.673)  # bundled sizes stay
    assert catalogue.check("Standard_NC4as_T4_v2").error
    assert catalogue.check("Standard_NC6s_v3").error
    assert "westeurope" in catalogue.regions and "eastus" in catalogue.regions


def test_the_setting_names_the_users_file_and_the_edge_hands_it_over(tmp_path, monkeypatch):
    """``RAPIDS_HPO_PRICES_FILE`` is read into ``Settings`` at the edge, which installs it; the catalogue
    never reads the environment itself (a variable set later changes nothing)."""
    from shared.config import Settings
    from shared.cost.catalogue import use_prices_file

    monkeypatch.setattr("shared.cost.catalogue._prices_file", "")  # restored after the test
    user = tmp_path / "p.yaml"
    user.write_text(yaml.safe_dump({"retrieved": "2027-02-01", "sizes": {}}))
    monkeypatch.setenv("RAPIDS_HPO_PRICES_FILE", str(user))
    assert load_catalogue().origin == "bundled"
    use_prices_file(Settings.from_env().prices_file)
    assert load_catalogue().retrieved == "2027-02-01"
    use_prices_file(None)
    assert load_catalogue().origin == "bundled"


def test_a_bad_users_file_is_an_error_not_a_silent_default(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text(yaml.safe_dump({"retrieved": "x", "sizes": {T4: {"gpus": 0}}}))
    with pytest.raises(ValueError, match=r"gpus|family"):
        load_catalogue(user)


# ------------------------------------------------------------------------------------- prices refresh
def test_filter_names_each_size_and_the_region():
    odata = price_refresh.price_filter([A100, T4], "eastus")
    assert odata == (
        "serviceName eq 'Virtual Machines' and armRegionName eq 'eastus' and "
        f"(armSkuName eq '{A100}' or armSkuName eq '{T4}')"
    )


def test_refresh_pages_through_the_api_and_keeps_linux_consumption_meters():
    base = load_catalogue("")
    when = datetime(2027, 3, 4, 12, 0, tzinfo=UTC)
    with retail_prices_server(page_size=2) as api:
        rebuilt = price_refresh.refresh(base, ["eastus", "westus3"], base_url=api.url, now=lambda: when)
        assert sum("$skip=" in unquote(path) for path in api.requests) >= 2  # followed NextPageLink
    t4 = rebuilt.sizes[T4].prices
    assert t4["eastus"].payg == 0.526  # the newer meter, not the 2021 one; not Windows, Reservation, DevTest
    assert t4["eastus"].spot == 0.0588
    assert t4["eastus"].low_priority == 0.1052
    assert rebuilt.price(T4, "eastus", Tier.LOW_PRIORITY).usd_per_hour == 0.1052
    assert t4["westus3"].payg == 0.526 and t4["westus3"].low_priority is None
    assert rebuilt.sizes[A100].prices["eastus"].spot == 0.4444
    assert t4["southcentralus"] == base.sizes[T4].prices["southcentralus"]  # regions not asked for are kept
    assert "Standard_D4s_v5" not in rebuilt.sizes  # the API knows prices, not GPUs
    assert rebuilt.retrieved == "2027-03-04"
    assert rebuilt.sources["prices"].title == "Azure Retail Prices API" and rebuilt.sources["prices"].url == api.url


def test_refresh_reprices_the_host_sizes_as_the_gpu_sizes():
    """The vmcluster's CPU head (``host_sizes``) is asked for in the same filter and priced by the same rules:
    the newer Linux meter, Spot apart, Windows ignored, regions not asked for kept; it never becomes a GPU size."""
    head = "Standard_D8s_v5"
    base = load_catalogue("")
    assert head in base.host_sizes and head not in base.sizes
    with retail_prices_server(page_size=2) as api:
        rebuilt = price_refresh.refresh(base, ["eastus", "westus3"], base_url=api.url)
        asked = [unquote(path) for path in api.requests]
    assert all(f"armSkuName eq '{head}'" in path for path in asked if "$skip" not in path)
    prices = rebuilt.host_sizes[head].prices
    assert (prices["eastus"].payg, prices["eastus"].spot) == (0.396, 0.0451)  # not 2021's 0.37 nor Windows' 0.752
    assert prices["westus3"].payg == 0.401 and prices["westus3"].spot is None
    assert prices["southcentralus"] == base.host_sizes[head].prices["southcentralus"]
    assert rebuilt.price(head, "eastus").usd_per_hour == 0.396 and head not in rebuilt.sizes
    assert rebuilt.host_sizes[head].vcpus == base.host_sizes[head].vcpus  # the hardware is the catalogue's


def test_refresh_fails_loudly_on_an_empty_answer():
    with retail_prices_server(items=[]) as api, pytest.raises(RuntimeError, match="no usable"):
        price_refresh.refresh(load_catalogue(""), ["eastus"], base_url=api.url)


def test_written_catalogue_reads_back_as_the_users_file(tmp_path):
    with retail_prices_server() as api:
        rebuilt = price_refresh.refresh(load_catalogue(""), ["eastus"], base_url=api.url)
    path = price_refresh.write_catalogue(rebuilt, tmp_path / "prices.yaml")
    again = load_catalogue(path)
    assert again.sizes[T4].prices["eastus"].low_priority == 0.1052
    assert again.sources["prices"].url == api.url
    assert again.host_sizes["Standard_D8s_v5"].prices["eastus"].payg == 0.396
