"""infra/, host.json, local.settings.json.example and .funcignore agree with the code and with Azure.

No Bicep compiler can run here, so the templates are checked structurally: a small lexer that knows
Bicep's comments, strings and interpolations finds declarations, object entries and array items. What
is checked is what a compiler or a first deployment would catch late (a missing module, a parameter a
module does not declare, an output that does not exist) and what no compiler catches (a setting the code
reads but Azure never sets, a role GUID that names another role, a rule open to the Internet, a key).
When ``pycep-parser`` (a pure-Python Bicep parser) is installed, every template is also parsed by it.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest

from shared import config
from shared.config import Settings
from tests.functions_host import funcignore_patterns, funcignored

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN_BICEP = INFRA / "main.bicep"
PARAMETERS_JSON = INFRA / "main.parameters.json"
ROLE_DEFINITIONS = INFRA / "modules" / "role-definitions.bicep"
VM_IDENTITY = INFRA / "modules" / "vm-identity.bicep"
ROLES_CONTROLPLANE = INFRA / "modules" / "roles-controlplane.bicep"
HOST_JSON = ROOT / "host.json"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"
FUNCIGNORE = ROOT / ".funcignore"

# Built-in roles, checked against "Azure built-in roles" (learn.microsoft.com/azure/role-based-access-control/
# built-in-roles). infra/modules/role-definitions.bicep must carry exactly these.
EXPECTED_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "AzureML Data Scientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "AzureML Compute Operator": "e503ece1-11d0-4e8e-8e2c-7a6c3bf38815",
    "Network Contributor": "4d97b98b-1d4f-4787-a291-c67834d212e7",
    "Virtual Machine Contributor": "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    # learn.microsoft.com/azure/role-based-access-control/built-in-roles/identity#managed-identity-operator
    "Managed Identity Operator": "f1a07417-d97a-45cb-824c-7a7467783830",
    # built-in-roles/privileged#role-based-access-control-administrator (the same reference)
    "Role Based Access Control Administrator": "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
    # learn.microsoft.com/azure/role-based-access-control/built-in-roles/general#reader
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    # learn.microsoft.com/azure/role-based-access-control/built-in-roles/integration#eventgrid-data-sender
    "EventGrid Data Sender": "d5a91429-5739-47e2-a06b-3470a27159e7",
    # learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage#storage-blob-data-reader
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    # learn.microsoft.com/azure/role-based-access-control/built-in-roles/containers#acrpull
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
}

# Who gets which role where: the narrowest scope that works. None = the module's resource group.
# APP is the Function App's system-assigned identity (the ``principalId`` parameter of the role modules);
# VM is the Dask VMs' user-assigned identity, created in vm-identity.bicep; AML the AmlCompute clusters'
# (the identity AzureML trials run as), created in azureml.bicep.
APP, VM, AML = "function app", "dask vm identity", "azureml compute identity"
IDENTITIES = {"vmIdentity": VM, "computeIdentity": AML}
STORAGE_ACCOUNT = "Microsoft.Storage/storageAccounts"
BLOB_CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"
USER_ASSIGNED_IDENTITY = "Microsoft.ManagedIdentity/userAssignedIdentities"
EXPECTED_ASSIGNMENTS = Counter(
    [
        (APP, "storageBlobDataOwner", STORAGE_ACCOUNT),
        (APP, "storageQueueDataContributor", STORAGE_ACCOUNT),
        (APP, "storageTableDataContributor", STORAGE_ACCOUNT),
        (APP, "monitoringMetricsPublisher", "Microsoft.Insights/components"),
        (APP, "virtualMachineContributor", "Microsoft.Network/virtualNetworks/subnets"),
        (APP, "managedIdentityOperator", USER_ASSIGNED_IDENTITY),
        # Each experiment's VM identity gets Storage Blob Data Contributor on that experiment's container, and
        # nothing else: a condition limits this delegation to that one role (tests/test_vmcluster_identity.py).
        (APP, "roleBasedAccessControlAdministrator", STORAGE_ACCOUNT),
        # Likewise AcrPull on the deployment's registry for the same identities, nothing else (roles-registry.bicep).
        (APP, "roleBasedAccessControlAdministrator", "Microsoft.ContainerRegistry/registries"),
        (APP, "reader", "Microsoft.Network/virtualNetworks/subnets"),  # the dask subnet, never its VNet
        (APP, "networkContributor", None),
        (APP, "clusterVmOperatorRole", None),  # a custom role: Virtual Machine Contributor lists storage keys
        (APP, "azureMLDataScientist", "Microsoft.MachineLearningServices/workspaces"),
        (APP, "azureMLComputeOperator", "Microsoft.MachineLearningServices/workspaces"),
        (APP, "storageBlobDataContributor", STORAGE_ACCOUNT),  # the AzureML workspace's storage
        (APP, "eventGridDataSender", "Microsoft.EventGrid/topics"),  # publish to the control plane's topic
        (APP, "reader", "Microsoft.MachineLearningServices/workspaces"),  # workspaces.get, jobs.download
        (APP, "managedIdentityOperator", USER_ASSIGNED_IDENTITY),  # attach the compute identity to clusters
        # The Dask VM identity: none. Each experiment's VMs run as an identity of their own, which the app creates
        # and gives Storage Blob Data Contributor on that experiment's container only (shared/backends/vmcluster).
        # Both compute identities publish telemetry to the component (shared/telemetry/compute.py): the deployment's
        # Dask VM identity the driver's, the AzureML clusters' the trials'.
        (VM, "monitoringMetricsPublisher", "Microsoft.Insights/components"),
        (AML, "monitoringMetricsPublisher", "Microsoft.Insights/components"),
        # The AzureML compute identity: the trials' data (Contributor only on keyless workspace storage, where
        # they also write outputs) and the workspace registry's images.
        (AML, "storageBlobDataReader", STORAGE_ACCOUNT),
        (AML, "storageBlobDataContributor", STORAGE_ACCOUNT),
        (AML, "acrPull", "Microsoft.ContainerRegistry/registries"),
    ]
)

# ENV_DEFAULTS keys that are deliberately not app settings in Azure, and why.
NOT_SET_IN_AZURE = {
    "AzureWebJobsStorage": "a connection string; Azure uses identity-based AzureWebJobsStorage__accountName",
    "RAPIDS_HPO_HOME": "home of the local (SQLite/file) store; Azure uses the storage account",
    "RAPIDS_HPO_API_URL": "read by the CLI client, not by the Function App",
    "RAPIDS_HPO_FUNCTION_KEY": "read by the CLI client; a secret that never belongs in app settings",
    "EVENTGRID_TOPIC_KEY": "a local or development topic's key; in Azure the app publishes with its identity",
    "RAPIDS_HPO_PRICES_FILE": "a user's price file on their machine; the Function App uses the bundled catalogue",
    "RAPIDS_HPO_STATE_DIR": "where `rapids-hpo serve` leaves its key for the CLI on the user's machine",
    "RAPIDS_HPO_API_SCOPE": "read by the CLI client (the API's scope its user signs in for)",
    "RAPIDS_HPO_CLI_CREDENTIAL": "read by the CLI client (az login or a device code)",
}
# App settings the Functions host itself reads (not the project's code).
HOST_APP_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    # The Python worker: attach the host's trace context to each invocation (shared.telemetry configures
    # the exporters itself, with the Entra credential; PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY would
    # configure the distro without one).
    "PYTHON_ENABLE_OPENTELEMETRY",
}
# Flex Consumption deprecations ("Flex Consumption plan deprecations", Functions app settings reference):
# the runtime is set in functionAppConfig and the package comes from the deployment container.
FLEX_DEPRECATED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
}

# Environment variables read under a third-party convention, on the GPU compute: never app settings.
THIRD_PARTY_ENV = {
    "CUDA_VISIBLE_DEVICES": "set per process by the CUDA runtime / dask-cuda; picks the training engine",
    "DASK_SCHEDULER_ADDRESS": "Dask's own variable for the scheduler a client joins (AzureVMCluster jobs)",
    "MLFLOW_TRACKING_URI": "set by AzureML inside a job to the workspace's MLflow endpoint",
    "MLFLOW_RUN_ID": "set by AzureML inside a job: the run MLflow logs to",
    "AZURE_STORAGE_ACCOUNT_NAME": "adlfs/fsspec's variable for the data account",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST": "azure-identity's override of the instance metadata host; boot.py honours it",
    "WEBSITE_SITE_NAME": "set by Azure on every Function App: turns hosted mode on (shared.config)",
    "WEBSITE_HOSTNAME": "set by Azure on every Function App: its host name, trusted by the web edge (shared.config)",
    "NETRC": "requests' netrc file: shared.http_pool lets requests read its environment only if one is there",
    "COLUMNS": "the terminal width convention rich reads: the CLI keeps a width it gives (shared.cli._app)",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Application Insights' own (the host's and the distro's): telemetry on",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Application Insights' own: Authorization=AAD, an Entra credential",
    "OTEL_SDK_DISABLED": "OpenTelemetry's standard switch: telemetry off whatever else is set (shared.telemetry)",
    "OTEL_TRACES_SAMPLER": "OpenTelemetry's standard sampler choice, else every span is kept (gpu_jobs.exporters)",
    "OTEL_SERVICE_NAME": "OpenTelemetry's standard service name, over the one shared.telemetry gives",
    "TRACEPARENT": "the W3C trace context the control plane hands the compute's driver (OpenTelemetry's env carrier)",
    "AZUREML_RUN_ID": "set by AzureML inside a job: its run id (a sweep trial's <sweep>_<index> gives its number)",
    "RAPIDS_HPO_EXPERIMENT_ID": "set by the control plane in a compute's environment (VM container, AzureML job)",
}

# Directories whose Python files are not the deployed app (or not ours).
NON_APP_DIRS = {"tests", "bench", "docs", "examples", "infra", "node_modules", "build", "dist", "outputs"}

WIDE_SOURCES = {"*", "internet", "any", "0.0.0.0/0", "::/0"}


# ---------------------------------------------------------------------------------------------------
# A small Bicep reader
# ---------------------------------------------------------------------------------------------------


def _mask(src: str, *, strings: bool) -> str:
    """``src`` with comments (and, with ``strings``, string-literal text) blanked; offsets are kept.

    Interpolations (``'${expr}'``) stay code; with ``strings`` their ``${`` and ``}`` are blanked too, so
    brackets stay balanced either way.
    """
    out = list(src)
    n = len(src)

    def blank(a: int, b: int) -> None:
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    modes = ["code"]  # "code" | "str" | "interp"
    depths: list[int] = []  # brace depth inside each open interpolation
    i = 0
    while i < n:
        if modes[-1] == "str":
            if src[i] == "\\":
                if strings:
                    blank(i, i + 2)
                i += 2
            elif src[i] == "'":
                modes.pop()
                i += 1
            elif src.startswith("${", i):
                if strings:
                    blank(i, i + 2)
                modes.append("interp")
                depths.append(0)
                i += 2
            else:
                if strings:
                    blank(i, i + 1)
                i += 1
            continue
        if src.startswith("//", i):
            end = src.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif src.startswith("/*", i):
            end = src.find("*/", i + 2)
            end = n if end < 0 else end + 2
            blank(i, end)
            i = end
        elif src.startswith("'''", i):
            end = src.find("'''", i + 3)
            end = n if end < 0 else end + 3
            if strings:
                blank(i + 3, end - 3)
            i = end
        elif src[i] == "'":
            modes.append("str")
            i += 1
        else:
            if modes[-1] == "interp" and src[i] == "{":
                depths[-1] += 1
            elif modes[-1] == "interp" and src[i] == "}":
                if depths[-1] == 0:
                    depths.pop()
                    modes.pop()
                    if strings:
                        blank(i, i + 1)
                    i += 1
                    continue
                depths[-1] -= 1
            i += 1
    return "".join(out)


_OPEN_TO_CLOSE = {"{": "}", "[": "]", "(": ")"}


@dataclass(frozen=True)
class Decl:
    kind: str  # "resource" | "module"
    symbol: str
    target: str  # resource type, or module path
    api_version: str
    existing: bool
    start: int  # offset of the body's opening bracket
    end: int  # offset of the body's closing bracket


class Bicep:
    """One .bicep file: its text, with comments blanked (``text``) and with strings blanked too (``code``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.src = path.read_text(encoding="utf-8")
        self.text = _mask(self.src, strings=False)
        self.code = _mask(self.src, strings=True)

    def close_of(self, open_at: int) -> int:
        """Offset of the bracket closing the one at ``open_at``."""
        stack = []
        for k in range(open_at, len(self.code)):
            c = self.code[k]
            if c in _OPEN_TO_CLOSE:
                stack.append(_OPEN_TO_CLOSE[c])
            elif c in _OPEN_TO_CLOSE.values():
                assert stack and stack[-1] == c, f"{self.path}: unbalanced {c!r} at offset {k}"
                stack.pop()
                if not stack:
                    return k
        raise AssertionError(f"{self.path}: bracket at offset {open_at} is never closed")

    def _value_end(self, start: int, stop: int) -> int:
        """End of an expression starting at ``start``: a newline or comma at depth 0, or ``stop``."""
        depth = 0
        for k in range(start, stop):
            c = self.code[k]
            if c in _OPEN_TO_CLOSE:
                depth += 1
            elif c in _OPEN_TO_CLOSE.values():
                depth -= 1
            elif depth == 0 and c in "\n,":
                return k
        return stop

    def entries(self, open_at: int) -> dict[str, str]:
        """The ``key: value`` entries of the object literal whose ``{`` is at ``open_at``."""
        close = self.close_of(open_at)
        found: dict[str, str] = {}
        k = open_at + 1
        key_re = re.compile(r"('?)([A-Za-z_$][\w$-]*)\1\s*:")
        while k < close:
            if self.code[k] in " \t\r\n,":
                k += 1
                continue
            match = key_re.match(self.text, k)
            assert match, f"{self.path}: no key at offset {k}: {self.text[k : k + 40]!r}"
            value_start = match.end()
            value_end = self._value_end(value_start, close)
            found[match.group(2)] = self.text[value_start:value_end].strip()
            k = value_end
        return found

    def items(self, open_at: int) -> list[str]:
        """The items of the array literal whose ``[`` is at ``open_at``."""
        close = self.close_of(open_at)
        found = []
        k = open_at + 1
        while k < close:
            if self.code[k] in " \t\r\n,":
                k += 1
                continue
            end = self._value_end(k, close)
            found.append(self.text[k:end].strip())
            k = end
        return found

    def object_at(self, value_start: int) -> dict[str, str]:
        """Entries of the object literal that starts at (or right after) ``value_start``."""
        open_at = self.code.index("{", value_start)
        return self.entries(open_at)

    @property
    def params(self) -> dict[str, str | None]:
        """Parameter name -> default expression (None when the parameter is required)."""
        found = {}
        for match in re.finditer(r"^param\s+(\w+)\s+[^=\n]+?(?:=[ \t]*(.*))?$", self.text, re.MULTILINE):
            found[match.group(1)] = match.group(2).strip() if match.group(2) else None
        return found

    @property
    def outputs(self) -> set[str]:
        return set(re.findall(r"^output\s+(\w+)\s", self.text, re.MULTILINE))

    def var(self, name: str) -> int:
        """Offset of the value of ``var name = ...``."""
        match = re.search(rf"^var\s+{name}\s*=\s*", self.text, re.MULTILINE)
        assert match, f"{self.path}: no var {name}"
        return match.end()

    def var_object(self, name: str) -> dict[str, str]:
        return self.object_at(self.var(name))

    def var_array(self, name: str) -> list[str]:
        start = self.var(name)
        assert self.code[start] == "[", f"{self.path}: var {name} is not an array literal"
        return self.items(start)

    @property
    def decls(self) -> list[Decl]:
        found = []
        pattern = re.compile(r"^(resource|module)\s+(\w+)\s+'([^'@]+)(?:@([^']+))?'\s*(existing\s*)?=\s*", re.MULTILINE)
        for match in pattern.finditer(self.text):
            rest = match.end()
            open_at = min(
                (p for p in (self.code.find("{", rest), self.code.find("[", rest)) if p >= 0),
                default=-1,
            )
            # `= if (cond) {`: skip the condition's parentheses.
            paren = self.code.find("(", rest)
            if 0 <= paren < open_at and self.code[rest:paren].strip() == "if":
                open_at = self.code.find("{", self.close_of(paren))
            assert open_at >= 0, f"{self.path}: no body for {match.group(2)}"
            found.append(
                Decl(
                    kind=match.group(1),
                    symbol=match.group(2),
                    target=match.group(3),
                    api_version=match.group(4) or "",
                    existing=bool(match.group(5)),
                    start=open_at,
                    end=self.close_of(open_at),
                )
            )
        return found

    def body(self, decl: Decl) -> dict[str, str]:
        """Top-level entries of a declaration's body (of the object inside, for a ``[for ...]`` loop)."""
        if self.code[decl.start] == "[":
            return self.object_at(self.code.index(":", decl.start))
        return self.entries(decl.start)

    def body_object(self, decl: Decl, key: str) -> dict[str, str]:
        """Entries of the object under ``key`` in a declaration's body."""
        value = self.body(decl)[key]
        start = self.text.index(value, decl.start)
        return self.object_at(start)

    def resource_types(self) -> dict[str, str]:
        return {d.symbol: d.target for d in self.decls if d.kind == "resource"}


@cache
def _bicep(path: Path) -> Bicep:
    return Bicep(path)


def _bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def _literal(expr: str) -> str | None:
    """The value of a plain string literal (no interpolation), else None."""
    match = re.fullmatch(r"'([^'\\$]*)'", expr.strip())
    return match.group(1) if match else None


def _module_calls() -> list[tuple[Bicep, Decl, Bicep]]:
    """(calling file, module declaration, called file) for every module in infra/."""
    calls = []
    for path in _bicep_files():
        caller = _bicep(path)
        for decl in caller.decls:
            if decl.kind == "module":
                target = (path.parent / decl.target).resolve()
                calls.append((caller, decl, _bicep(target) if target.is_file() else None))
    return calls


def _resolve(bicep: Bicep, expr: str, seen: int = 0) -> list[str]:
    """Values an expression can take: a literal, or a parameter's default / the values callers pass."""
    literal = _literal(expr)
    if literal is not None:
        return [literal]
    name = expr.strip()
    assert seen < 5 and re.fullmatch(r"\w+", name), f"{bicep.path}: cannot resolve {expr!r}"
    params = bicep.params
    assert name in params, f"{bicep.path}: {name!r} is not a parameter"
    values = []
    if params[name] is not None:
        values += _resolve(bicep, params[name], seen + 1)
    for caller, decl, called in _module_calls():
        if called is bicep:
            passed = caller.body_object(decl, "params")
            if name in passed:
                values += _resolve(caller, passed[name], seen + 1)
    if bicep.path == MAIN_BICEP and name in _parameters():
        values.append(str(_parameters()[name]))
    return values


@cache
def _parameters() -> dict[str, object]:
    document = json.loads(PARAMETERS_JSON.read_text(encoding="utf-8"))
    return {name: entry["value"] for name, entry in document["parameters"].items()}


def _main_app_settings() -> dict[str, str]:
    return _bicep(MAIN_BICEP).var_object("appSettings")


# ---------------------------------------------------------------------------------------------------
# The reader itself
# ---------------------------------------------------------------------------------------------------


def test_reader_masks_comments_and_strings_but_keeps_offsets(tmp_path: Path) -> None:
    path = tmp_path / "x.bicep"
    path.write_text(
        "// head { [\n"
        "var a = {\n"
        "  url: 'https://x/${take('y{', 1)}' // tail }\n"
        "  'quoted-key': [\n"
        "    'one'\n"
        "    'two, three'\n"
        "  ]\n"
        "  nested: { b: 1, c: '}' }\n"
        "}\n"
        "param p string = 'v'\n"
        "param q int\n",
        encoding="utf-8",
    )
    bicep = Bicep(path)
    assert len(bicep.code) == len(bicep.src) == len(bicep.text)
    entries = bicep.var_object("a")
    assert list(entries) == ["url", "quoted-key", "nested"]
    assert entries["url"] == "'https://x/${take('y{', 1)}'"
    start = bicep.text.index("[", bicep.text.index("quoted-key"))
    assert bicep.items(start) == ["'one'", "'two, three'"]
    assert bicep.object_at(bicep.text.index("nested")) == {"b": "1", "c": "'}'"}
    assert bicep.params == {"p": "'v'", "q": None}


# ---------------------------------------------------------------------------------------------------
# Bicep structure: modules, parameters, outputs, imports, API versions
# ---------------------------------------------------------------------------------------------------


def test_there_are_templates_to_check() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in _bicep_files()}
    assert {"main.bicep", "modules/role-definitions.bicep"} <= names
    assert len(_module_calls()) >= 6


