"""The deployment's side of issue 31: App Service authentication (``authsettingsV2``) is what the app
expects in ``entraId`` mode, checked against the SDK's model like the rest of infra/ (and the check
itself catches a mistake in it), and the app settings the code reads follow the deploy's choice."""

from __future__ import annotations

import copy
from typing import Any

from tests.test_infra import MAIN_BICEP, _bicep, _main_app_settings
from tests.test_infra_schema import Resource, modelled, problems_of, resources

AUTH_TYPE = "Microsoft.Web/sites/config/authsettingsV2"


def _auth() -> Resource:
    (auth,) = [r for r in resources() if r.type == AUTH_TYPE]
    return auth


def test_easy_auth_is_checked_against_the_sdk_model() -> None:
    auth = _auth()
    assert auth.file == "modules/functionapp-auth.bicep" and modelled(auth)
    assert problems_of(auth) == []


def _both_ways(value: Any) -> tuple[Any, Any]:
    """``(with browserSignIn, without)`` of a ``browserSignIn ? a : b`` property."""
    operands = value["operator"]["operands"]
    assert value["operator"]["type"] == "conditional" and operands["condition"] == "browserSignIn"
    return operands["true_value"], operands["false_value"]


def test_easy_auth_refuses_what_the_app_does_not_accept() -> None:
    """Every request needs a token (401 otherwise, never a login redirect for an API), issued by this
    tenant's v2.0 issuer, for the API registration's client id or Application ID URI, over https. With the
    dashboard's browser sign-in chosen, the platform passes requests without a token on to the app, which
    refuses each itself (tests/test_auth.py: every route 401 or a sign-in redirect for a browser's page)."""
    properties = _auth().body["properties"]
    assert properties["platform"]["enabled"] is True
    validation = properties["globalValidation"]
    assert _both_ways(validation["requireAuthentication"]) == (False, True)
    assert _both_ways(validation["unauthenticatedClientAction"]) == ("AllowAnonymous", "Return401")
    main = MAIN_BICEP.read_text()
    assert "param dashboardSignIn bool = false" in main and "browserSignIn: dashboardSignIn" in main
    aad = properties["identityProviders"]["azureActiveDirectory"]
    assert aad["enabled"] is True
    assert aad["registration"] == {"clientId": "clientId", "openIdIssuer": "${loginEndpoint}${tenantId}/v2.0"}
    assert aad["validation"]["allowedAudiences"] == ["clientId", "audience"]
    assert "clientSecretSettingName" not in aad["registration"], "the API validates tokens; it signs no one in"
    assert properties["httpSettings"]["requireHttps"] is True


def test_the_schema_check_catches_mistakes_in_auth_settings() -> None:
    auth = _auth()

    def problems(change: Any) -> list[str]:
        body = copy.deepcopy(auth.body)
        change(body["properties"])
        mutated = Resource(auth.file, auth.symbol, auth.type, auth.api_version, False, body, auth.symbols)
        return [p.split(": ", 2)[2] for p in problems_of(mutated)]

    assert problems(lambda p: p["globalValidation"].update(unauthenticatedClientAction="return401")) == [
        "properties.globalValidation.unauthenticatedClientAction: wrong casing: 'return401' is 'Return401' in "
        "UnauthenticatedClientActionV2"
    ]
    assert problems(lambda p: p["identityProviders"]["azureActiveDirectory"].update(allowedAudiences=["x"])) == [
        "properties.identityProviders.azureActiveDirectory.allowedAudiences: unknown property of AzureActiveDirectory"
    ]
    assert problems(lambda p: p["platform"].update(enabled="true")) == [
        "properties.platform.enabled: expected bool, got str 'true'"
    ]


def test_the_deploy_chooses_the_mode_and_the_app_follows() -> None:
    main = _bicep(MAIN_BICEP)
    auth = next(d for d in main.decls if d.symbol == "functionAppAuth")
    declared = main.text[main.text.rindex("module functionAppAuth", 0, auth.start) : auth.start]
    assert "if (authMode == 'entraId')" in declared
    settings = _main_app_settings()
    assert settings["RAPIDS_HPO_AUTH"] == "authMode == 'entraId' ? 'entra' : 'key'"
    assert settings["RAPIDS_HPO_AUTH_TENANT_ID"] == "tenant().tenantId"
    assert settings["RAPIDS_HPO_AUTH_CLIENT_ID"] == "apiClientId"
    assert settings["RAPIDS_HPO_AUTH_AUDIENCE"] == "apiAudienceUri"
    assert settings["RAPIDS_HPO_AUTH_AUTHORITY"] == "environment().authentication.loginEndpoint"
    passed = main.body_object(auth, "params")
    assert passed["clientId"] == "apiClientId" and passed["audience"] == "apiAudienceUri"
    assert passed["tenantId"] == "tenant().tenantId"


def test_the_app_roles_file_declares_the_roles_the_code_checks() -> None:
    """``az ad app create --app-roles @infra/api-app-roles.json`` (README) makes the roles routes require:
    each assignable to people and to services (managed identities)."""
    import json
    from pathlib import Path

    from shared.auth import Role

    roles = json.loads((Path(__file__).resolve().parents[1] / "infra" / "api-app-roles.json").read_text())
    assert sorted(r["value"] for r in roles) == sorted(role.value for role in Role)
    for role in roles:
        assert role["allowedMemberTypes"] == ["User", "Application"] and role["isEnabled"] is True
