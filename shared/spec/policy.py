"""What a deployment accepts beyond the spec's own rules: hosted mode.

Hosted mode is on in a Function App (Azure sets ``WEBSITE_SITE_NAME`` on every one) or with
``RAPIDS_HPO_HOSTED=1`` (``rapids-hpo serve`` behind a proxy). There a request must not make the control
plane run work on its own host or read what the request names, so:

* ``compute.backend: local`` is refused (it would start the HPO driver inside the Function host);
* ``dataset.uri`` must be Azure storage (``abfs(s)://``, ``az://``, ``https://`` on
  ``*.blob.core.windows.net`` / ``*.dfs.core.windows.net``), AzureML data (``azureml://...``,
  ``azureml:<name>:<version>``), a bundled ``builtin://`` table, or on a host of ``RAPIDS_HPO_DATA_HOSTS``
  (comma-separated; an entry starting with ``.`` matches its subdomains). Local paths, ``file://``,
  ``http://``, IP-literal, loopback and link-local hosts are refused;
* each compute section's own hosted rules apply (``ComputeSection.hosted_problems``: a VM cluster needs
  ``security: true``; AzureML stays in the deployment's workspace, model namespace and images,
  :mod:`shared.backends.azureml.scope`).

Outside hosted mode (a user's own machine) local paths and every scheme of :data:`URI_SCHEMES` stay allowed,
but never a *relative* path from a request or a queue message: it would resolve against the server's working
folder, which the sender cannot know (the CLI resolves one against its spec file's folder before sending).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from shared.backends import backends_where
from shared.config import AzureMLSettings, AzureSettings, Settings
from shared.spec.errors import SpecError, format_loc

AZURE_STORAGE_SUFFIXES: tuple[str, ...] = (".blob.core.windows.net", ".dfs.core.windows.net")
"""Hosts of Azure Storage (public cloud); other clouds' suffixes go on the allowlist."""
AZUREML_ASSET = re.compile(r"^azureml:[A-Za-z0-9][A-Za-z0-9_.-]{0,254}:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A registered AzureML data asset, ``azureml:<name>:<version>``."""
_HOSTED_SCHEMES = frozenset({"abfs", "abfss", "az", "https", "azureml", "builtin"})


def is_relative_path(uri: str) -> bool:
    """``uri`` is a local path (no ``scheme://``, no AzureML asset) that is not absolute."""
    if AZUREML_ASSET.match(uri) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return False
    return not PurePosixPath(uri).is_absolute() and not PureWindowsPath(uri).is_absolute()


def relative_path_problem(uri: str) -> str:
    return (
        f"{uri!r} is a relative path, which has no meaning in a request (relative to what?): send an absolute "
        "path or a URL; `rapids-hpo submit` and `run` resolve a relative path against the spec file's folder"
    )


@dataclass(frozen=True)
class SpecPolicy:
    """The deployment's rules for specs that arrive over the API or a queue; ``SpecPolicy()`` (not hosted)
    adds one: a relative local ``dataset.uri`` has no meaning there."""

    hosted: bool = False
    data_hosts: tuple[str, ...] = ()
    """Extra data hosts allowed in hosted mode (``RAPIDS_HPO_DATA_HOSTS``), lower-case."""
    azure: AzureSettings = field(default_factory=AzureSettings)
    azureml: AzureMLSettings = field(default_factory=AzureMLSettings)
    """What the sections' hosted rules read of the deployment (``ComputeSection.hosted_problems``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SpecPolicy:
        return cls(
            hosted=settings.hosted, data_hosts=settings.data_hosts, azure=settings.azure, azureml=settings.azureml
        )

    def check(self, spec: object) -> None:
        """Raise :class:`SpecError` naming ``compute.backend`` / ``dataset.uri`` when hosted mode refuses, or
        ``dataset.uri`` when it is a relative path."""
        uri: str = spec.dataset.uri  # type: ignore[attr-defined]
        if not self.hosted:
            if is_relative_path(uri):
                raise SpecError([{"loc": "dataset.uri", "msg": relative_path_problem(uri)}])
            return
        errors: list[dict[str, str]] = []
        compute = spec.compute  # type: ignore[attr-defined]
        if compute.runs_on_control_plane:
            others = " or ".join(backends_where(lambda section: not section.runs_on_control_plane))
            errors.append(
                {
                    "loc": "compute.backend",
                    "msg": f"the {compute.backend} backend runs trials on the control plane's own host, which a "
                    f"hosted deployment never does: use {others}",
                }
            )
        errors += [{"loc": format_loc(loc), "msg": msg} for loc, msg in compute.hosted_problems(spec, self)]
        problem = self.uri_problem(uri)
        if problem:
            errors.append({"loc": "dataset.uri", "msg": problem})
        if errors:
            raise SpecError(errors)

    def uri_problem(self, uri: str) -> str | None:
        """Why hosted mode refuses ``uri``, or ``None``."""
        if AZUREML_ASSET.match(uri):
            return None
        if "://" not in uri:
            return (
                f"{uri!r} is a local path: a hosted control plane never reads its own disk; use Azure storage "
                "(abfss://, az://, https://<account>.blob.core.windows.net/...) or AzureML data "
                "(azureml://..., azureml:<name>:<version>)"
            )
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme not in _HOSTED_SCHEMES:
            return (
                f"{scheme}:// is not allowed in a hosted deployment: use abfs(s)://, az://, https:// on Azure "
                "storage or azureml://"
            )
        if scheme in {"azureml", "builtin"}:
            return None
        adls = scheme in {"abfs", "abfss", "az"}  # `container@account.dfs.core.windows.net/path`
        if parts.username is not None and not adls:  # a password or SAS never passes the spec itself
            return "credentials in the URI are not allowed: the compute's own identity reads the data"
        if adls and "@" not in parts.netloc:
            return None  # `container/path`: the deployment's own storage account
        return self.host_problem((parts.hostname or "").lower())

    def host_problem(self, host: str) -> str | None:
        if not host:
            return "the URI names no host"
        literal = _ip_literal(host)
        if literal is not None:
            kind = "link-local (the instance metadata service)" if literal.is_link_local else "an IP literal"
            if literal.is_loopback:
                kind = "loopback"
            return f"host {host} is {kind}: name an Azure storage account or an allowed host"
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            return f"host {host} is local to the control plane"
        if host.endswith(AZURE_STORAGE_SUFFIXES) or self._allowed(host):
            return None
        allowed = ", ".join(f"*{s}" for s in AZURE_STORAGE_SUFFIXES) + "".join(f", {h}" for h in self.data_hosts)
        return f"host {host} is not Azure storage nor an allowed data host (allowed: {allowed}; RAPIDS_HPO_DATA_HOSTS)"

    def _allowed(self, host: str) -> bool:
        return any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.data_hosts)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells; the numeric forms resolvers also accept (``2852039166``,
    ``0xa9.0xfe.0xa9.0xfe``) count as IP literals too (returned as ``0.0.0.0``)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?", host):
        return ipaddress.IPv4Address(0)
    return None