def test_every_module_exists_and_gets_exactly_the_parameters_it_declares() -> None:
    for caller, decl, called in _module_calls():
        where = f"{caller.path.name}: module {decl.symbol}"
        assert called is not None, f"{where}: {decl.target} does not exist"
        assert not decl.target.startswith(("br:", "br/", "ts:")), f"{where}: registry modules need the network"
        passed = set(caller.body_object(decl, "params"))
        declared = called.params
        assert passed <= set(declared), f"{where}: unknown parameters {sorted(passed - set(declared))}"
        required = {name for name, default in declared.items() if default is None}
        assert required <= passed, f"{where}: missing required parameters {sorted(required - passed)}"


def test_every_module_output_used_is_declared() -> None:
    for path in _bicep_files():
        bicep = _bicep(path)
        modules = {d.symbol: d for d in bicep.decls if d.kind == "module"}
        for symbol, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", bicep.code):
            assert symbol in modules, f"{path.name}: {symbol}.outputs but {symbol} is not a module"
            called = _bicep((path.parent / modules[symbol].target).resolve())
            assert output in called.outputs, f"{path.name}: {called.path.name} has no output {output}"


def test_every_import_names_an_exported_declaration() -> None:
    seen = 0
    for path in _bicep_files():
        bicep = _bicep(path)
        for names, target in re.findall(r"^import\s*\{([^}]*)\}\s*from\s*'([^']+)'", bicep.text, re.MULTILINE):
            source = (path.parent / target).resolve()
            assert source.is_file(), f"{path.name}: imports from missing {target}"
            exported = set(re.findall(r"@export\(\)\s*(?:@[^\n]*\s*)*(?:var|type|func)\s+(\w+)", _bicep(source).text))
            for name in (n.strip() for n in names.split(",")):
                seen += 1
                assert name in exported, f"{path.name}: {name} is not exported by {target}"
    assert seen >= 3


