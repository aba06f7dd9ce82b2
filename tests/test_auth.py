"""Callers with an identity (issue 31), through the real API and the real token validation.

Tokens come from ``tests/token_issuer.py``: a tenant's RSA keys, JWKS and OpenID configuration served on
127.0.0.1, so discovery, the JWKS cache, rotation, the signature and every claim check run as in Azure.
Each refusal is checked for its status, for a message naming what is wrong, and for not echoing the token.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
import typer
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.auth import AuthSettings, Role
from shared.context import Context
from shared.events.catalog import status_changed
from shared.handlers.intake import InvalidRequest, handle_request_message
from shared.records import SubmittedBy
from tests.control_plane import tiny_spec
from tests.served import serving
from tests.token_issuer import IssuerCredential, TokenIssuer, new_key

SUBMIT, READ, ADMIN = Role.SUBMIT, Role.READ, Role.ADMIN


def api(ctx: Context, settings: AuthSettings) -> TestClient:
    return TestClient(create_api(context=ctx, auth=settings), base_url="http://localhost")


@pytest.fixture
def client(ctx, issuer) -> TestClient:
    return api(ctx, issuer.settings())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(client: TestClient, headers: dict[str, str], **more: str) -> Any:
    return client.post(
        "/api/experiments",
        content=json.dumps(tiny_spec()),
        headers={"content-type": "application/json", **headers, **more},
    )


def refused(response: Any, status: int, *words: str, token: str = "", issuer: TokenIssuer | None = None) -> str:
    """The response is ``status`` with a message naming ``words``, and repeats nothing of ``token`` (but
    the values the API is configured with: its tenant, client id and issuer)."""
    own = {issuer.tenant_id, issuer.client_id, issuer.issuer} if issuer else set()
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    if token:
        for part in [*token.split("."), *jwt.decode(token, options={"verify_signature": False}).values()]:
            if isinstance(part, str) and len(part) > 6 and part not in own:
                assert part not in response.text, f"the refusal repeats the token: {part!r}"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer error=")
    return str(detail)


# ----------------------------------------------------------------------------------- accepted
def test_a_person_with_submit_gets_202_and_owns_the_experiment(client, ctx, issuer):
    claims = issuer.user_claims(SUBMIT, READ)
    response = submit(client, bearer(issuer.token(claims)))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["submitted_by"] == {
        "kind": "user",
        "object_id": claims["oid"],
        "tenant_id": issuer.tenant_id,
        "name": "Ada Lovelace",
        "app_id": None,
    }
    assert ctx.store.get_experiment(body["id"]).submitted_by == SubmittedBy(**body["submitted_by"])
    again = client.get(f"/api/experiments/{body['id']}", headers=bearer(issuer.token(claims)))
    assert again.status_code == 200 and again.json()["submitted_by"]["object_id"] == claims["oid"]


def test_a_managed_identity_with_submit_gets_202_as_a_service(client, issuer):
    app_id = str(uuid.uuid4())
    claims = issuer.service_claims(SUBMIT, app_id=app_id)
    response = submit(client, bearer(issuer.token(claims)))
    assert response.status_code == 202, response.text
    assert response.json()["submitted_by"] == {
        "kind": "service",
        "object_id": claims["oid"],
        "tenant_id": issuer.tenant_id,
        "name": None,
        "app_id": app_id,
    }


def test_the_application_id_uri_is_an_accepted_audience(client, issuer):
    claims = {**issuer.user_claims(SUBMIT), "aud": f"api://{issuer.client_id}"}
    assert submit(client, bearer(issuer.token(claims))).status_code == 202


def test_clock_skew_within_the_leeway_is_accepted(client, issuer):
    now = int(time.time())
    claims = {**issuer.user_claims(SUBMIT), "nbf": now + 30, "exp": now - 30}
    assert submit(client, bearer(issuer.token(claims))).status_code == 202


# ----------------------------------------------------------------------------------- refused (401)
def test_no_credential_is_401_asking_for_a_bearer_token(client):
    refused(submit(client, {}), 401, "Authorization: Bearer")
    refused(submit(client, {"Authorization": "Basic dXNlcjpwdw=="}), 401, "Authorization: Bearer")
    refused(client.get("/api/health"), 401, "Bearer")


def test_an_expired_token_is_401(client, issuer):
    now = int(time.time())
    token = issuer.token({**issuer.user_claims(SUBMIT), "exp": now - 120, "iat": now - 3700, "nbf": now - 3700})
    refused(submit(client, bearer(token)), 401, "expired", token=token, issuer=issuer)


def test_a_token_not_valid_yet_is_401(client, issuer):
    token = issuer.token({**issuer.user_claims(SUBMIT), "nbf": int(time.time()) + 600})
    refused(submit(client, bearer(token)), 401, "not valid yet", token=token, issuer=issuer)


def test_times_that_are_not_numbers_are_401(client, issuer):
    """PyJWT would read ``"0"`` as 0 (found by the claim property): a NumericDate must be a number."""
    for claim, value in (("nbf", "0"), ("exp", "99999999999"), ("nbf", True)):
        token = issuer.token({**issuer.user_claims(SUBMIT), claim: value})
        refused(submit(client, bearer(token)), 401, f"{claim} is not a number", token=token, issuer=issuer)


def test_a_token_for_another_audience_is_401(client, issuer):
    for audience in ("https://management.azure.com", str(uuid.uuid4()), f"api://{uuid.uuid4()}"):
        token = issuer.token({**issuer.user_claims(SUBMIT), "aud": audience})
        refused(submit(client, bearer(token)), 401, "another audience", issuer.client_id, token=token, issuer=issuer)


def test_a_token_from_another_tenant_is_401(client, issuer):
    other = str(uuid.uuid4())
    claims = {**issuer.user_claims(SUBMIT), "tid": other, "iss": f"{issuer.authority}/{other}/v2.0"}
    token = issuer.token(claims)
    refused(submit(client, bearer(token)), 401, "another issuer or tenant", token=token, issuer=issuer)
    # this tenant's issuer, another tenant's id
    token = issuer.token({**issuer.user_claims(SUBMIT), "tid": other})
    refused(submit(client, bearer(token)), 401, "another tenant", token=token, issuer=issuer)
    # the public cloud's multi-tenant and v1.0 issuers
    for iss in (f"https://sts.windows.net/{issuer.tenant_id}/", "https://login.microsoftonline.com/common/v2.0"):
        token = issuer.token({**issuer.user_claims(SUBMIT), "iss": iss})
        refused(submit(client, bearer(token)), 401, "another issuer", token=token, issuer=issuer)


def test_a_token_signed_by_a_key_the_tenant_does_not_publish_is_401(client, issuer):
    claims = issuer.user_claims(SUBMIT)
    unknown_kid = issuer.token(claims, kid="not-a-published-key", key=new_key())
    refused(submit(client, bearer(unknown_kid)), 401, "signing key is not one of the tenant's keys")
    same_kid = issuer.token(claims, kid=list(issuer.keys)[-1], key=new_key())  # forged under a real kid
    refused(submit(client, bearer(same_kid)), 401, "signature does not verify", token=same_kid, issuer=issuer)


def test_an_unsigned_token_is_401(client, issuer):
    token = jwt.encode(issuer.user_claims(SUBMIT, ADMIN), key=None, algorithm="none", headers={"kid": "key-1"})
    refused(submit(client, bearer(token)), 401, "RS256")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=").decode()
    payload = token.split(".")[1]
    refused(submit(client, bearer(f"{header}.{payload}.")), 401, "RS256")


def test_hs256_signed_with_the_public_key_is_401(client, issuer):
    """Algorithm confusion: the published RSA key used as an HMAC secret."""
    from cryptography.hazmat.primitives import serialization

    kid = list(issuer.keys)[-1]
    public_pem = (
        issuer.keys[kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(issuer.user_claims(SUBMIT, ADMIN)).encode())
    signature = b64(hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    refused(submit(client, bearer(f"{head}.{body}.{signature}")), 401, "RS256")


def test_other_rsa_and_ec_algorithms_are_401(client, issuer):
    claims = issuer.user_claims(SUBMIT)
    kid = list(issuer.keys)[-1]
    for algorithm in ("RS512", "PS256"):
        refused(submit(client, bearer(issuer.token(claims, algorithm=algorithm))), 401, "RS256")
    from cryptography.hazmat.primitives.asymmetric import ec

    token = issuer.token(claims, kid=kid, key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    refused(submit(client, bearer(token)), 401, "RS256")


def test_a_token_without_an_object_id_or_with_garbage_is_401(client, issuer):
    claims = issuer.user_claims(SUBMIT)
    del claims["oid"]
    token = issuer.token(claims)
    refused(submit(client, bearer(token)), 401, "lacks the claim 'oid'", token=token, issuer=issuer)
    token = issuer.token({**issuer.user_claims(SUBMIT), "oid": "../../admin"})
    refused(submit(client, bearer(token)), 401, "oid is not a GUID")
    for garbage in ("x", "a.b.c", "....", "Bearer"):
        refused(submit(client, bearer(garbage)), 401, "not")
    refused(submit(client, {"Authorization": "Bearer é.é.é".encode("latin-1")}), 401, "not a well-formed JWT")


def test_a_forged_principal_header_without_the_platform_is_401(ctx, issuer):
    """Easy Auth is off: X-MS-CLIENT-PRINCIPAL can only have come from the client."""
    forged = principal_header(issuer, issuer.user_claims(SUBMIT, ADMIN))
    for settings in (issuer.settings(), AuthSettings()):  # Entra ID bearer mode, and key mode
        client = api(ctx, settings)
        detail = refused(submit(client, {"X-MS-CLIENT-PRINCIPAL": forged}), 401, "X-MS-CLIENT-PRINCIPAL refused")
        assert "not set by the platform" in detail
        valid = bearer(issuer.token(issuer.user_claims(SUBMIT)))
        refused(submit(client, {**valid, "x-ms-client-principal": forged}), 401, "X-MS-CLIENT-PRINCIPAL refused")
    assert ctx.store.list_experiments()[0] == []


# ----------------------------------------------------------------------------------- roles (403)
@pytest.mark.parametrize(
    ("method", "path", "held", "missing"),
    [
        ("post", "/api/experiments", (READ,), SUBMIT),
        ("get", "/api/experiments", (SUBMIT,), READ),
        ("get", "/api/experiments/exp-1", (SUBMIT,), READ),
        ("get", "/api/experiments/exp-1/trials", (SUBMIT,), READ),
        ("get", "/api/experiments/exp-1/model", (SUBMIT,), READ),
        ("get", "/api/experiments/exp-1/trials/0/model", (SUBMIT,), READ),
        ("get", "/api/experiments/exp-1/pareto", (SUBMIT,), READ),
        ("get", "/api/experiments/exp-1/study", (SUBMIT,), READ),
        ("get", "/api/ui", (SUBMIT,), READ),
        ("delete", "/api/experiments/exp-1", (READ,), SUBMIT),
        ("get", "/api/health", (), READ),
        ("get", "/api/docs", (SUBMIT,), READ),
        ("get", "/api/openapi.json", (SUBMIT,), READ),
    ],
)
def test_each_route_names_the_role_it_needs(client, issuer, method, path, held, missing):
    token = issuer.token(issuer.user_claims(*held))
    headers = {**bearer(token), "content-type": "application/json"}
    kwargs: dict[str, Any] = {"content": json.dumps(tiny_spec())} if method == "post" else {}
    response = getattr(client, method)(path, headers=headers, **kwargs)
    refused(response, 403, missing.value, "does not hold", token=token, issuer=issuer)


def test_the_api_documentation_needs_a_reader(client, issuer):
    """The OpenAPI document and Swagger UI name every route and field: readers only, like the data."""
    for path in ("/api/docs", "/api/openapi.json"):
        refused(client.get(path), 401, "Bearer")
    reader = bearer(issuer.token(issuer.user_claims(READ)))
    assert client.get("/api/openapi.json", headers=reader).json()["paths"]["/api/experiments"]
    assert "SwaggerUIBundle" in client.get("/api/docs", headers=reader).text


def test_unknown_roles_grant_nothing(client, issuer):
    claims = {**issuer.user_claims(), "roles": ["experiments.submit", "Experiments.Submit ", "Owner", 7]}
    refused(submit(client, bearer(issuer.token(claims))), 403, "Experiments.Submit")


# ----------------------------------------------------------------------------------- ownership
def test_readers_see_their_own_experiments_unless_the_deployment_shows_all(ctx, issuer):
    ada, bob = issuer.user_claims(SUBMIT, READ), issuer.user_claims(SUBMIT, READ, name="Bob")
    own = api(ctx, issuer.settings())
    ada_id = submit(own, bearer(issuer.token(ada))).json()["id"]
    bob_id = submit(own, bearer(issuer.token(bob))).json()["id"]
    as_bob = bearer(issuer.token(bob))
    listed = own.get("/api/experiments", headers=as_bob).json()["items"]
    assert [item["id"] for item in listed] == [bob_id]
    refused(own.get(f"/api/experiments/{ada_id}", headers=as_bob), 404, "not found")
    refused(own.get(f"/api/experiments/{ada_id}/trials", headers=as_bob), 404, "not found")
    refused(own.get(f"/api/experiments/{ada_id}/study", headers=as_bob), 404, "not found")
    assert ada_id not in own.get("/api/ui", headers=as_bob).text
    admin = bearer(issuer.token(issuer.user_claims(ADMIN)))
    assert {item["id"] for item in own.get("/api/experiments", headers=admin).json()["items"]} == {ada_id, bob_id}

    everyone = api(ctx, issuer.settings(readers_see="all"))
    assert len(everyone.get("/api/experiments", headers=as_bob).json()["items"]) == 2
    assert everyone.get(f"/api/experiments/{ada_id}", headers=as_bob).status_code == 200


def test_a_readers_pages_hold_only_their_own_and_reach_all_of_them(ctx, issuer):
    """Own-only listing filters store pages: pages may come back short (or empty, with a token), but
    following the tokens yields each of the caller's experiments once and nobody else's."""
    from shared.auth import deps

    client = api(ctx, issuer.settings())
    ada, bob = issuer.user_claims(SUBMIT, READ), issuer.user_claims(SUBMIT, READ)
    bobs = [submit(client, bearer(issuer.token(bob))).json()["id"]]
    for _ in range(deps.MAX_SCANNED_PAGES * 2 + 3):  # more of Ada's than one request scans at limit 1
        submit(client, bearer(issuer.token(ada)))
    bobs.append(submit(client, bearer(issuer.token(bob))).json()["id"])
    as_bob, seen, token, requests = bearer(issuer.token(bob)), [], None, 0
    while True:
        params = {"limit": 1, **({"page_token": token} if token else {})}
        page = client.get("/api/experiments", params=params, headers=as_bob).json()
        requests += 1
        assert len(page["items"]) <= 1
        seen += [item["id"] for item in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert sorted(seen) == sorted(bobs) and requests >= 3  # an empty page with a token came in between


def test_cancel_and_download_need_ownership_or_admin(ctx, issuer):
    client = api(ctx, issuer.settings(readers_see="all"))
    ada, bob = issuer.user_claims(SUBMIT, READ), issuer.user_claims(SUBMIT, READ, name="Bob")
    experiment = submit(client, bearer(issuer.token(ada))).json()["id"]
    ctx.store.put_artifact(experiment, "model/model.json", b"{}")
    as_bob = bearer(issuer.token(bob))
    refused(client.delete(f"/api/experiments/{experiment}", headers=as_bob), 403, "ownership", ADMIN.value)
    refused(client.get(f"/api/experiments/{experiment}/model", headers=as_bob), 403, "ownership", ADMIN.value)
    member = f"/api/experiments/{experiment}/trials/0/model"  # a front member's model by number: the same rule
    refused(client.get(member, headers=as_bob), 403, "ownership", ADMIN.value)
    assert ctx.store.get_experiment(experiment).status == "SUBMITTED"
    # the same person under a new token (new sub, same oid and tenant) is the owner
    again = bearer(issuer.token(issuer.user_claims(SUBMIT, READ, oid=ada["oid"], name="renamed")))
    assert client.get(f"/api/experiments/{experiment}/model", headers=again).status_code == 200
    admin = bearer(issuer.token(issuer.user_claims(ADMIN)))
    assert client.delete(f"/api/experiments/{experiment}", headers=admin).status_code == 202


def test_the_dashboard_shows_the_submitter_and_offers_actions_only_to_owners_and_admins(ctx, issuer):
    client = api(ctx, issuer.settings(readers_see="all"))
    ada = issuer.user_claims(SUBMIT, READ)
    experiment = submit(client, bearer(issuer.token(ada))).json()["id"]
    ctx.store.put_artifact(experiment, "model/model.json", b"{}")
    page = f"/api/ui/experiments/{experiment}"
    viewers = {
        "owner": issuer.user_claims(READ, oid=ada["oid"]),
        "admin": issuer.user_claims(ADMIN),
        "reader": issuer.user_claims(READ),
    }
    for who, claims in viewers.items():
        html = client.get(page, headers=bearer(issuer.token(claims))).text
        assert "submitted by Ada Lovelace" in html
        acts = who != "reader"
        assert ('id="cancel"' in html) is acts and ('id="download"' in html) is acts, who


def test_an_object_id_from_another_tenant_owns_nothing():
    mine = SubmittedBy(kind="user", object_id="o", tenant_id="t1")
    assert mine.same_principal(SubmittedBy(kind="user", object_id="o", tenant_id="t1"))
    assert not mine.same_principal(SubmittedBy(kind="user", object_id="o", tenant_id="t2"))
    assert not SubmittedBy(kind="function_key").same_principal(SubmittedBy(kind="function_key"))
    assert not SubmittedBy(kind="queue", name="q").same_principal(SubmittedBy(kind="queue", name="q"))


def test_idempotency_keys_are_per_caller(client, issuer):
    ada, bob = issuer.user_claims(SUBMIT, READ), issuer.user_claims(SUBMIT, READ)
    first = submit(client, bearer(issuer.token(ada)), **{"Idempotency-Key": "nightly"}).json()
    replay = submit(client, bearer(issuer.token(ada)), **{"Idempotency-Key": "nightly"})
    assert replay.json()["id"] == first["id"] and replay.headers["idempotent-replayed"] == "true"
    other = submit(client, bearer(issuer.token(bob)), **{"Idempotency-Key": "nightly"}).json()
    assert other["id"] != first["id"] and other["submitted_by"]["object_id"] == bob["oid"]


def test_key_mode_keeps_the_function_key_holder_as_admin(ctx):
    client = api(ctx, AuthSettings())
    response = submit(client, {})
    assert response.status_code == 202
    assert response.json()["submitted_by"] == {
        "kind": "function_key",
        "object_id": None,
        "tenant_id": None,
        "name": "function key holder",
        "app_id": None,
    }
    assert client.delete(f"/api/experiments/{response.json()['id']}").status_code == 202


# ----------------------------------------------------------------------------------- Easy Auth
def principal_header(issuer: TokenIssuer, claims: dict[str, Any], *, mapped: bool = True) -> str:
    """What App Service puts in X-MS-CLIENT-PRINCIPAL: claim names mapped to their URIs, one entry per role."""
    uris = {
        "oid": "http://schemas.microsoft.com/identity/claims/objectidentifier",
        "tid": "http://schemas.microsoft.com/identity/claims/tenantid",
        "scp": "http://schemas.microsoft.com/identity/claims/scope",
    }
    entries = []
    for name, value in claims.items():
        if name == "roles":
            entries += [{"typ": "roles", "val": role} for role in value]
        else:
            entries.append({"typ": uris.get(name, name) if mapped else name, "val": str(value)})
    document = {"auth_typ": "aad", "claims": entries, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(document).encode()).decode()


def test_easy_auth_principal_is_read_when_the_platform_is_in_front(ctx, issuer):
    client = api(ctx, issuer.settings(easy_auth=True))
    for mapped in (True, False):
        claims = issuer.service_claims(SUBMIT)
        response = submit(client, {"X-MS-CLIENT-PRINCIPAL": principal_header(issuer, claims, mapped=mapped)})
        assert response.status_code == 202, response.text
        assert response.json()["submitted_by"]["object_id"] == claims["oid"]
        assert response.json()["submitted_by"]["kind"] == "service"
    reader = principal_header(issuer, issuer.user_claims(READ))
    refused(submit(client, {"X-MS-CLIENT-PRINCIPAL": reader}), 403, SUBMIT.value)
    refused(submit(client, {}), 401, "without a principal")
    # a bearer token is not read behind Easy Auth: the platform's principal is the caller
    refused(submit(client, bearer(issuer.token(issuer.user_claims(SUBMIT)))), 401, "without a principal")
    other = {**issuer.user_claims(SUBMIT), "tid": str(uuid.uuid4())}
    refused(submit(client, {"X-MS-CLIENT-PRINCIPAL": principal_header(issuer, other)}), 401, "another tenant")
    for garbage in ("not base64!", base64.b64encode(b"[1]").decode(), base64.b64encode(b'{"auth_typ":"x"}').decode()):
        refused(submit(client, {"X-MS-CLIENT-PRINCIPAL": garbage}), 401, "X-MS-CLIENT-PRINCIPAL")
    google = base64.b64encode(json.dumps({"auth_typ": "google", "claims": []}).encode()).decode()
    refused(submit(client, {"X-MS-CLIENT-PRINCIPAL": google}), 401, "no Entra ID principal")


def test_easy_auth_is_known_from_the_platform_setting(monkeypatch, issuer):
    monkeypatch.setenv("RAPIDS_HPO_AUTH", "entra")
    monkeypatch.setenv("RAPIDS_HPO_AUTH_TENANT_ID", issuer.tenant_id)
    monkeypatch.setenv("RAPIDS_HPO_AUTH_CLIENT_ID", issuer.client_id.upper())
    assert AuthSettings.from_env().easy_auth is False
    assert AuthSettings.from_env().client_id == issuer.client_id
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    assert AuthSettings.from_env().easy_auth is True


def test_entra_settings_refuse_what_cannot_be_validated():
    with pytest.raises(ValueError, match="tenant_id"):
        AuthSettings(mode="entra", tenant_id="common", client_id=str(uuid.uuid4()))
    with pytest.raises(ValueError, match="client_id"):
        AuthSettings(mode="entra", tenant_id=str(uuid.uuid4()))
    for authority in ("http://login.microsoftonline.com", "file:///etc", "http://10.0.0.1", "ftp://x"):
        with pytest.raises(ValueError, match="authority"):
            AuthSettings(authority=authority)


# ----------------------------------------------------------------------------------- the tenant's keys
def test_the_jwks_is_cached_and_a_rotated_key_is_fetched(ctx):
    with TokenIssuer().serving() as issuer:
        client = api(ctx, issuer.settings())
        for _ in range(5):
            assert submit(client, bearer(issuer.token(issuer.user_claims(SUBMIT)))).status_code == 202
        assert issuer.fetches == {"openid": 1, "jwks": 1}
        issuer.rotate(keep_old=False)
        from shared.auth import tokens

        # an unknown kid refetches once the cooldown since the last fetch has passed (moved back here)
        tokens_client = client.app.state.authenticator.tokens._client()
        tokens_client._last_successful_fetch -= tokens_client.cooldown_duration
        assert submit(client, bearer(issuer.token(issuer.user_claims(SUBMIT)))).status_code == 202
        assert issuer.fetches["jwks"] == 2
        # made-up kids within the cooldown do not reach the endpoint
        attacker = new_key()
        for n in range(20):
            forged = issuer.token(issuer.user_claims(SUBMIT), kid=f"made-up-{n}", key=attacker)
            refused(submit(client, bearer(forged)), 401, "not one of the tenant's keys")
        assert issuer.fetches["jwks"] == 2
        assert tokens.JWKS_LIFESPAN_S >= 300


def test_an_unreachable_issuer_is_503_not_a_pass(ctx):
    with TokenIssuer().serving() as issuer:
        settings = issuer.settings()
        token = issuer.token(issuer.user_claims(SUBMIT))
    client = api(ctx, settings)  # the issuer has stopped
    response = submit(client, bearer(token))
    assert response.status_code == 503 and "try again" in response.json()["detail"]
    assert ctx.store.list_experiments()[0] == []


# ----------------------------------------------------------------------------------- the queue, events
def test_the_shared_queue_refuses_a_named_submitter_and_records_itself(ctx):
    named = {"kind": "user", "object_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()), "name": "CEO"}
    envelope = json.dumps({"spec": tiny_spec(), "id": "exp-named", "submitted_by": named})
    with pytest.raises(InvalidRequest, match="trusted sender"):
        handle_request_message(ctx, envelope)
    assert ctx.store.get_experiment("exp-named").status == "FAILED"  # recorded with the reason
    record = handle_request_message(ctx, json.dumps({"spec": tiny_spec()}), message_id="m1")
    assert record.submitted_by == SubmittedBy(kind="queue", name="experiment-requests")


def test_a_trusted_senders_queue_records_the_named_principal(ctx):
    named = {"kind": "service", "object_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()), "app_id": None}
    envelope = json.dumps({"spec": tiny_spec(), "submitted_by": named})
    record = handle_request_message(ctx, envelope, message_id="m2", trusted_sender=True)
    assert record.submitted_by == SubmittedBy(**named)
    for bad in ({"kind": "function_key"}, {"kind": "user", "object_id": "x"}, {"kind": "user", "evil": 1}, "me"):
        with pytest.raises(InvalidRequest, match="submitted_by"):
            handle_request_message(ctx, json.dumps({"spec": tiny_spec(), "submitted_by": bad}), trusted_sender=True)


def test_cloudevents_carry_the_submitter(client, ctx, issuer):
    claims = issuer.service_claims(SUBMIT)
    experiment = submit(client, bearer(issuer.token(claims))).json()["id"]
    event = status_changed(ctx.store.get_experiment(experiment), "/rapids-hpo-control")
    assert event.data["submitted_by"]["object_id"] == claims["oid"]
    assert event.data["submitted_by"]["kind"] == "service"


# ----------------------------------------------------------------------------------- the CLI
def test_the_cli_signs_in_for_the_apis_scope(ctx, issuer, monkeypatch, tmp_path):
    """``rapids-hpo submit/status/cancel`` with RAPIDS_HPO_API_SCOPE: the signed-in person's token (here from
    the local issuer, as AzureCliCredential would hand it) on every request, over real HTTP."""
    from typer.testing import CliRunner

    from shared.cli import remote
    from shared.cli._app import app as cli

    ada = issuer.user_claims(SUBMIT, READ)
    credential = IssuerCredential(issuer, ada)
    monkeypatch.setattr(remote, "_credential", lambda: credential)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec()))
    runner = CliRunner()
    with serving(create_api(context=ctx, auth=issuer.settings())) as url:
        monkeypatch.setenv("RAPIDS_HPO_API_URL", url)
        unsigned = runner.invoke(cli, ["submit", str(spec)])
        assert unsigned.exit_code == 1 and "401" in unsigned.output and "Bearer" in unsigned.output
        scope = f"api://{issuer.client_id}/.default"
        monkeypatch.setenv("RAPIDS_HPO_API_SCOPE", scope)
        submitted = runner.invoke(cli, ["submit", str(spec)])
        assert submitted.exit_code == 0, submitted.output
        experiment = submitted.output.strip()
        shown = runner.invoke(cli, ["status", experiment])
        assert shown.exit_code == 0 and "submitted by: Ada Lovelace" in shown.output
        assert runner.invoke(cli, ["cancel", experiment]).exit_code == 0
    assert credential.scopes_asked and all(asked == (scope,) for asked in credential.scopes_asked)
    assert ctx.store.get_experiment(experiment).submitted_by.object_id == ada["oid"]


def test_the_cli_credential_is_az_login_or_a_device_code(monkeypatch):
    from azure.identity import AzureCliCredential, DeviceCodeCredential

    from shared.cli import remote

    assert isinstance(remote._credential(), AzureCliCredential)
    monkeypatch.setenv("RAPIDS_HPO_CLI_CREDENTIAL", "device_code")
    assert isinstance(remote._credential(), DeviceCodeCredential)
    monkeypatch.setenv("RAPIDS_HPO_CLI_CREDENTIAL", "password")
    with pytest.raises(typer.Exit):
        remote._credential()


# ----------------------------------------------------------------------------------- the Function App
HOST_SCRIPT = """
import asyncio, json, os, sys
from types import SimpleNamespace
import azure.functions as func
import function_app

