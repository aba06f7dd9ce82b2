"""The optional Event Grid topic in infra/ agrees with shared.events: CloudEvents 1.0 input, identity
only (no keys), its endpoint and the events' source reach the app settings, and it is off by default.
Uses the structural Bicep reader of tests/test_infra.py (no Bicep compiler runs here)."""

from __future__ import annotations

import re

from tests.test_infra import INFRA, MAIN_BICEP, _bicep, _main_app_settings, _parameters

EVENTGRID = INFRA / "modules" / "eventgrid.bicep"
ROLES_EVENTGRID = INFRA / "modules" / "roles-eventgrid.bicep"


def _decl(bicep, symbol_or_target):
    return next(d for d in bicep.decls if symbol_or_target in (d.symbol, d.target))


def test_the_topic_takes_cloudevents_from_identities_only():
    module = _bicep(EVENTGRID)
    topic = _decl(module, "Microsoft.EventGrid/topics")
    properties = module.body_object(topic, "properties")
    assert properties["inputSchema"] == "'CloudEventSchemaV1_0'"  # what EventGridPublisherClient sends
    assert properties["disableLocalAuth"] == "true"  # no access keys: EventGrid Data Sender only
    assert properties["minimumTlsVersionAllowed"] == "'1.2'"
    assert re.search(rf"^output endpoint string = {topic.symbol}\.properties\.endpoint$", module.text, re.MULTILINE)


def test_it_is_optional_and_wires_the_app_settings():
    main = _bicep(MAIN_BICEP)
    assert main.params["deployEventGrid"] == "false" and _parameters()["deployEventGrid"] is False
    for target in ("modules/eventgrid.bicep", "modules/roles-eventgrid.bicep"):
        decl = _decl(main, target)
        assert re.search(rf"module\s+{decl.symbol}\s+'{target}'\s*=\s*if \(deployEventGrid\)", main.text), target
    topic_module = _decl(main, "modules/eventgrid.bicep").symbol
    settings = _main_app_settings()
    assert settings["EVENTGRID_TOPIC_ENDPOINT"] == f"deployEventGrid ? {topic_module}.outputs.endpoint : ''"
    assert settings["RAPIDS_HPO_EVENTS_SOURCE"] == "'/rapids-hpo-control/${functionAppName}'"
    assert "EVENTGRID_TOPIC_KEY" not in settings  # the app publishes with its identity


def test_the_sender_role_is_on_the_topic_the_app_publishes_to():
    main = _bicep(MAIN_BICEP)
    roles = _decl(main, "modules/roles-eventgrid.bicep")
    topic = _decl(main, "modules/eventgrid.bicep")
    assert main.body_object(roles, "params")["topicName"] == main.body_object(topic, "params")["name"]
    module = _bicep(ROLES_EVENTGRID)
    assignment = _decl(module, "Microsoft.Authorization/roleAssignments")
    assert module.body(assignment)["scope"] == _decl(module, "Microsoft.EventGrid/topics").symbol
    assert "roleIds.eventGridDataSender" in module.body_object(assignment, "properties")["roleDefinitionId"]
