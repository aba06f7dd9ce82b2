"""Callers with an identity: Entra ID principals (through App Service authentication or a bearer token the
app validates), the app roles each route needs, and experiments that belong to whoever submitted them.

``RAPIDS_HPO_AUTH=key`` keeps the Functions key as the only credential (its holder may do everything).
"""

from shared.auth.deps import (
    Authenticator,
    caller,
    check_owner,
    check_visible,
    install_auth,
    require,
    settings_of,
    visible_page,
)
from shared.auth.principal import KEY_HOLDER, AuthError, Principal, Role
from shared.auth.settings import AuthSettings

__all__ = [
    "KEY_HOLDER",
    "AuthError",
    "AuthSettings",
    "Authenticator",
    "Principal",
    "Role",
    "caller",
    "check_owner",
    "check_visible",
    "install_auth",
    "require",
    "settings_of",
    "visible_page",
]
