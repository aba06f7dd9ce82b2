"""infra/modules/observability.bicep against the code it charts: every metric the app records and every
attribute a query reads are ones shared.telemetry emits, the step spans are found by the name the state
machine gives them, and the alert's idea of "stuck" leaves room for the sweep. (The resources' shapes are
checked against the SDK models with the rest of infra/: tests/test_infra_schema.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from shared.telemetry import metrics, steps
from tests import arm_schema

ROOT = Path(__file__).resolve().parents[1]
MODULE = (ROOT / "infra" / "modules" / "observability.bicep").read_text()
MAIN = (ROOT / "infra" / "main.bicep").read_text()


def test_the_workbook_charts_every_metric_the_app_records():
    named = set(re.findall(r"rapids_hpo\.[a-z_.]+[a-z_]", MODULE))
    events = {name for name in metrics.INSTRUMENTS if name.startswith("rapids_hpo.events.")}
    covered = {name for name in metrics.INSTRUMENTS if name in named}
    assert "rapids_hpo.events." in MODULE  # the events chart reads all three by prefix
    assert covered | events == set(metrics.INSTRUMENTS), set(metrics.INSTRUMENTS) - covered - events
    unknown = {n for n in named if n.count(".") >= 2 and n not in metrics.INSTRUMENTS and not n.endswith(".")}
    attributes = {value for key, value in vars(steps).items() if key.isupper() and isinstance(value, str)}
    assert unknown <= attributes, unknown


def test_every_dimension_a_query_reads_is_one_the_code_writes():
    read = set(re.findall(r'customDimensions\["([^"]+)"\]', MODULE))
    read |= set(re.findall(r'\$\{dims\}\["([^"]+)"\]', MODULE))
    written = {value for key, value in vars(steps).items() if key.isupper() and isinstance(value, str)}
    written |= {"kind"}  # the events' failure kind (steps.events_delivered)
    assert read and read <= written, read - written


def test_step_spans_are_found_by_the_name_the_state_machine_gives_them():
    assert 'name startswith "step "' in MODULE
    source = (ROOT / "shared" / "telemetry" / "steps.py").read_text()
    assert 'f"step {step}"' in source


def test_the_alert_waits_longer_than_the_sweep_before_calling_an_experiment_stuck():
    assert "stuckMinutes: max(30, (stallSeconds * 2) / 60)" in MAIN
    assert re.search(r"@minValue\(10\)\s+param stuckMinutes int = 30", MODULE)
    assert "timestamp < ago(${stuckMinutes}m)" in MODULE


def test_an_integer_enum_takes_numbers_only():
    """The alert's severity is an int enum on the wire (AlertSeverity): the schema check accepts 2, refuses "2"."""
    model = arm_schema.model_for("Microsoft.Insights/scheduledQueryRules")
    body = {
        "location": "eastus",
        "kind": "LogAlert",
        "properties": {
            "severity": 2,
            "scopes": ["x"],
            "criteria": {
                "allOf": [{"query": "q", "timeAggregation": "Count", "operator": "GreaterThan", "threshold": 0}]
            },
        },
    }
    assert [str(p) for p in arm_schema.check(body, model)] == []
    body["properties"]["severity"] = "2"
    (problem,) = [str(p) for p in arm_schema.check(body, model)]
    assert problem.startswith("properties.severity: '2' is not one of AlertSeverity")
    body["properties"]["severity"] = 7
    assert arm_schema.check(body, model)