(http,) = [f for f in function_app.app.get_functions() if f.get_function_name() == "http_app_func"]
(trigger,) = [b for b in json.loads(http.get_function_json())["bindings"] if b["type"] == "httpTrigger"]
context = SimpleNamespace(invocation_id="i", function_name="http_app_func", function_directory=".",
    trace_context=None, retry_context=None, thread_local_storage=SimpleNamespace(invocation_id="i"))
answers = []
for headers in ({}, {"authorization": "Bearer " + os.environ["TOKEN"]}):
    request = func.HttpRequest(method="GET", url="http://localhost/api/experiments", body=b"", headers=headers)
    answers.append(asyncio.run(http.get_user_function()(request, context)).status_code)
print(json.dumps({"authLevel": trigger["authLevel"], "answers": answers}))
"""


def test_the_function_app_passes_entra_callers_to_the_app_which_checks_them(issuer, tmp_path):
    """In ``entra`` mode the host asks for no key (ANONYMOUS) and the app refuses a request without a
    token itself; in ``key`` mode the host's FUNCTION level stays (tests/test_function_app.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "RAPIDS_HPO_HOME": str(tmp_path),
        "RAPIDS_HPO_AUTH": "entra",
        "RAPIDS_HPO_AUTH_TENANT_ID": issuer.tenant_id,
        "RAPIDS_HPO_AUTH_CLIENT_ID": issuer.client_id,
        "RAPIDS_HPO_AUTH_AUTHORITY": issuer.authority,
        "TOKEN": issuer.token(issuer.user_claims(READ)),
    }
    result = subprocess.run(
        [sys.executable, "-c", HOST_SCRIPT], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"authLevel": "ANONYMOUS", "answers": [401, 200]}


