"""What people read about cost: the plan's summary and comparison table, and one line for status/watch.

``format_cost`` and ``cost_cells`` take the API's ``cost`` object (``{spent_usd, budget_usd, basis}``), so
the CLI's ``status`` and ``watch`` (and any live table) show the same figures the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from shared.cost.billing import BillingProfile, billing_profile
from shared.cost.catalogue import Catalogue, Tier
from shared.cost.estimate import (
    CostEstimate,
    RunTimes,
    candidate_estimates,
    estimate_cost,
    run_time_range,
    spec_warnings,
)

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

TIER_LABEL = {Tier.PAYG: "pay-as-you-go", Tier.SPOT: "Spot", Tier.LOW_PRIORITY: "low priority"}
TIER_SHORT = {Tier.PAYG: "PAYG", Tier.SPOT: "Spot", Tier.LOW_PRIORITY: "low-pri"}


def usd(value: float | None) -> str:
    if value is None:
        return "unpriced"
    return f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.3f}"


def usd_range(estimate: CostEstimate) -> str:
    if not estimate.priced:
        return "unpriced"
    if abs((estimate.usd_high or 0) - (estimate.usd_low or 0)) < 0.005:
        return usd(estimate.usd_high)
    return f"{usd(estimate.usd_low)} - {usd(estimate.usd_high)}"


def _hours(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def node_lines(profile: BillingProfile, catalogue: Catalogue) -> list[str]:
    """Each billed group at its own size and price, when the groups differ (a vmcluster's CPU head beside its
    GPU workers): the blended node-hour rate alone would hide what each costs. Nothing for one group."""
    groups = [(g, p) for g, p in zip(profile.groups, profile.prices(catalogue), strict=True) if g.count]
    if len({(g.vm_size, g.tier) for g, _ in groups}) < 2:
        return []
    return [
        f"{g.count} x {g.vm_size} ({g.role}): {usd(p.usd_per_hour) if p else 'unpriced'}/h {TIER_LABEL[g.tier]}"
        for g, p in groups
    ]


def front_refits_text(spec: ExperimentSpec, times: RunTimes) -> str:
    """What the top of the range adds for a run with several objectives: its front members' refits."""
    count = times.front_refits
    return (
        f"up to {count} refit{'s' if count > 1 else ''} of other Pareto front members on all rows "
        f"(output.front_models {spec.output.front_models}, the best's aside), one after another, each counted "
        "as one trial's time; at best none"
    )


def summary(spec: ExperimentSpec, estimate: CostEstimate, catalogue: Catalogue, creates: list[str]) -> Group:
    """The plan's first screen: what is created (``creates``: the backend's planner says), node-hours, the
    cost range, the budget, the warnings."""
    times = run_time_range(spec)
    lines = [Text(f"Plan for {spec.name} (backend {spec.compute.backend})", style="bold")]
    lines += [Text(f"  {'creates' if i == 0 else '':<9} {line}") for i, line in enumerate(creates)]
    lines.append(Text(f"  runs      {times.low_s / 3600:.2f}-{times.high_s / 3600:.2f} h of wall time"))
    lines.append(Text(f"            at most: every trial to {times.per_trial_basis}"))
    lines.append(Text(f"            at best: {times.low_basis}"))
    if times.front_refits:
        lines.append(Text(f"            then:    {front_refits_text(spec, times)}"))
    profile = billing_profile(spec)
    overheads = profile.overheads()
    included = f" ({' and '.join(overheads)} included)" if overheads else ""
    hours = f"{_hours(estimate.node_hours_low)}-{_hours(estimate.node_hours_high)}"
    lines.append(Text(f"  uses      {hours} node-hours{included}"))
    if estimate.priced:
        rate = f"{usd(estimate.usd_per_hour)}/node-hour, {TIER_LABEL[estimate.tier]}"
        lines.append(Text(f"  costs     {usd_range(estimate)}  ({rate})", style="bold"))
        lines += [
            Text(f"  {'nodes' if i == 0 else '':<9} {line}") for i, line in enumerate(node_lines(profile, catalogue))
        ]
        lines.append(Text(f"  prices    {estimate.basis}", style="dim"))
    elif not profile.billed:
        lines.append(Text(f"  costs     nothing billed here; {profile.unpriced_hint}"))
    else:
        lines.append(Text(f"  costs     unpriced: {'; '.join(estimate.unpriced)}", style="yellow"))
    budget = spec.limits.max_cost
    if budget is not None:
        over = estimate.priced and (estimate.usd_high or 0) > budget
        if over:
            top = usd(estimate.usd_high)
            text = (
                f"  budget    {usd(budget)} (limits.max_cost): the estimate's top ({top}) EXCEEDS it; "
                "trials that would pass it are not started and the run stops at it"
            )
        else:
            text = f"  budget    {usd(budget)} (limits.max_cost): the whole estimate stays within it"
        lines.append(Text(text, style="red" if over else "green"))
    for warning in spec_warnings(spec, catalogue):
        lines.append(Text(f"  warning   {warning}", style="yellow"))
    return Group(*lines)