def test_parameters_file_matches_main_bicep() -> None:
    document = json.loads(PARAMETERS_JSON.read_text(encoding="utf-8"))
    assert document["$schema"].endswith("/deploymentParameters.json#")
    declared = _bicep(MAIN_BICEP).params
    given = _parameters()
    assert set(given) <= set(declared), f"unknown parameters: {sorted(set(given) - set(declared))}"
    required = {name for name, default in declared.items() if default is None}
    assert required <= set(given), f"parameters without a default must be given: {sorted(required - set(given))}"
    assert given["deployAzureML"] is False
    assert re.fullmatch(r"[a-z0-9]{2,10}", str(given["namePrefix"]))
    assert given["location"] and given["experimentResourceGroup"]


def test_resource_api_versions_are_stable() -> None:
    resources = [(path, d) for path in _bicep_files() for d in _bicep(path).decls if d.kind == "resource"]
    assert len(resources) >= 20
    for path, decl in resources:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", decl.api_version), f"{path.name}: {decl.symbol} {decl.api_version}"


def test_templates_parse_with_pycep_when_installed() -> None:
    pycep = pytest.importorskip("pycep", reason="pycep-parser is not installed")
    if not hasattr(pycep, "BicepParser"):
        pytest.skip("the installed 'pycep' is not pycep-parser")
    for path in _bicep_files():
        tree = pycep.BicepParser().parse(text=path.read_text(encoding="utf-8"))
        assert tree, path
    role_ids = pycep.BicepParser().parse(text=ROLE_DEFINITIONS.read_text(encoding="utf-8"))
    assert role_ids["variables"]["roleIds"]["value"] == {key: guid for key, (guid, _) in _role_table().items()}


