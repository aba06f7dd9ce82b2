"""Property-based attacks on bearer-token validation (``shared.auth.tokens``), with Hypothesis.

From one valid token of the local tenant (``tests/token_issuer.py``), generated changes try to get a
token accepted that means something else:

* any edit of the compact form (a character replaced, inserted or removed anywhere, a segment cut or
  added) is refused unless the three segments still decode to the same bytes (base64url decoding ignores
  some spellings: identical in meaning);
* any security claim changed to a value that differs from what the API accepts, given another type, or
  removed, and the token signed again with the tenant's genuine key, is refused;
* any header an attacker can choose (``alg`` none/HMAC/other RSA/EC, a known or unknown ``kid``, ``jku``,
  ``jwk``, ``x5u`` pointing elsewhere) with the attacker's key is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms
from jwt.utils import base64url_decode, base64url_encode

from shared.auth import AuthError, Role
from shared.auth.tokens import LEEWAY_S, TokenValidator
from tests.token_issuer import TokenIssuer, new_key

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ATTACKER_RSA = new_key()
ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def validator(issuer: TokenIssuer) -> TokenValidator:
    return TokenValidator(issuer.settings())


@pytest.fixture(scope="module")
def claims(issuer: TokenIssuer) -> dict[str, Any]:
    return issuer.user_claims(Role.SUBMIT, Role.READ)


@pytest.fixture(scope="module")
def token(issuer: TokenIssuer, claims: dict[str, Any]) -> str:
    return issuer.token(claims)


def accepted(validator: TokenValidator, token: str) -> bool:
    """Whether the API would take ``token`` as a caller (every check, the principal's included)."""
    try:
        validator.principal(token)
    except AuthError as exc:
        assert exc.status == 401, exc.message
        return False
    return True


def test_the_unchanged_token_is_accepted(validator, token, claims):
    """The control: without it every property below would pass on a validator that refuses everything."""
    assert validator.claims(token) == claims


# ----------------------------------------------------------------------------------- the compact form
edits = st.tuples(
    st.integers(0, 2),  # segment
    st.sampled_from(["replace", "insert", "delete", "cut", "append"]),
    st.integers(0, 2000),  # position (modulo the segment's length)
    st.sampled_from([*B64URL, "=", "+", "/", ".", " ", "!", "\x00"]),
)


def _decoded(token: str) -> list[bytes] | None:
    try:
        return [base64url_decode(part) for part in token.split(".")] if token.count(".") == 2 else None
    except Exception:
        return None


@PROFILE
@given(change=st.lists(edits, min_size=1, max_size=3))
def test_an_edited_token_is_refused_unless_it_decodes_the_same(validator, token, change):
    segments = token.split(".")
    for index, kind, position, char in change:
        part = segments[index]
        at = position % (len(part) + 1)
        if kind == "replace" and part:
            at = min(at, len(part) - 1)
            part = part[:at] + char + part[at + 1 :]
        elif kind == "insert":
            part = part[:at] + char + part[at:]
        elif kind == "delete" and part:
            part = part[: min(at, len(part) - 1)] + part[min(at, len(part) - 1) + 1 :]
        elif kind == "cut":
            part = part[:at]
        elif kind == "append":
            segments.append(char)
        segments[index] = part
    edited = ".".join(segments)
    assume(edited != token)
    if accepted(validator, edited):
        assert _decoded(edited) == _decoded(token), "a token that decodes differently was accepted"


# ----------------------------------------------------------------------------------- the claims
def _other_text(excluded: set[str]) -> st.SearchStrategy[str]:
    return st.text(min_size=0, max_size=60).filter(lambda text: text not in excluded)


def claim_changes(issuer: TokenIssuer, minted: int) -> st.SearchStrategy[tuple[str, Any]]:
    """(claim, new value) pairs that change the token's meaning for validation; ``...`` removes it. Times
    are counted from when the token was ``minted`` (a fixed point: Hypothesis replays draws), with an
    hour's margin for ``nbf`` so the module's own run time cannot make it valid."""
    now = minted
    issuer_variants = {issuer.issuer}
    audiences = {issuer.client_id, f"api://{issuer.client_id}"}
    wrong_type = st.one_of(
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(), st.integers(), max_size=1),
    )
    return st.one_of(
        st.tuples(st.just("iss"), st.one_of(_other_text(issuer_variants), wrong_type, st.just(...))),
        st.tuples(
            st.just("aud"),
            st.one_of(_other_text(audiences), st.lists(_other_text(audiences), max_size=3), st.just(...)),
        ),
        st.tuples(st.just("tid"), st.one_of(_other_text({issuer.tenant_id}), wrong_type, st.just(...))),
        st.tuples(
            st.just("exp"), st.one_of(st.integers(max_value=now - LEEWAY_S - 5), st.text(max_size=12), st.just(...))
        ),
        st.tuples(
            st.just("nbf"),
            st.one_of(
                st.integers(min_value=now + LEEWAY_S + 3600, max_value=2**40), st.text(max_size=12), st.just(...)
            ),
        ),
        st.tuples(st.just("oid"), st.one_of(st.text(max_size=40), wrong_type, st.just(...))),
    )


