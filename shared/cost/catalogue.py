"""The GPU size catalogue: what each Azure GPU VM size has, what it costs per hour, and which sizes are retired.

The bundled file (``data/azure-gpu-sizes.yaml``) is dated and names its sources. A user's file of the same
schema (``Settings.prices_file``, the ``RAPIDS_HPO_PRICES_FILE`` setting, or what ``rapids-hpo prices
refresh`` writes) is laid over it: its sizes replace the bundled ones of the same name, its retirements add
to them. The file is chosen once per process, by its edge (:func:`use_prices_file`: the control plane's
context, the CLI, the local driver), never read from the environment here: every rule that prices or
checks a size (admission, plan, ledger, budget, the driver's guard) then reads one catalogue.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

BUNDLED_CATALOGUE = "data/azure-gpu-sizes.yaml"
"""Inside this package; read through ``importlib.resources`` (the package may be imported from a zip)."""
PRICES_FILE_SETTING = "RAPIDS_HPO_PRICES_FILE"


class Tier(StrEnum):
    """How a VM is bought: dedicated pay-as-you-go, Azure Spot, or AzureML low priority."""

    PAYG = "payg"
    SPOT = "spot"
    LOW_PRIORITY = "low_priority"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegionPrice(_Doc):
    """USD per VM per hour in one region; ``None`` where no figure could be confirmed."""

    payg: float | None = Field(default=None, ge=0)
    spot: float | None = Field(default=None, ge=0)
    low_priority: float | None = Field(default=None, ge=0)


class GpuSize(_Doc):
    """One VM size: its GPUs and host, and its prices by region."""

    family: str
    gpu: str
    gpus: int = Field(ge=1)
    gpu_memory_gb: float = Field(gt=0, description="per GPU")
    compute_capability: str
    vcpus: int = Field(ge=1)
    memory_gb: float = Field(gt=0)
    prices: dict[str, RegionPrice] = Field(default_factory=dict)


class HostSize(_Doc):
    """A size without a GPU that a run bills beside its GPU nodes (the vmcluster head: scheduler and driver
    only): priced like a GPU size, never offered for trials (it is not in :attr:`Catalogue.sizes`)."""

    family: str
    vcpus: int = Field(ge=1)
    memory_gb: float = Field(gt=0)
    prices: dict[str, RegionPrice] = Field(default_factory=dict)


class Retirement(_Doc):
    retired_on: str
    replacement: str
    note: str = ""


class Source(_Doc):
    title: str
    url: str
    retrieved: str
    commit: str | None = None
    note: str = ""


class Catalogue(_Doc):
    """The whole document. Look-ups never raise: an unknown size or region is ``None``."""

    schema_: int = Field(default=1, alias="schema")
    currency: str = "USD"
    retrieved: str
    reference_region: str = "eastus"
    sources: dict[str, Source] = Field(default_factory=dict)
    regions: list[str] = Field(default_factory=list)
    sizes: dict[str, GpuSize] = Field(default_factory=dict)
    host_sizes: dict[str, HostSize] = Field(default_factory=dict)
    retired: dict[str, Retirement] = Field(default_factory=dict)
    origin: str = Field(default="bundled", description="where this catalogue was read from")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def size(self, name: str) -> GpuSize | None:
        return self.sizes.get(name)

    def retirement(self, name: str) -> Retirement | None:
        return self.retired.get(name)

    def price(self, name: str, region: str | None, tier: Tier = Tier.PAYG) -> Price | None:
        """The hourly price of ``name`` in ``region`` (the reference region when it has none), or None.

        AzureML low priority falls back to the Spot figure when no low-priority meter is recorded; the
        returned ``basis`` says which figure was used and where it came from.
        """
        size = self.sizes.get(name) or self.host_sizes.get(name)
        if size is None:
            return None
        candidates = [region] if region else []
        candidates.append(self.reference_region)
        for where in candidates:
            regional = size.prices.get(where) if where else None
            if regional is None:
                continue
            value, used = getattr(regional, tier.value), tier
            if value is None and tier is Tier.LOW_PRIORITY:
                value, used = regional.spot, Tier.SPOT
            if value is None:
                continue
            return Price(
                vm_size=name,
                region=where,
                tier=tier,
                usd_per_hour=value,
                basis=self._basis(where, region, tier, used),
            )
        return None

    def _basis(self, where: str, asked: str | None, tier: Tier, used: Tier) -> str:
        label = {Tier.PAYG: "pay-as-you-go", Tier.SPOT: "Spot", Tier.LOW_PRIORITY: "low-priority"}
        text = f"{label[used]} list price, {where}, {self.retrieved_label}"
        if used is not tier:
            text += f" (no {label[tier]} figure: {label[used]} price used)"
        if asked and where != asked:
            text += f" (no price for {asked})"
        elif not asked:
            text += " (reference region: the spec names none)"
        return text

    @property
    def retrieved_label(self) -> str:
        return f"{self.origin} catalogue of {self.retrieved}"

    def check(self, name: str) -> SizeCheck:
        """Whether ``name`` may be used: retired -> error with the replacement, unknown -> a warning."""
        retired = self.retired.get(name)
        if retired is not None:
            return SizeCheck(
                error=f"{name} was retired by Azure on {retired.retired_on}; use {retired.replacement} instead"
                + (f" ({retired.note})" if retired.note else "")
            )
        if name not in self.sizes and name not in self.host_sizes:
            return SizeCheck(
                warning=f"{name} is not in the GPU size catalogue ({self.retrieved_label}): it has no price, "
                "and it may lack a GPU RAPIDS supports (compute capability 7.0 or later)"
            )
        return SizeCheck()

    def priced_sizes(self, region: str | None = None) -> list[str]:
        """Sizes with a pay-as-you-go price in ``region`` (or the reference region), cheapest first."""
        priced = [(p.usd_per_hour, n) for n in self.sizes if (p := self.price(n, region)) is not None]
        return [name for _, name in sorted(priced)]


@dataclass(frozen=True)
class Price:
    vm_size: str
    region: str
    tier: Tier
    usd_per_hour: float
    basis: str


@dataclass(frozen=True)
class SizeCheck:
    error: str | None = None
    warning: str | None = None


def parse_catalogue(document: dict[str, Any], origin: str) -> Catalogue:
    return Catalogue.model_validate({**document, "origin": origin})


def read_catalogue(path: Path, origin: str | None = None) -> Catalogue:
    return _parse_text(Path(path).read_text(encoding="utf-8"), origin or str(path))


def bundled_catalogue() -> Catalogue:
    text = importlib.resources.files(__package__).joinpath(BUNDLED_CATALOGUE).read_text(encoding="utf-8")
    return _parse_text(text, "bundled")


def _parse_text(text: str, origin: str) -> Catalogue:
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{origin}: a price catalogue is a mapping, not {type(document).__name__}")
    return parse_catalogue(document, origin)


def overlay(base: Catalogue, user: Catalogue) -> Catalogue:
    """``user``'s sizes replace ``base``'s of the same name; retirements, regions and sources add up."""
    return base.model_copy(
        update={
            "retrieved": user.retrieved,
            "reference_region": user.reference_region,
            "sources": {**base.sources, **user.sources},
            "regions": sorted({*base.regions, *user.regions}),
            "sizes": {**base.sizes, **user.sizes},
            "host_sizes": {**base.host_sizes, **user.host_sizes},
            "retired": {**base.retired, **user.retired},
            "origin": user.origin,
        }
    )


@functools.cache
def _load(user_file: str) -> Catalogue:
    bundled = bundled_catalogue()
    if not user_file:
        return bundled
    return overlay(bundled, read_catalogue(Path(user_file)))


_prices_file = ""
"""The user's file this process prices with (empty: the bundled catalogue alone); :func:`use_prices_file`."""


def use_prices_file(path: str | Path | None) -> None:
    """Price this process with ``path`` laid over the bundled catalogue (``None`` or empty: the bundled one):
    called by the process's edge with ``Settings.prices_file``, before any step asks for a price."""
    global _prices_file
    _prices_file = str(Path(path).expanduser().resolve()) if path else ""


def load_catalogue(user_file: str | Path | None = None) -> Catalogue:
    """The bundled catalogue with the user's file (argument, else the process's, :func:`use_prices_file`)
    laid over it."""
    if user_file is not None:  # "": the bundled catalogue alone
        return _load(str(Path(user_file).expanduser().resolve()) if str(user_file) else "")
    return _load(_prices_file)
