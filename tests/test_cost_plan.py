"""Pricing a spec before it runs: the wall-time range, node-hours x prices, and ``rapids-hpo plan``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shared.cli import app
from shared.cost.billing import billing_profile
from shared.cost.catalogue import Tier, load_catalogue
from shared.cost.estimate import (
    candidate_estimates,
    estimate_cost,
    first_stop_fraction,
    run_time_range,
)
from shared.cost.report import cost_cells, format_cost
from shared.spec import load_spec
from tests.retail_prices_server import retail_prices_server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
T4 = "Standard_NC4as_T4_v3"


def example(name: str, **compute) -> dict:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    if compute:
        document["compute"] = compute
    return copy.deepcopy(document)


def test_wall_time_range_from_waves_and_the_policy():
    spec = load_spec(example("flights-rf.yaml"))  # 10 trials, 2 at a time, 300 s each, bandit from fold 1 of 3
    times = run_time_range(spec)
    assert first_stop_fraction(spec) == pytest.approx(1 / 3)
    assert times.high_s == 5 * 300
    assert times.low_s == pytest.approx(300 + 4 * 300 / 3)
    xgb = load_spec(example("flights-xgb.yaml"))  # median stopping from fold 2 of 5
    assert first_stop_fraction(xgb) == pytest.approx(2 / 5)


def test_no_policy_means_no_range_and_timeout_caps_both():
    document = example("flights-rf.yaml")
    document.pop("early_termination")
    document["limits"] |= {"timeout": 600}
    times = run_time_range(load_spec(document))
    assert times.low_s == times.high_s == 600


def test_azureml_cost_is_node_hours_times_the_price():
    spec = load_spec(example("flights-xgb.yaml", backend="azureml", vm_size=T4, max_instances=2))
    estimate = estimate_cost(spec, load_catalogue(""))
    times = run_time_range(spec)
    nodes = 2
    assert estimate.node_hours_high == pytest.approx(nodes * (times.high_s + 300) / 3600)  # + idle scale-down
    assert estimate.usd_high == pytest.approx(estimate.node_hours_high * 0.526)
    assert estimate.usd_low < estimate.usd_high
    assert "reference region" in estimate.basis


def test_vmcluster_prices_a_different_scheduler_size_apart():
    compute = {
        "backend": "vmcluster",
        "location": "westus3",
        "resource_group": "rg",
        "n_workers": 3,
        "vm_size": "Standard_NC24ads_A100_v4",
        "scheduler_vm_size": T4,
    }
    spec = load_spec(example("flights-rf.yaml", **compute))
    groups = billing_profile(spec).groups
    assert [(g.role, g.vm_size, g.count) for g in groups] == [
        ("workers", "Standard_NC24ads_A100_v4", 3),
        ("scheduler", T4, 1),
    ]
    estimate = estimate_cost(spec, load_catalogue(""))
    assert estimate.usd_per_hour == pytest.approx((3 * 3.673 + 0.526) / 4)
    assert "westus3" in estimate.basis


def test_local_runs_are_priced_as_the_named_azure_size_and_labelled_an_estimate():
    spec = load_spec(example("flights-rf.yaml", backend="local", n_workers=2, equivalent_vm_size=T4))
    estimate = estimate_cost(spec, load_catalogue(""))
    assert estimate.priced and estimate.basis.startswith("estimate")
    assert estimate.usd_high == pytest.approx(billing_profile(spec).node_hours(run_time_range(spec).high_s) * 0.526)
    unnamed = estimate_cost(load_spec(example("flights-rf.yaml")), load_catalogue(""))
    assert not unnamed.priced and unnamed.unpriced


def test_candidates_cover_the_specs_size_and_a_cheap_tier():
    spec = load_spec(example("flights-xgb.yaml", backend="azureml"))
    rows = candidate_estimates(spec, load_catalogue(""))
    assert {(r.vm_size, r.tier) for r in rows} >= {(T4, Tier.PAYG), (T4, Tier.LOW_PRIORITY)}
    priced = [r for r in rows if r.priced]
    assert min(priced, key=lambda r: r.usd_high).tier is Tier.LOW_PRIORITY


# -------------------------------------------------------------------------------------- the CLI
runner = CliRunner()


def write(tmp_path, document) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_plan_prints_a_summary_and_a_table_and_the_sweep_job_once_under_full(tmp_path):
    path = write(tmp_path, example("flights-xgb.yaml", backend="azureml"))
    short = runner.invoke(app, ["plan", str(path)], env={"COLUMNS": "120"})
    assert short.exit_code == 0, short.output
    assert "node-hours" in short.output and "$0.4" in short.output and "low-pri" in short.output
    assert "--full" in short.output and "sweep" in short.output and "search_space" not in short.output
    full = runner.invoke(app, ["plan", str(path), "--full"], env={"COLUMNS": "120"})
    assert full.exit_code == 0, full.output
    assert full.output.count("type: sweep") == 1  # the sweep job once, as YAML


def test_the_plan_prices_a_vmcluster_head_as_its_own_size_and_says_why(tmp_path):
    compute = {"backend": "vmcluster", "location": "eastus", "resource_group": "rg", "n_workers": 2}
    result = runner.invoke(app, ["plan", str(write(tmp_path, example("flights-rf.yaml", **compute)))])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "2 x Standard_NC8as_T4_v3 (workers): $0.752/h" in text
    assert "1 x Standard_D8s_v5 (scheduler): $0.384/h" in text
    assert "1 head VM (Standard_D8s_v5: scheduler and driver only, no trials)" in text
    assert "$0.629/node-hour" in text  # (2 x 0.752 + 0.384) / 3
    same = {**compute, "scheduler_vm_size": None}  # null: the head sized like a worker, one group's price
    result = runner.invoke(app, ["plan", str(write(tmp_path, example("flights-rf.yaml", **same)))])
    assert "(scheduler):" not in result.output and "$0.752/node-hour" in " ".join(result.output.split())


def test_plan_yaml_is_one_document_with_the_estimate_and_no_duplicate(tmp_path):
    path = write(tmp_path, example("flights-xgb.yaml", backend="azureml"))
    result = runner.invoke(app, ["plan", str(path), "-o", "yaml"])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.output)
    assert document["plan"]["cost"]["vm_size"] == T4 and document["plan"]["node_hours"]["high"] > 0
    assert "sweep_job" in document["dry_run"] and "sweep_job_yaml" not in document["dry_run"]


def test_plan_says_when_the_estimate_exceeds_the_budget(tmp_path):
    document = example("flights-xgb.yaml", backend="azureml", vm_size="Standard_NC24ads_A100_v4")
    document["limits"]["max_cost"] = 1.0
    result = runner.invoke(app, ["plan", str(write(tmp_path, document))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "EXCEEDS" in result.output and "limits.max_cost" in result.output
    data = yaml.safe_load(runner.invoke(app, ["plan", str(write(tmp_path, document)), "-o", "yaml"]).output)
    assert data["plan"]["exceeds_budget"] is True and data["plan"]["budget_usd"] == 1.0


def test_plan_warns_about_an_unknown_size(tmp_path):
    compute = {"backend": "vmcluster", "location": "eastus", "resource_group": "rg", "vm_size": "Standard_X1_v9"}
    result = runner.invoke(
        app, ["plan", str(write(tmp_path, example("flights-rf.yaml", **compute)))], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "Standard_X1_v9 is not in the GPU size catalogue" in result.output


def test_plan_of_a_retired_size_fails_naming_the_field(tmp_path):
    path = write(tmp_path, example("flights-rf.yaml", backend="azureml", vm_size="Standard_NC6s_v3"))
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2 and "compute.vm_size" in result.output and "NC24ads_A100_v4" in result.output


def test_prices_refresh_writes_the_users_file_from_the_api(tmp_path):
    target = tmp_path / "prices.yaml"
    with retail_prices_server() as api:
        result = runner.invoke(
            app, ["prices", "refresh", "--api-url", api.url, "--region", "eastus", "--output", str(target)]
        )
    assert result.exit_code == 0, result.output
    written = load_catalogue(target)
    assert written.sizes[T4].prices["eastus"].low_priority == 0.1052
    assert written.sources["prices"].title == "Azure Retail Prices API"
    assert written.host_sizes["Standard_D8s_v5"].prices["eastus"].payg == 0.396  # the vmcluster's CPU head too


def test_prices_refresh_reports_an_unreachable_api(tmp_path):
    result = runner.invoke(
        app,
        [
            "prices",
            "refresh",
            "--api-url",
            "http://127.0.0.1:9/api/retail/prices",
            "--output",
            str(tmp_path / "p.yaml"),
        ],
    )
    assert result.exit_code == 1 and "price refresh failed" in result.output
    assert not (tmp_path / "p.yaml").exists()


def test_cost_formatting_for_status_and_watch():
    assert format_cost({"spent_usd": 1.234, "budget_usd": 5.0, "basis": "pay-as-you-go"}) == "cost $1.23 of $5.00 (25%)"
    assert format_cost({"spent_usd": 0.5, "budget_usd": None, "basis": "estimate: ..."}) == "cost ~$0.500"
    assert cost_cells(None) == ("", "") and format_cost(None) == ""


def test_the_backends_billing_profile_gives_the_node_hours():
    aml = load_spec(example("flights-xgb.yaml", backend="azureml", max_instances=2))
    assert billing_profile(aml).node_hours(3600) == pytest.approx(2 * (3600 + 300) / 3600)  # + idle tail
    vmc = load_spec(
        example("flights-rf.yaml", backend="vmcluster", location="eastus", resource_group="rg", n_workers=3)
    )
    startup_h = 900 / 3600  # the VMs bill while they boot
    assert billing_profile(vmc).node_hours(3600) == pytest.approx(4 * (1 + startup_h))


def test_spot_workers_with_an_on_demand_head():
    compute = {"backend": "vmcluster", "location": "eastus", "resource_group": "rg", "n_workers": 3, "spot": True}
    spec = load_spec(example("flights-rf.yaml", **compute))
    estimate = estimate_cost(spec, load_catalogue(""))
    assert estimate.tier is Tier.SPOT
    # NC8as_T4_v3 Spot x3 + the on-demand head priced as its own (CPU) size, D8s_v5 pay-as-you-go in eastus
    assert estimate.usd_per_hour == pytest.approx((3 * 0.0896 + 0.384) / 4)
    gpu_head = load_spec(example("flights-rf.yaml", **compute, scheduler_vm_size="Standard_NC8as_T4_v3"))
    assert estimate_cost(gpu_head, load_catalogue("")).usd_per_hour == pytest.approx((3 * 0.0896 + 0.752) / 4)


def test_watch_shows_the_cost_line():
    from rich.console import Console

    from shared.dashboard.terminal import watch_view

    experiment = {
        "id": "exp-1",
        "name": "x",
        "status": "RUNNING",
        "progress": {"done": 1, "total": 4},
        "best": None,
        "cost": {"spent_usd": 0.42, "budget_usd": 2.0, "basis": "Spot list price"},
    }
    console = Console(record=True, width=200)
    console.print(watch_view(experiment, [], []))
    assert "cost $0.420 of $2.00 (21%)" in console.export_text()
