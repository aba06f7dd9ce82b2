"""Bearer tokens validated by the app itself (Entra ID mode where App Service authentication is off).

A token is accepted only if all of these hold, each checked by PyJWT or here, in this order:

1. it is a compact JWS whose header names ``alg: RS256`` (nothing else: ``none``, ``HS256`` signed with
   the public key, other RSA/EC algorithms are refused before any key is looked at) and a ``kid``;
2. the ``kid`` is one of the tenant's signing keys, read from the JWKS its OpenID configuration names (a
   JWK set cached for an hour; an unknown ``kid`` refetches it at most once per 30 s cooldown, so a key
   rotated in is picked up and a flood of made-up ``kid`` values cannot hammer the endpoint);
3. the RS256 signature verifies with that key;
4. ``iss`` is the tenant's v2.0 issuer, ``aud`` the API's client id or Application ID URI, ``exp`` and
   ``nbf`` hold within :data:`LEEWAY_S` of clock skew, ``tid``/``oid`` are GUIDs, ``tid`` this tenant.

Messages name the check that failed, never a value from the token.
"""

from __future__ import annotations

import binascii
import json
import threading
import urllib.request
from typing import Any
from urllib.error import URLError
from urllib.parse import urlsplit

import jwt
from jwt.utils import base64url_decode

from shared.auth.principal import AuthError, Principal, roles_in
from shared.auth.settings import GUID, AuthSettings
from shared.records import SubmittedBy

ALGORITHMS = ("RS256",)
LEEWAY_S = 60
"""Clock skew allowed on ``exp``/``nbf`` (Entra's own libraries allow five minutes; one is enough here)."""
JWKS_LIFESPAN_S = 3600
FETCH_TIMEOUT_S = 10
REQUIRED_CLAIMS = ("exp", "nbf", "iss", "aud", "tid", "oid")


def _invalid(message: str) -> AuthError:
    return AuthError(401, message)


def _unavailable(what: str) -> AuthError:
    return AuthError(503, f"the tenant's {what} could not be fetched; try again", error="temporarily_unavailable")


class TokenValidator:
    """Validates Entra ID v2.0 access tokens for one API registration in one tenant (thread-safe)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None

    def principal(self, token: str) -> Principal:
        return principal_from_claims(self.claims(token))

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once every check passed; :class:`AuthError` naming the first that failed."""
        header = _header(token)
        if header.get("alg") not in ALGORITHMS:
            raise _invalid("the token is not signed with RS256, the only algorithm accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token names no signing key (kid)")
        try:
            key = self._client().get_signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            raise _unavailable("signing keys") from None
        except jwt.PyJWTError:
            raise _invalid("the token's signing key is not one of the tenant's keys") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(ALGORITHMS),
                audience=list(self.settings.audiences),
                issuer=self.settings.issuer,
                leeway=LEEWAY_S,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise _invalid(_reason(exc, self.settings)) from None
        for claim in ("exp", "nbf"):  # PyJWT reads "0" as 0: RFC 7519 says a NumericDate is a number
            if isinstance(claims[claim], bool) or not isinstance(claims[claim], int | float):
                raise _invalid(f"the token's {claim} is not a number (NumericDate)")
        if str(claims.get("tid", "")).lower() != self.settings.tenant_id:
            raise _invalid("the token is from another tenant")
        return claims

    def _client(self) -> jwt.PyJWKClient:
        """The JWKS client for the ``jwks_uri`` of the tenant's OpenID configuration (fetched once)."""
        with self._lock:
            if self._jwks is None:
                config = _fetch_json(self.settings.openid_configuration_url)
                if config.get("issuer") != self.settings.issuer:
                    raise AuthError(503, "the tenant's OpenID configuration names another issuer", error="server_error")
                jwks_uri = config.get("jwks_uri")
                authority = urlsplit(self.settings.authority)
                if not isinstance(jwks_uri, str) or urlsplit(jwks_uri)[:2] != authority[:2]:
                    raise AuthError(503, "the tenant's JWKS is not served by its authority", error="server_error")
                self._jwks = jwt.PyJWKClient(jwks_uri, lifespan=JWKS_LIFESPAN_S, timeout=FETCH_TIMEOUT_S)
            return self._jwks


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, to pick the key: only the first segment is read here (PyJWT's own parse of the
    whole token, header included, is what :func:`jwt.decode` then verifies, so nothing read here is
    trusted beyond choosing ``kid``)."""
    head, dot, _ = token.partition(".")
    try:
        header = json.loads(base64url_decode(head)) if dot else None
    except (ValueError, binascii.Error):  # UnicodeError and JSONDecodeError are ValueErrors
        header = None
    if not isinstance(header, dict):
        raise _invalid("the bearer token is not a well-formed JWT")
    return header


def _fetch_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            document = json.load(response)
    except (URLError, TimeoutError, ValueError, OSError):
        raise _unavailable("OpenID configuration") from None
    if not isinstance(document, dict):
        raise _unavailable("OpenID configuration")
    return document


def _reason(exc: jwt.PyJWTError, settings: AuthSettings) -> str:
    """What failed, in words that name the check and the expected value, never the token's own."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet (nbf)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"the token is for another audience (this API is {' or '.join(settings.audiences)})"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"the token is from another issuer or tenant (this API accepts {settings.issuer})"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the claim {exc.claim!r}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the token's signature does not verify with the tenant's key"
    return "the bearer token is not a valid JWT"


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """A validated token's caller: a service (app-only token: ``idtyp: app``, or no ``scp``) with its
    application id, or a user with their name."""
    object_id, tenant_id = claims.get("oid"), claims.get("tid")
    for claim, value in (("oid", object_id), ("tid", tenant_id)):
        if not isinstance(value, str) or not GUID.match(value):
            raise _invalid(f"the token's {claim} is not a GUID")
    app_only = claims.get("idtyp") == "app" or "scp" not in claims
    name = claims.get("name") or claims.get("preferred_username")
    app_id = claims.get("azp") or claims.get("appid")
    identity = SubmittedBy(
        kind="service" if app_only else "user",
        object_id=str(object_id).lower(),
        tenant_id=str(tenant_id).lower(),
        name=name[:256] if isinstance(name, str) and not app_only else None,
        app_id=app_id.lower() if isinstance(app_id, str) and app_only and GUID.match(app_id) else None,
    )
    return Principal(identity=identity, roles=roles_in(claims.get("roles")))