# ---------------------------------------------------------------------------------------------------
# Names shared with the code
# ---------------------------------------------------------------------------------------------------


def test_queues_tables_and_containers_match_shared_config() -> None:
    main = _bicep(MAIN_BICEP)
    queues = [_literal(item) for item in main.var_array("queueNames")]
    expected_queues = {name for queue in config.QUEUES for name in (queue, queue + config.POISON_SUFFIX)}
    assert sorted(queues) == sorted(expected_queues)
    assert sorted(_literal(item) for item in main.var_array("tableNames")) == sorted(config.TABLES)
    assert sorted(_literal(item) for item in main.var_array("blobContainerNames")) == sorted(config.CONTAINERS)

    storage_call = next(d for d in main.decls if d.symbol == "storage")
    passed = main.body_object(storage_call, "params")
    assert passed["queueNames"] == "queueNames"
    assert passed["tableNames"] == "tableNames"
    assert "blobContainerNames" in passed["containerNames"]
    assert "deploymentContainerName" in passed["containerNames"]

    storage = _bicep(INFRA / "modules" / "storage.bicep")
    loops = {d.target: storage.text[d.start : d.end] for d in storage.decls if storage.code[d.start] == "["}
    assert "in queueNames" in loops["Microsoft.Storage/storageAccounts/queueServices/queues"]
    assert "in tableNames" in loops["Microsoft.Storage/storageAccounts/tableServices/tables"]
    assert "in containerNames" in loops["Microsoft.Storage/storageAccounts/blobServices/containers"]


