"""ARM's access check in front of the AzureML stand-in (:mod:`tests.azureml_server`): every call the workspace
serves is an action at the workspace's scope, allowed only if the caller's role assignments (:mod:`tests.rbac`,
read from the Bicep) allow it there, as ARM checks it before AzureML sees the request.

The action is named from the REST path as Azure names its operations (``<provider>/workspaces/<type>/read``,
``.../write``, ``.../<operation>/action``); the roles the Function App holds match them with wildcards
(``workspaces/*/read``, ``workspaces/computes/*``), so the check turns on the type and the verb. Creating a
compute with a user-assigned identity also needs ``userAssignedIdentities/*/assign/action`` on that identity
(a linked check: ``LinkedAuthorizationFailed``). The discovery document, operation polls and the managed
identity endpoint are not ARM operations and are not checked.
"""

from __future__ import annotations

import re
from typing import Any

from tests.rbac import Rbac, arm_refusal, assigned_identities

PROVIDER = "Microsoft.MachineLearningServices/workspaces"
_WORKSPACE = (
    r"(?P<scope>/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.MachineLearningServices"
    r"/workspaces/[^/]+)(?P<rest>/.*)?"
)
_PREFIXES = r"(?:/history/v1\.0|/mlflow/v[12]\.0|/data/v1\.0)?"
_VERBS = {"GET": "read", "PUT": "write", "DELETE": "delete"}


def action_of(method: str, path: str) -> tuple[str, str] | None:
    """``(action, scope)`` of a request to the workspace, None for what ARM does not authorize."""
    found = re.fullmatch(_PREFIXES + _WORKSPACE, path)
    if found is None:
        return None
    scope, rest = found["scope"], found["rest"] or ""
    if path.startswith(("/history/", "/mlflow/")):
        return f"{PROVIDER}/experiments/runs/read", scope  # run history and MLflow reads of a job's runs
    if path.startswith("/data/"):
        return f"{PROVIDER}/datasets/versions/read", scope  # output URIs resolved by the dataset data plane
    parts = [p for p in rest.split("/") if p]  # type, name, child type, name, ... (an operation last)
    if method == "POST":  # an operation on a resource: <types>/<operation>/action
        return "/".join([PROVIDER, *parts[0:-2:2], parts[-1], "action"]), scope
    return "/".join([PROVIDER, *parts[0::2], _VERBS.get(method, "write")]), scope


PRINCIPAL_ID = "11111111-2222-3333-4444-555555555555"
"""The caller's object id in ARM's messages (the Function App's identity)."""


def refusal(rbac: Rbac, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any] | None:
    """ARM's 403 for a request ``rbac`` does not allow, else None."""
    named = action_of(method, path)
    if named is None:
        return None
    action, scope = named
    attaches = action.endswith("/computes/write") and isinstance(body, dict)
    return arm_refusal(rbac, PRINCIPAL_ID, action, scope, assigned_identities(body) if attaches else [])
