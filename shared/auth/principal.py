"""Who is calling and what they may do: the app roles, the authenticated principal, and the refusals.

The roles are the API's app registration's app roles (assignable to users, groups, managed identities and
other service principals); a token carries the ones its caller holds in its ``roles`` claim. Every refusal
is an :class:`AuthError` whose message names what is wrong (the missing role, the claim that failed) and
never repeats what the caller sent.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from shared.records import SubmittedBy


class Role(StrEnum):
    SUBMIT = "Experiments.Submit"
    """Submit experiments, and cancel one's own."""
    READ = "Experiments.Read"
    """Read experiments (one's own, or all of them: ``RAPIDS_HPO_READERS_SEE``), their trials and dashboard;
    download one's own experiments' models."""
    ADMIN = "Experiments.Admin"
    """Read, cancel and download every experiment (implies the other two)."""


ALL_ROLES = frozenset(Role)


class AuthError(Exception):
    """A refused caller: 401 (not authenticated; ``WWW-Authenticate`` says why) or 403 (not allowed)."""

    def __init__(self, status: int, message: str, *, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error
        """RFC 6750's error code for a 401's ``WWW-Authenticate``: ``invalid_token`` or ``invalid_request``."""

    @classmethod
    def missing_role(cls, role: Role, doing: str) -> AuthError:
        return cls(403, f"{doing} needs the app role {role.value}, which the caller does not hold")


class Principal(BaseModel):
    """An authenticated caller: who (as recorded on what they submit) and which roles they hold."""

    model_config = ConfigDict(frozen=True)

    identity: SubmittedBy
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles

    def require(self, role: Role, doing: str) -> None:
        if not self.has(role):
            raise AuthError.missing_role(role, doing)

    def owns(self, owner: SubmittedBy | None) -> bool:
        """The caller is the Entra principal that submitted it (never true of a key holder or the queue)."""
        return owner is not None and owner.same_principal(self.identity)


KEY_HOLDER = Principal(identity=SubmittedBy(kind="function_key", name="function key holder"), roles=ALL_ROLES)
"""The caller in ``key`` mode: whoever holds the Functions key may do everything, as before identities."""


def roles_in(values: object) -> frozenset[Role]:
    """The known app roles in a token's ``roles`` claim (unknown names are ignored; a non-list is none)."""
    if not isinstance(values, list):
        return frozenset()
    known = {role.value: role for role in Role}
    return frozenset(known[value] for value in values if isinstance(value, str) and value in known)