def comparison(spec: ExperimentSpec, catalogue: Catalogue, rows: list[CostEstimate]) -> Table:
    """SkyPilot-style: the same experiment on other sizes and tiers, cheapest first, the spec's marked."""
    own = estimate_cost(spec, catalogue)
    where = "" if billing_profile(spec).billed else "on Azure "
    table = Table(
        title=f"The same experiment {where}on other sizes (equal trial times assumed)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
    )
    table.add_column("VM size", no_wrap=True)
    table.add_column("GPUs", no_wrap=True)
    table.add_column("tier", no_wrap=True)
    table.add_column("$/node-h", justify="right")
    table.add_column("estimated cost", justify="right", no_wrap=True)

    def order(row: CostEstimate) -> tuple[bool, float]:
        return (not row.priced, row.usd_high or 0.0)

    for row in sorted(rows, key=order):
        size = catalogue.size(row.vm_size or "")
        gpus = "?"
        if size:
            memory = "" if "GB" in size.gpu else f" {size.gpu_memory_gb:g}GB"
            gpus = f"{size.gpus}x {size.gpu}{memory}"
        chosen = row.vm_size == own.vm_size and row.tier is own.tier
        name = (row.vm_size or "?").removeprefix("Standard_")
        if "Spot price used" in row.basis:
            table.caption = "low-pri: priced at the Spot figure (no low-priority meter in the catalogue)"
        table.add_row(
            f"{name} (spec)" if chosen else name,
            gpus,
            TIER_SHORT[row.tier],
            usd(row.usd_per_hour),
            usd_range(row),
            style="bold" if chosen else None,
        )
    return table


def plan_renderables(spec: ExperimentSpec, catalogue: Catalogue, creates: list[str]) -> list[Any]:
    estimate = estimate_cost(spec, catalogue)
    rows = candidate_estimates(spec, catalogue)
    return [summary(spec, estimate, catalogue, creates), comparison(spec, catalogue, rows)]


def plan_document(spec: ExperimentSpec, catalogue: Catalogue, creates: list[str]) -> dict[str, Any]:
    """The summary and the table as plain data (``rapids-hpo plan -o yaml``)."""
    estimate = estimate_cost(spec, catalogue)
    times = run_time_range(spec)

    def row(item: CostEstimate) -> dict[str, Any]:
        return {
            "vm_size": item.vm_size,
            "tier": item.tier.value,
            "usd_per_node_hour": None if item.usd_per_hour is None else round(item.usd_per_hour, 4),
            "usd_low": None if item.usd_low is None else round(item.usd_low, 4),
            "usd_high": None if item.usd_high is None else round(item.usd_high, 4),
        }

    refits = {"front_refits": {"count": times.front_refits, "seconds_each_at_most": times.per_trial_s}}
    return {
        "creates": creates,
        "wall_time_hours": {"low": round(times.low_s / 3600, 4), "high": round(times.high_s / 3600, 4)},
        **(refits if times.front_refits else {}),
        "node_hours": {"low": round(estimate.node_hours_low, 4), "high": round(estimate.node_hours_high, 4)},
        "cost": {**row(estimate), "basis": estimate.basis, "unpriced": estimate.unpriced},
        "budget_usd": spec.limits.max_cost,
        "exceeds_budget": bool(
            spec.limits.max_cost is not None and estimate.priced and (estimate.usd_high or 0) > spec.limits.max_cost
        ),
        "warnings": spec_warnings(spec, catalogue),
        "candidates": [row(item) for item in candidate_estimates(spec, catalogue)],
        "prices": {"catalogue": catalogue.retrieved_label, "sources": {k: v.url for k, v in catalogue.sources.items()}},
    }


# ------------------------------------------------------------------------------------- status / watch
def cost_cells(cost: dict[str, Any] | None) -> tuple[str, str]:
    """``(spent, budget)`` as table cells: ``$1.23`` (``~$1.23`` when estimated) and ``$5.00`` / ``-``."""
    if not cost:
        return "", ""
    spent = cost.get("spent_usd")
    estimated = str(cost.get("basis", "")).startswith("estimate")
    spent_text = "" if spent is None else ("~" if estimated else "") + usd(float(spent))
    budget = cost.get("budget_usd")
    return spent_text, "-" if budget is None else usd(float(budget))


def format_cost(cost: dict[str, Any] | None) -> str:
    """One line: ``cost $1.23 of $5.00 (25%)``, ``~`` marking an estimate (local runs priced as Azure)."""
    if not cost or cost.get("spent_usd") is None:
        return ""
    spent, budget = cost_cells(cost)
    if cost.get("budget_usd"):
        share = float(cost["spent_usd"]) / float(cost["budget_usd"])
        return f"cost {spent} of {budget} ({share:.0%})"
    return f"cost {spent}"