def test_app_settings_cover_env_defaults_and_nothing_stale() -> None:
    settings = _main_app_settings()
    for name in config.ENV_DEFAULTS:
        assert (name in settings) != (name in NOT_SET_IN_AZURE), (
            f"{name}: set it in infra/main.bicep appSettings or list it in NOT_SET_IN_AZURE (not both)"
        )
    assert set(NOT_SET_IN_AZURE) <= set(config.ENV_DEFAULTS), "NOT_SET_IN_AZURE names a setting that is gone"
    stale = set(settings) - set(config.ENV_DEFAULTS) - HOST_APP_SETTINGS
    assert not stale, f"app settings nothing reads: {sorted(stale)}"
    assert not set(settings) & FLEX_DEPRECATED_SETTINGS, "Flex Consumption sets these in functionAppConfig"
    assert "AzureWebJobsStorage" not in settings, "host storage is identity-based, never a connection string"
    assert settings["AZURE_SUBSCRIPTION_ID"] == "subscription().subscriptionId"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'Authorization=AAD'"

    main = _bicep(MAIN_BICEP)
    function_app = next(d for d in main.decls if d.symbol == "functionApp")
    assert main.body_object(function_app, "params")["appSettings"] == "appSettings"
    # The backends work in AZURE_RESOURCE_GROUP: the experiment roles and the workspace must be there too.
    assert settings["AZURE_RESOURCE_GROUP"] == "experimentRgName"
    for symbol in ("experimentRoles", "azureML", "azureMLRoles"):
        decl = next(d for d in main.decls if d.symbol == symbol)
        assert main.body(decl)["scope"] == "resourceGroup(experimentRgName)", symbol
    assert "deployAzureML ? azureMLWorkspaceName" in settings["AZUREML_WORKSPACE"]
    functionapp = _bicep(INFRA / "modules" / "functionapp.bicep")
    assert re.search(r"appSettings:\s*\[\s*for\s+\w+\s+in\s+items\(appSettings\)", functionapp.code), (
        "the site's app settings are exactly the appSettings parameter"
    )


# ---------------------------------------------------------------------------------------------------
# Settings the code reads
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvRead:
    name: str
    where: str
    default: str | None  # the literal default of os.environ.get / os.getenv, if any


def _env_reads(source: str, where: str = "<string>") -> list[EnvRead]:
    """Environment variables a module reads: ``os.environ[...]``, ``os.environ.get``, ``os.getenv``,
    ``"X" in os.environ`` and ``env(...)`` (shared.config). Names may be literals or module constants."""
    tree = ast.parse(source)
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }

    def name_of(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    def is_environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ"
        )

    reads = []
    for node in ast.walk(tree):
        name, default = None, None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environ(node.value):
            name = name_of(node.slice)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            getter = (isinstance(func, ast.Attribute) and func.attr == "get" and is_environ(func.value)) or (
                isinstance(func, ast.Attribute | ast.Name)
                and getattr(func, "attr", getattr(func, "id", "")) == "getenv"
            )
            settings_env = isinstance(func, ast.Name | ast.Attribute) and (
                getattr(func, "id", None) == "env" or getattr(func, "attr", None) == "env"
            )
            if getter or settings_env:
                name = name_of(node.args[0])
            if getter and len(node.args) > 1:
                default = name_of(node.args[1])
        elif (
            isinstance(node, ast.Compare)
            and len(node.ops) == 1
            and isinstance(node.ops[0], ast.In | ast.NotIn)
            and is_environ(node.comparators[0])
        ):
            name = name_of(node.left)
        if name:
            reads.append(EnvRead(name, f"{where}:{getattr(node, 'lineno', '?')}", default))
    return reads


