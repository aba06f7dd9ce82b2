"""How this deployment authenticates callers, read once from the environment.

``RAPIDS_HPO_AUTH=key`` (the default): the Functions host (or ``rapids-hpo serve``'s key) is the only check
and the key's holder may do everything. ``entra``: every request names an Entra ID principal of
``RAPIDS_HPO_AUTH_TENANT_ID`` holding the route's app role, either validated by App Service authentication
in front of the app (Easy Auth: the platform sets ``WEBSITE_AUTH_ENABLED``) or, where Easy Auth is off, by
the app from the request's bearer token.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from shared.config import EASY_AUTH_MARKER, env

GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class AuthSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: Literal["key", "entra"] = "key"
    tenant_id: str = ""
    """The directory (tenant) id whose tokens are accepted: one tenant, never ``common``/``organizations``."""
    client_id: str = ""
    """The API's app registration (application/client id): a v2.0 access token's ``aud``."""
    audience: str = ""
    """The registration's Application ID URI (``api://<client id>`` when empty), also accepted as ``aud``."""
    authority: str = "https://login.microsoftonline.com"
    easy_auth: bool = False
    """App Service authentication runs in front of the app (``WEBSITE_AUTH_ENABLED``, set by the platform)."""
    readers_see: Literal["own", "all"] = "own"
    """What a caller with only ``Experiments.Read`` sees: the experiments they submitted, or all of them."""

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("authority")
    @classmethod
    def _https_authority(cls, value: str) -> str:
        """Keys are fetched from here: https, or plain http to a loopback address (a local test issuer)."""
        value = value.rstrip("/")
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        try:
            loopback = parts.scheme == "http" and ipaddress.ip_address(parts.hostname or "").is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError("the authority must be an https URL (plain http only to a loopback address)")
        return value

    @model_validator(mode="after")
    def _entra_needs_ids(self) -> AuthSettings:
        if self.mode == "entra":
            for name in ("tenant_id", "client_id"):
                if not GUID.match(getattr(self, name)):
                    raise ValueError(f"RAPIDS_HPO_AUTH=entra needs {name} (RAPIDS_HPO_AUTH_{name.upper()}) as a GUID")
        return self

    @property
    def audiences(self) -> tuple[str, ...]:
        """``aud`` values accepted: the client id (v2.0 tokens) and the Application ID URI."""
        return (self.client_id, self.audience or f"api://{self.client_id}")

    @property
    def issuer(self) -> str:
        """The tenant's v2.0 issuer (the registration sets ``requestedAccessTokenVersion: 2``)."""
        return f"{self.authority}/{self.tenant_id}/v2.0"

    @property
    def openid_configuration_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @classmethod
    def from_env(cls) -> AuthSettings:
        return cls(
            mode=env("RAPIDS_HPO_AUTH").strip().lower(),  # validated
            tenant_id=env("RAPIDS_HPO_AUTH_TENANT_ID").strip(),
            client_id=env("RAPIDS_HPO_AUTH_CLIENT_ID").strip(),
            audience=env("RAPIDS_HPO_AUTH_AUDIENCE").strip(),
            authority=env("RAPIDS_HPO_AUTH_AUTHORITY").strip(),
            easy_auth=os.environ.get(EASY_AUTH_MARKER, "").strip().lower() == "true",
            readers_see=env("RAPIDS_HPO_READERS_SEE").strip().lower(),  # validated
        )