# ----------------------------------------------------------------------------------- the dashboard in a browser
HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_browser_without_easy_auth_gets_a_401_page_saying_how_to_get_in(client):
    for path in ("/api/ui", "/api/ui/experiments/exp-1", "/api/docs"):
        page = client.get(path, headers=HTML)
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert page.headers["www-authenticate"].startswith("Bearer error=")
        assert "send an Entra ID access token" in page.text and "rapids-hpo list" in page.text
        assert page.headers["content-security-policy"] == "default-src 'none'"
    for path, headers in (("/api/experiments", HTML), ("/api/ui", {"accept": "application/json"})):
        refused(client.get(path, headers=headers), 401, "Bearer")  # a client, not a page: JSON as ever


def test_a_browser_behind_easy_auth_is_sent_to_sign_in_and_back_to_the_same_page(ctx, issuer):
    client = api(ctx, issuer.settings(easy_auth=True))
    client.follow_redirects = False
    page = client.get("/api/ui/experiments/exp-1", params={"next": "https://evil.example/"}, headers=HTML)
    assert page.status_code == 302
    assert page.headers["location"] == (
        "/.auth/login/aad?post_login_redirect_uri=%2Fapi%2Fui%2Fexperiments%2Fexp-1%3Fnext%3Dhttps%253A%252F%252F"
        "evil.example%252F"
    )  # back to a path of this app only: whatever the query says stays inside it
    assert client.get("/api/docs", headers=HTML).headers["location"].endswith("=%2Fapi%2Fdocs")
    refused(client.get("/api/experiments", headers=HTML), 401, "without a principal")  # the API never redirects
    signed_in = {**HTML, "X-MS-CLIENT-PRINCIPAL": principal_header(issuer, issuer.user_claims(READ))}
    assert client.get("/api/ui", headers=signed_in).status_code == 200
    forbidden = {**HTML, "X-MS-CLIENT-PRINCIPAL": principal_header(issuer, issuer.user_claims(SUBMIT))}
    refused(client.get("/api/ui", headers=forbidden), 403, READ.value)  # signed in, no role: no loop to sign-in
