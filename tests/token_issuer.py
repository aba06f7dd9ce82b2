"""A local Entra ID stand-in: a tenant's RSA signing keys, its JWKS and OpenID configuration served on
127.0.0.1, and tokens minted the way Entra mints v2.0 access tokens (for a person or a managed identity).

It stands in for ``login.microsoftonline.com``, which the suite cannot reach, so that the app's real
validation code (``shared.auth.tokens``, PyJWT) runs end to end: discovery, JWKS fetch and cache, key
rotation, signature, claims. Like Entra it serves ``/{tenant}/v2.0/.well-known/openid-configuration`` with
issuer ``{authority}/{tenant}/v2.0`` and ``/{tenant}/discovery/v2.0/keys``; it knows one tenant, so
another tenant's discovery is a 404.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.auth import AuthSettings, Role


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TokenIssuer:
    """One tenant's issuer. ``keys`` is what the JWKS publishes (kid -> private key), newest last."""

    def __init__(self) -> None:
        self.tenant_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())
        self.keys: dict[str, rsa.RSAPrivateKey] = {"key-1": new_key()}
        self.fetches: dict[str, int] = {"openid": 0, "jwks": 0}
        self.authority = ""

    # ------------------------------------------------------------------ what Entra publishes
    @property
    def issuer(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0"

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.authority}/{self.tenant_id}/discovery/v2.0/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "issuer": self.issuer})
        return {"keys": keys}

    def rotate(self, *, keep_old: bool = True) -> str:
        """Publish a new signing key (and, unless ``keep_old``, stop publishing the old ones)."""
        kid = f"key-{uuid.uuid4().hex[:8]}"
        if not keep_old:
            self.keys.clear()
        self.keys[kid] = new_key()
        return kid

    # ------------------------------------------------------------------ tokens
    def settings(self, **overrides: Any) -> AuthSettings:
        values: dict[str, Any] = {
            "mode": "entra",
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "authority": self.authority,
        }
        return AuthSettings(**{**values, **overrides})

    def user_claims(self, *roles: Role, oid: str | None = None, name: str = "Ada Lovelace") -> dict[str, Any]:
        """A person's delegated token for the API (the Azure CLI as client: ``scp``, ``name``)."""
        now = int(time.time())
        return {
            "aud": self.client_id,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": self.tenant_id,
            "oid": oid or str(uuid.uuid4()),
            "sub": uuid.uuid4().hex,
            "azp": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "scp": "user_impersonation",
            "name": name,
            "preferred_username": "ada@contoso.example",
            "roles": [role.value for role in roles],
            "ver": "2.0",
        }

    def service_claims(self, *roles: Role, oid: str | None = None, app_id: str | None = None) -> dict[str, Any]:
        """A managed identity's app-only token (``idtyp: app``, no ``scp``; roles from app role assignments)."""
        claims = self.user_claims(*roles, oid=oid)
        for user_only in ("scp", "name", "preferred_username"):
            del claims[user_only]
        claims.update(azp=app_id or str(uuid.uuid4()), idtyp="app", sub=claims["oid"])
        return claims

    def token(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None = None,
        key: Any = None,
        algorithm: str = "RS256",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """``claims`` (any JSON) signed with the newest published key (or ``key``, under ``kid``)."""
        kid = kid or list(self.keys)[-1]
        signing_key = key if key is not None else self.keys[kid]
        payload = json.dumps(claims).encode()  # as given: PyJWT's encode would refuse a non-string iss
        return jwt.PyJWS().encode(payload, signing_key, algorithm=algorithm, headers={"kid": kid, **(headers or {})})

    # ------------------------------------------------------------------ serving
    @contextmanager
    def serving(self) -> Iterator[TokenIssuer]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                routes = {
                    f"/{issuer.tenant_id}/v2.0/.well-known/openid-configuration": (
                        "openid",
                        issuer.openid_configuration,
                    ),
                    f"/{issuer.tenant_id}/discovery/v2.0/keys": ("jwks", issuer.jwks),
                }
                if self.path not in routes:
                    self.send_error(404)
                    return
                name, document = routes[self.path]
                issuer.fetches[name] += 1
                body = json.dumps(document()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.authority = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


class IssuerCredential:
    """An ``azure.core.credentials.TokenCredential`` whose tokens come from the local issuer: what
    ``AzureCliCredential`` hands the CLI after ``az login``, for this test tenant."""

    def __init__(self, issuer: TokenIssuer, claims: dict[str, Any]) -> None:
        self.issuer, self.claims, self.scopes_asked = issuer, claims, []  # type: ignore[var-annotated]

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes_asked.append(scopes)
        return AccessToken(self.issuer.token(self.claims), int(self.claims["exp"]))