def _app_sources() -> list[Path]:
    """Every Python file of the deployed app and the GPU jobs: all but tests, tools and hidden folders."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in NON_APP_DIRS and d != "__pycache__")
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


@cache
def _code_env_reads() -> tuple[EnvRead, ...]:
    reads = []
    for path in _app_sources():
        rel = path.relative_to(ROOT).as_posix()
        reads += _env_reads(path.read_text(encoding="utf-8"), rel)
    return tuple(reads)


def test_env_scanner_finds_every_form_of_read() -> None:
    source = (
        "import os\n"
        "from os import environ, getenv\n"
        "from shared import config\n"
        "from shared.config import env\n"
        "KEY = 'E_CONST'\n"
        "a = os.environ['E_SUBSCRIPT']\n"
        "b = os.environ.get('E_GET', 'dflt')\n"
        "c = os.getenv('E_GETENV')\n"
        "d = getenv('E_BARE_GETENV')\n"
        "e = env('E_ENV')\n"
        "f = config.env('E_CONFIG_ENV')\n"
        "g = 'E_IN' in os.environ\n"
        "h = environ.get(KEY)\n"
        "os.environ['E_WRITTEN'] = '1'\n"
        "os.environ.setdefault('E_SETDEFAULT', '1')\n"
        "def dynamic(n):\n"
        "    return os.environ.get(n)\n"
    )
    reads = _env_reads(source)
    assert {r.name for r in reads} == {
        "E_CONST",
        "E_SUBSCRIPT",
        "E_GET",
        "E_GETENV",
        "E_BARE_GETENV",
        "E_ENV",
        "E_CONFIG_ENV",
        "E_IN",
    }
    assert next(r for r in reads if r.name == "E_GET").default == "dflt"


def test_app_sources_are_scanned() -> None:
    sources = {p.relative_to(ROOT).as_posix() for p in _app_sources()}
    assert "shared/config.py" in sources
    assert not any(s.startswith(("tests/", ".venv/", "bench/")) for s in sources)
    names = {r.name for r in _code_env_reads()}
    assert {
        "AzureWebJobsStorage__accountName",
        "RAPIDS_HPO_POLL_SECONDS",
        "RAPIDS_HPO_STALL_SECONDS",
    } <= names


def test_every_setting_the_code_reads_is_declared_or_set_by_infra() -> None:
    settings = _main_app_settings()
    undeclared = sorted(
        f"{r.name} ({r.where})"
        for r in _code_env_reads()
        if r.name not in config.ENV_DEFAULTS and r.name not in settings and r.name not in THIRD_PARTY_ENV
    )
    assert not undeclared, (
        "declare these in shared.config.ENV_DEFAULTS (or set them in infra/main.bicep, or justify them in "
        f"THIRD_PARTY_ENV): {undeclared}"
    )


def test_every_setting_the_code_reads_is_in_local_settings_example() -> None:
    values = _local_settings()["Values"]
    missing = sorted(
        f"{r.name} ({r.where})" for r in _code_env_reads() if r.name not in THIRD_PARTY_ENV and r.name not in values
    )
    assert not missing, f"add to local.settings.json.example: {missing}"


def test_direct_reads_of_declared_settings_use_the_documented_default() -> None:
    for read in _code_env_reads():
        if read.name in config.ENV_DEFAULTS and read.default is not None:
            assert read.default == config.ENV_DEFAULTS[read.name], f"{read.where}: use shared.config.env()"


def test_third_party_allowlist_does_not_shadow_declared_settings() -> None:
    assert not set(THIRD_PARTY_ENV) & set(config.ENV_DEFAULTS)
    assert all(reason.strip() for reason in THIRD_PARTY_ENV.values())


# ---------------------------------------------------------------------------------------------------
# local.settings.json.example, .funcignore
# ---------------------------------------------------------------------------------------------------


@cache
def _local_settings() -> dict:
    return json.loads(LOCAL_SETTINGS_EXAMPLE.read_text(encoding="utf-8"))


def test_local_settings_example_lists_every_env_default() -> None:
    document = _local_settings()
    assert document["IsEncrypted"] is False
    values = document["Values"]
    assert all(isinstance(v, str) for v in values.values()), "every value is a string"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true", "Azurite locally"
    missing = set(config.ENV_DEFAULTS) - set(values)
    assert not missing, f"add to local.settings.json.example: {sorted(missing)}"
    unknown = set(values) - set(config.ENV_DEFAULTS) - {"FUNCTIONS_WORKER_RUNTIME"}
    assert not unknown, f"settings nothing reads: {sorted(unknown)}"
    for name, default in config.ENV_DEFAULTS.items():
        if default:
            assert values[name] == default, f"{name}: the example shows the documented default"


def test_no_real_local_settings_is_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "local.settings.json" in ignored


def test_funcignore_excludes_tools_and_keeps_the_app() -> None:
    patterns = funcignore_patterns(FUNCIGNORE.parent)
    for path in (
        "tests/test_infra.py",
        ".venv/bin/python",
        "bench/train_speed.py",
        "docs/design.md",
        ".azurite/__blobstorage__/x",
        "node_modules/azurite/package.json",
        ".git/config",
        "shared/__pycache__/config.cpython-311.pyc",
        "infra/main.bicep",
        "local.settings.json",
    ):
        assert funcignored(path, patterns), f"{path} would be deployed"
    for path in (
        "function_app.py",
        "host.json",
        "requirements.txt",
        "shared/config.py",
        "gpu_jobs/__init__.py",
    ):
        assert not funcignored(path, patterns), f"{path} would not be deployed"


# ---------------------------------------------------------------------------------------------------
# host.json
# ---------------------------------------------------------------------------------------------------


def _timespan(value: str) -> timedelta:
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?", value)
    assert match, f"not a timespan: {value!r}"
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(
        days=int(days or 0),
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds),
        microseconds=int((fraction or "0").ljust(6, "0")[:6]),
    )


@cache
def _host() -> dict:
    return json.loads(HOST_JSON.read_text(encoding="utf-8"))


def test_host_json_queue_semantics_match_shared_config() -> None:
    host = _host()
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    queues = host["extensions"]["queues"]
    assert queues["maxDequeueCount"] == config.MAX_DEQUEUE_COUNT
    assert queues["messageEncoding"] == "base64"
    assert 1 <= queues["batchSize"] <= 32
    assert 0 <= queues["newBatchThreshold"] <= queues["batchSize"]
    assert timedelta(milliseconds=100) <= _timespan(queues["maxPollingInterval"]) <= timedelta(minutes=1)
    assert timedelta(0) < _timespan(queues["visibilityTimeout"]) <= timedelta(minutes=10)
    assert host["extensions"]["http"]["routePrefix"] == "api"


def test_host_json_timeout_and_sampling() -> None:
    host = _host()
    timeout = _timespan(host["functionTimeout"])
    assert timedelta(seconds=230) < timeout <= timedelta(hours=1), "above the HTTP cut-off, a real cap"
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert {"Request", "Exception"} <= set(sampling["excludedTypes"].split(";")), "never sample away failures"


def test_api_routes_live_under_the_route_prefix() -> None:
    # AsgiFunctionApp hands FastAPI the full URL path, route prefix included.
    from shared.api import create_api

    prefix = "/" + _host()["extensions"]["http"]["routePrefix"] + "/"
    routes = []  # FastAPI keeps an included router whole (its routes hold their full paths)
    for route in create_api(settings=Settings.from_env()).routes:
        routes += getattr(getattr(route, "original_router", None), "routes", [route])
    paths = [route.path for route in routes if hasattr(route, "path")]
    assert {"/api/experiments", "/api/ui", "/api/openapi.json", "/api/docs"} <= set(paths)
    assert all(path.startswith(prefix) for path in paths), [p for p in paths if not p.startswith(prefix)]


# ---------------------------------------------------------------------------------------------------
# Identity and access
# ---------------------------------------------------------------------------------------------------


@cache
def _role_table() -> dict[str, tuple[str, str]]:
    """key -> (GUID, role name), from the commented lines of role-definitions.bicep."""
    table = {}
    pattern = re.compile(r"^\s*(\w+):\s*'([^']*)'\s*//\s*(.+?)\s*$", re.MULTILINE)
    for key, guid, name in pattern.findall(ROLE_DEFINITIONS.read_text(encoding="utf-8")):
        assert key not in table, f"duplicate role key {key}"
        table[key] = (guid, name)
    return table


def test_role_guids_are_well_formed_and_match_their_names() -> None:
    table = _role_table()
    assert set(_bicep(ROLE_DEFINITIONS).var_object("roleIds")) == set(table), "one commented line per role"
    for key, (guid, name) in table.items():
        assert str(uuid.UUID(guid)) == guid, f"{key}: {guid!r} is not a lowercase canonical GUID"
        assert EXPECTED_ROLES.get(name) == guid, f"{key}: {guid} is not the built-in role {name!r}"
    assert {name for _, name in table.values()} == set(EXPECTED_ROLES)


def _role_assignments() -> list[tuple[Bicep, Decl]]:
    return [
        (_bicep(path), d)
        for path in _bicep_files()
        for d in _bicep(path).decls
        if d.target == "Microsoft.Authorization/roleAssignments"
    ]


def _principal_of(bicep: Bicep, principal_expr: str) -> tuple[str, str]:
    """(APP or VM, the expression the assignment's name must use for it) for a ``principalId`` value."""
    if principal_expr == "principalId":
        return APP, "principalId"
    match = re.fullmatch(r"(\w+)\.properties\.principalId", principal_expr)
    assert match, f"{bicep.path.name}: principalId {principal_expr!r} is neither the app nor an identity here"
    identity = next((d for d in bicep.decls if d.symbol == match.group(1)), None)
    assert identity and identity.target == USER_ASSIGNED_IDENTITY, (
        f"{bicep.path.name}: {match.group(1)} is not a user-assigned identity"
    )  # created here, or (roles-telemetry.bicep: a role in another group than its identity) an existing one
    # The name needs a value known when the deployment starts: the identity's id, not its principal id.
    assert match.group(1) in IDENTITIES, f"{bicep.path.name}: {match.group(1)} is not a known identity"
    return IDENTITIES[match.group(1)], f"{match.group(1)}.id"


def test_role_assignments_are_deterministic_narrow_and_for_known_identities() -> None:
    table = _role_table()
    deployed = []
    for bicep, decl in _role_assignments():
        where = f"{bicep.path.name}: {decl.symbol}"
        body = bicep.body(decl)
        properties = bicep.body_object(decl, "properties")
        role = re.fullmatch(
            r"subscriptionResourceId\('Microsoft\.Authorization/roleDefinitions',\s*roleIds\.(\w+)\)",
            properties["roleDefinitionId"],
        )
        custom = re.fullmatch(r"(\w+)\.id", properties["roleDefinitionId"])
        custom_decl = next((d for d in bicep.decls if custom and d.symbol == custom.group(1)), None)
        if custom_decl is not None:  # a custom role of the same file, assignable exactly where it is assigned
            assert custom_decl.target == "Microsoft.Authorization/roleDefinitions" and not custom_decl.existing
            key, ref = custom_decl.symbol, f"{custom_decl.symbol}.id"
            assert "resourceGroup().id" in bicep.body_object(custom_decl, "properties")["assignableScopes"]
        else:
            assert role, f"{where}: roleDefinitionId must name a key of roleIds or a custom role of this file"
            key, ref = role.group(1), f"roleIds.{role.group(1)}"
            assert key in table, f"{where}: roleIds.{key} is not defined"
        principal, principal_in_name = _principal_of(bicep, properties["principalId"])
        assert properties["principalType"] == "'ServicePrincipal'"
        scope = body.get("scope")
        scope_type = bicep.resource_types()[scope] if scope else None
        scope_id = f"{scope}.id" if scope else "resourceGroup().id"
        assert body["name"] == f"guid({scope_id}, {principal_in_name}, {ref})", f"{where}: name"
        deployed.append((principal, key, scope_type))
    assert Counter(deployed) == EXPECTED_ASSIGNMENTS, (
        f"missing: {sorted(map(str, EXPECTED_ASSIGNMENTS - Counter(deployed)))}, "
        f"unexpected: {sorted(map(str, Counter(deployed) - EXPECTED_ASSIGNMENTS))}"
    )
    assert set(table) <= {key for _, key, _ in deployed}, "every defined role is used"


def test_role_modules_get_the_function_app_principal() -> None:
    """Every module whose assignments use a ``principalId`` parameter is given the app's identity."""
    main = _bicep(MAIN_BICEP)
    role_modules = {
        bicep.path
        for bicep, decl in _role_assignments()
        if bicep.body_object(decl, "properties")["principalId"] == "principalId"
    }
    assert role_modules
    for caller, decl, called in _module_calls():
        if called is not None and called.path in role_modules:
            assert caller is main
            assert caller.body_object(decl, "params")["principalId"] == "functionApp.outputs.principalId", decl.symbol


def _output_values(bicep: Bicep) -> dict[str, str]:
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^output\s+(\w+)\s+\w+\s*=\s*(.+)$", bicep.text, re.MULTILINE)
    }


