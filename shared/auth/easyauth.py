"""The caller App Service authentication (Easy Auth) validated, from the ``X-MS-CLIENT-PRINCIPAL`` header.

With Easy Auth in front of the app the platform validates the token (issuer, audience, signature, expiry
against the registration named in ``authsettingsV2``), strips any copy of this header a client sent, and
sets its own: base64 of ``{"auth_typ", "claims": [{"typ", "val"}], "name_typ", "role_typ"}``. The header is
therefore read only when :attr:`AuthSettings.easy_auth` says the platform is there, and refused otherwise
(:mod:`shared.auth.deps`). Claim names may arrive mapped to their long URIs (``oid`` as
``http://schemas.microsoft.com/identity/claims/objectidentifier``); both spellings are read.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.auth.principal import AuthError, Principal
from shared.auth.settings import AuthSettings
from shared.auth.tokens import principal_from_claims

HEADER = "x-ms-client-principal"
MAX_HEADER_CHARS = 32_768
CLAIM_URIS = {
    "http://schemas.microsoft.com/identity/claims/objectidentifier": "oid",
    "http://schemas.microsoft.com/identity/claims/tenantid": "tid",
    "http://schemas.microsoft.com/identity/claims/scope": "scp",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/role": "roles",
}


class _Claim(BaseModel):
    typ: str
    val: str


class _ClientPrincipal(BaseModel):
    auth_typ: str
    claims: list[_Claim]
    name_typ: str | None = None
    role_typ: str | None = None


def principal_from_header(value: str, settings: AuthSettings) -> Principal:
    """The principal the platform describes; a 401 if the header is not the platform's shape, names no
    Entra ID (``aad``) principal, or names another tenant."""
    try:
        if len(value) > MAX_HEADER_CHARS:
            raise ValueError("too long")
        document = _ClientPrincipal.model_validate(json.loads(base64.b64decode(value, validate=True)))
    except (ValueError, binascii.Error, ValidationError, UnicodeDecodeError):
        raise AuthError(401, "X-MS-CLIENT-PRINCIPAL is not App Service authentication's principal") from None
    if document.auth_typ != "aad":
        raise AuthError(401, "X-MS-CLIENT-PRINCIPAL names no Entra ID principal")
    claims: dict[str, Any] = {}
    roles: list[str] = []
    for claim in document.claims:
        name = CLAIM_URIS.get(claim.typ, claim.typ)
        if name == "roles" or claim.typ == document.role_typ:
            roles.append(claim.val)
        else:
            claims.setdefault(name, claim.val)
    claims["roles"] = roles
    if str(claims.get("tid", "")).lower() != settings.tenant_id:
        raise AuthError(401, "the caller is from another tenant")
    return principal_from_claims(claims)