@PROFILE
@given(data=st.data())
def test_a_claim_changed_and_signed_with_the_genuine_key_is_refused(issuer, validator, claims, data):
    changes = data.draw(
        st.lists(claim_changes(issuer, claims["iat"]), min_size=1, max_size=3, unique_by=lambda c: c[0])
    )
    changed = dict(claims)
    for name, value in changes:
        if value is ...:
            changed.pop(name, None)
        else:
            changed[name] = value
    if "oid" in dict(changes) and isinstance(changed.get("oid"), str):
        assume(changed["oid"] != claims["oid"] and len(changed["oid"]) != 36)  # another GUID is another caller
    assert not accepted(validator, issuer.token(changed))


# ----------------------------------------------------------------------------------- the header
def _sign(claims: dict[str, Any], header: dict[str, Any], algorithm: str, public_pem: bytes) -> str:
    head = base64url_encode(json.dumps({**header, "alg": algorithm}).encode()).decode()
    body = base64url_encode(json.dumps(claims).encode()).decode()
    signing_input = f"{head}.{body}".encode()
    if algorithm.lower() == "none":
        signature = b""
    elif algorithm.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
        signature = hmac.new(public_pem, signing_input, digest).digest()
    else:  # signed by the attacker's own key, whatever kid the header names
        key = ATTACKER_EC if algorithm.startswith("ES") else ATTACKER_RSA
        signature = get_default_algorithms()[algorithm].sign(signing_input, key)
    return f"{head}.{body}.{base64url_encode(signature).decode()}"


@PROFILE
@given(
    algorithm=st.sampled_from(["none", "None", "NONE", "HS256", "HS384", "HS512", "RS256", "RS384", "PS256", "ES256"]),
    kid=st.one_of(st.just("genuine"), st.text(max_size=20), st.integers(), st.none()),
    extra=st.dictionaries(
        st.sampled_from(["jku", "x5u", "jwk", "x5c", "typ", "crit"]),
        st.sampled_from(["http://127.0.0.1:1/keys", "https://attacker.example/jwks", "JWT", ["exp"]]),
        max_size=3,
    ),
)
def test_an_attackers_header_and_key_are_refused(issuer, validator, claims, algorithm, kid, extra):
    genuine = list(issuer.keys)[-1]
    public_pem = (
        issuer.keys[genuine]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {**extra, **({"kid": genuine if kid == "genuine" else kid} if kid is not None else {})}
    assert not accepted(validator, _sign(claims, header, algorithm, public_pem))


# ----------------------------------------------------------------------------------- the platform's header
claim_names = st.sampled_from(
    [
        "oid",
        "tid",
        "roles",
        "scp",
        "idtyp",
        "name",
        "azp",
        "http://schemas.microsoft.com/identity/claims/objectidentifier",
        "http://schemas.microsoft.com/identity/claims/tenantid",
    ]
)


@PROFILE
@given(
    auth_typ=st.sampled_from(["aad", "AAD", "google", ""]),
    entries=st.lists(st.tuples(claim_names, st.text(max_size=40)), max_size=8),
    with_tenant=st.booleans(),
    with_oid=st.booleans(),
    noise=st.sampled_from(["", "!", "=", " ", "\x00"]),
)
def test_a_principal_header_names_a_caller_only_if_it_is_entras_and_this_tenants(
    issuer, auth_typ, entries, with_tenant, with_oid, noise
):
    """Whatever the header holds, reading it is a principal or a 401 (never another error); a principal
    comes only from ``auth_typ: aad`` naming this tenant and a GUID object id (noise is accepted only where
    base64 ignores it: a ``=`` after full padding)."""
    import base64

    from shared.auth.easyauth import principal_from_header

    claims = [{"typ": name, "val": value} for name, value in entries]
    if with_tenant:
        claims.append({"typ": "tid", "val": issuer.tenant_id})
    if with_oid:
        claims.append({"typ": "oid", "val": "00000000-0000-0000-0000-000000000001"})
    document = json.dumps({"auth_typ": auth_typ, "claims": claims, "role_typ": "roles"})
    value = base64.b64encode(document.encode()).decode() + noise
    try:
        principal = principal_from_header(value, issuer.settings(easy_auth=True))
    except AuthError as exc:
        assert exc.status == 401
        return
    assert auth_typ == "aad"
    assert base64.b64decode(value) == document.encode(), "noise was accepted that changes the document"
    assert principal.identity.tenant_id == issuer.tenant_id
    assert principal.identity.object_id is not None and len(principal.identity.object_id) == 36