def test_vm_identity_reaches_the_app_settings_and_no_control_plane_data() -> None:
    """The vmcluster backend attaches RAPIDS_HPO_VM_IDENTITY_ID to its VMs and hands them the client id;
    the identity exists, the app may attach it (and only it), and it holds no role on tables or blobs
    (issue 10, finding 7: compute can no longer rewrite every experiment)."""
    main = _bicep(MAIN_BICEP)
    module = next(d for d in main.decls if d.kind == "module" and d.target == "modules/vm-identity.bicep")
    settings = _main_app_settings()
    assert settings["RAPIDS_HPO_VM_IDENTITY_ID"] == f"{module.symbol}.outputs.id"
    assert settings["RAPIDS_HPO_VM_IDENTITY_CLIENT_ID"] == f"{module.symbol}.outputs.clientId"

    identity_file = _bicep(VM_IDENTITY)
    identities = [d for d in identity_file.decls if d.target == USER_ASSIGNED_IDENTITY and not d.existing]
    assert len(identities) == 1
    symbol = identities[0].symbol
    outputs = _output_values(identity_file)
    assert outputs["id"] == f"{symbol}.id"
    assert outputs["clientId"] == f"{symbol}.properties.clientId"
    assert outputs["name"] == f"{symbol}.name"

    # No data-plane role, nor anything to scope one to: the compute's only credential is its SAS. Its one
    # role is Monitoring Metrics Publisher on the Application Insights component (the driver's telemetry).
    passed = main.body_object(module, "params")
    assert set(passed) == {"location", "name", "tags", "appInsightsName"}
    assert passed["appInsightsName"] == "monitoring.outputs.appInsightsName"
    (publisher,) = [d for d in identity_file.decls if d.target == "Microsoft.Authorization/roleAssignments"]
    assert (
        "roleIds.monitoringMetricsPublisher" in identity_file.body_object(publisher, "properties")["roleDefinitionId"]
    )
    assert identity_file.resource_types()[identity_file.body(publisher)["scope"]] == "Microsoft.Insights/components"
    assert not [d for d in identity_file.decls if d.target.startswith("Microsoft.Storage/")]

    # Managed Identity Operator: scoped to this identity, deployed where the identity is.
    roles = next(d for d in main.decls if d.symbol == "controlPlaneRoles")
    assert main.body_object(roles, "params")["vmIdentityName"] == f"{module.symbol}.outputs.name"
    assert main.body(module).get("scope") == main.body(roles).get("scope"), "same resource group"
    control_plane = _bicep(ROLES_CONTROLPLANE)
    operators = [
        (bicep, d)
        for bicep, d in _role_assignments()
        if "roleIds.managedIdentityOperator" in bicep.body_object(d, "properties")["roleDefinitionId"]
    ]
    # Each operator role is scoped to exactly one identity the app attaches: the Dask VMs' and AzureML's clusters'.
    scoped = {}
    for bicep, decl in operators:
        scope_decl = next(d for d in bicep.decls if d.symbol == bicep.body(decl)["scope"])
        assert scope_decl.target == USER_ASSIGNED_IDENTITY and scope_decl.existing
        scoped[bicep.path.name] = bicep.body(scope_decl)["name"]
    assert scoped == {ROLES_CONTROLPLANE.name: "vmIdentityName", "roles-azureml.bicep": "computeIdentityName"}
    assert control_plane.path == ROLES_CONTROLPLANE

    vm_roles = [(key, scope) for who, key, scope in EXPECTED_ASSIGNMENTS if who == VM]
    assert vm_roles == [("monitoringMetricsPublisher", "Microsoft.Insights/components")], "no role but telemetry"


def test_storage_accounts_refuse_keys_and_anonymous_access() -> None:
    accounts = [
        (_bicep(path), d)
        for path in _bicep_files()
        for d in _bicep(path).decls
        if d.target == STORAGE_ACCOUNT and not d.existing
    ]
    assert len(accounts) == 2
    for bicep, decl in accounts:
        properties = bicep.body_object(decl, "properties")
        assert properties["minimumTlsVersion"] == "'TLS1_2'"
        assert properties["allowBlobPublicAccess"] == "false"
        assert properties["supportsHttpsTrafficOnly"] == "true"
        assert "allowSharedKeyAccess" in properties, f"{bicep.path.name}: say it explicitly"
    control_plane = next(bicep for bicep, _ in accounts if bicep.path.name == "storage.bicep")
    decl = next(d for d in control_plane.decls if d.target == STORAGE_ACCOUNT)
    assert control_plane.body_object(decl, "properties")["allowSharedKeyAccess"] == "false"


def test_registries_take_entra_identities_only_and_the_image_registry_reaches_the_app_settings() -> None:
    """Every registry: no admin user (its password would be a shared secret). The vmcluster image registry: no
    anonymous pull either; the app knows its login server and id (the AcrPull scope) and the image's digest
    comes from a parameter, so a redeployment keeps it (an app setting set by hand would be reset)."""
    registries = [
        (_bicep(path), d)
        for path in _bicep_files()
        for d in _bicep(path).decls
        if d.target == "Microsoft.ContainerRegistry/registries" and not d.existing
    ]
    assert {bicep.path.name for bicep, _ in registries} == {"azureml.bicep", "registry.bicep"}
    for bicep, decl in registries:
        assert bicep.body_object(decl, "properties")["adminUserEnabled"] == "false", bicep.path.name
    image = next((b, d) for b, d in registries if b.path.name == "registry.bicep")
    assert image[0].body_object(image[1], "properties")["anonymousPullEnabled"] == "false"
    settings = _main_app_settings()
    assert settings["RAPIDS_HPO_REGISTRY"] == "deployImageRegistry ? imageRegistry.outputs.loginServer : ''"
    assert settings["RAPIDS_HPO_REGISTRY_ID"] == "deployImageRegistry ? imageRegistry.outputs.id : ''"
    assert settings["RAPIDS_HPO_IMAGE"] == "vmImage"
    roles = next(d for d in _bicep(MAIN_BICEP).decls if d.symbol == "registryRoles")
    assert _bicep(MAIN_BICEP).body_object(roles, "params")["registryName"] == "imageRegistry.outputs.name"


def test_function_app_is_flex_consumption_with_identity_and_vnet() -> None:
    bicep = _bicep(INFRA / "modules" / "functionapp.bicep")
    decls = {d.target: d for d in bicep.decls}
    plan = decls["Microsoft.Web/serverfarms"]
    assert bicep.body_object(plan, "sku") == {"name": "'FC1'", "tier": "'FlexConsumption'"}
    site = decls["Microsoft.Web/sites"]
    assert bicep.body(site)["kind"] == "'functionapp,linux'"
    assert bicep.body_object(site, "identity") == {"type": "'SystemAssigned'"}
    properties = bicep.body_object(site, "properties")
    assert properties["httpsOnly"] == "true"
    assert properties["virtualNetworkSubnetId"] == "subnetId"
    # The Python the lock (requirements.txt) was resolved on and the worker tests run (tests/functions_host.py).
    locked = re.search(r"on Python (3\.\d+)", (ROOT / "requirements.txt").read_text(encoding="utf-8"))
    assert locked and bicep.params["pythonVersion"] == f"'{locked.group(1)}'"
    site_text = bicep.text[site.start : site.end]
    assert re.search(r"runtime:\s*\{\s*name:\s*'python'\s*version:\s*pythonVersion\s*\}", site_text)
    assert re.search(r"authentication:\s*\{\s*type:\s*'SystemAssignedIdentity'\s*\}", site_text)

    network = _bicep(INFRA / "modules" / "network.bicep")
    assert "serviceName: 'Microsoft.App/environments'" in network.text
    main = _bicep(MAIN_BICEP)
    function_app = next(d for d in main.decls if d.symbol == "functionApp")
    assert main.body_object(function_app, "params")["subnetId"] == "network.outputs.functionsSubnetId"


# ---------------------------------------------------------------------------------------------------
# Network exposure and secrets
# ---------------------------------------------------------------------------------------------------


def _nsg_rules() -> list[tuple[Bicep, dict[str, str]]]:
    rules = []
    for path in _bicep_files():
        bicep = _bicep(path)
        for match in re.finditer(r"\bsecurityRules:\s*\[", bicep.code):
            for item in bicep.items(match.end() - 1):
                start = bicep.text.index(item, match.start())
                rule = bicep.object_at(start)
                rules.append((bicep, bicep.object_at(bicep.text.index("properties", start))))
                assert rule.get("name"), f"{path.name}: unnamed rule"
    return rules


def _sources(bicep: Bicep, rule: dict[str, str]) -> list[str]:
    if "sourceAddressPrefix" in rule:
        return _resolve(bicep, rule["sourceAddressPrefix"])
    start = bicep.text.index(rule["sourceAddressPrefixes"])
    return [value for item in bicep.items(start) for value in _resolve(bicep, item)]


def _is_private_range(source: str) -> bool:
    try:
        return ipaddress.ip_network(source).is_private
    except ValueError:  # a service tag or wildcard
        return False


def test_no_nsg_rule_admits_the_internet() -> None:
    rules = _nsg_rules()
    assert len(rules) >= 3
    for bicep, rule in rules:
        for source in _sources(bicep, rule):
            assert source.lower() not in WIDE_SOURCES, f"{bicep.path.name}: rule with source {source!r}"


def test_dask_ports_open_only_to_private_ranges() -> None:
    dask_rules = 0
    for bicep, rule in _nsg_rules():
        ports = " ".join(rule.get(k, "") for k in ("destinationPortRange", "destinationPortRanges"))
        if rule["access"] != "'Allow'" or not re.search(r"878[67]|'\*'", ports):
            continue
        dask_rules += "8786" in ports
        for source in _sources(bicep, rule):
            assert _is_private_range(source), f"{bicep.path.name}: {source!r} reaches Dask"
    assert dask_rules == 1


FORBIDDEN = re.compile(
    r"AccountKey=|SharedAccessKey=|SharedAccessSignature=|DefaultEndpointsProtocol=|"
    r"listKeys\(|listSecrets\(|listCredentials?\(|\.primaryKey\b|@secure\(",
    re.IGNORECASE,
)


def test_no_keys_or_connection_strings_anywhere_in_infra() -> None:
    files = [p for p in INFRA.rglob("*") if p.is_file()] + [HOST_JSON, LOCAL_SETTINGS_EXAMPLE]
    assert len(files) >= 12
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not FORBIDDEN.search(line), f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}"
