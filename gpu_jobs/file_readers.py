"""Open a table's storage (:func:`open_filesystem`) and read one Parquet or CSV file of it into the engine's
frame library, only the columns asked for.

pandas (the CPU engine, and every Dask partition) reads through pyarrow: Parquet decodes only the asked
columns' chunks, CSV converts only their fields. cuDF (the GPU engine) reads with its own readers
(``cudf.read_parquet`` / ``cudf.read_csv``, decoding on the device) with the same projection and through
the same fsspec filesystem: a local file by its path, so cuDF reads it natively; a remote Parquet file
through ``filesystem=``, a remote CSV through a handle of that filesystem (``cudf.read_csv`` takes no
filesystem). Either reader raises :class:`ColumnsAbsent` when the file lacks an asked column, so the
caller can read it whole once and name what is missing, and :class:`UserError` for a file it cannot
parse, naming the kind of error only (a parser's message may quote the file's bytes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from gpu_jobs.errors import UserError

_ABSENT_COLUMN_ERRORS = ("No match for FieldRef", "Usecols do not match columns")
"""How pyarrow (Parquet) and pandas (CSV) say a projected column is not in the file."""


class ColumnsAbsent(Exception):
    """A projected read named a column the file lacks (:func:`gpu_jobs.data.read_selected` then reports which)."""


def read_file(filesystem: Any, path: str, fmt: str, columns: Sequence[str] | None, frame: ModuleType = pd) -> Any:
    """The file at ``path`` on ``filesystem`` as a DataFrame of ``frame`` (pandas or cuDF): every column,
    or only ``columns`` (in the file's order)."""
    wanted = None if columns is None else list(columns)
    if frame is pd:
        return _read_with_pandas(filesystem, path, fmt, wanted)
    return _read_with_cudf(frame, filesystem, path, fmt, wanted)


def _read_with_pandas(filesystem: Any, path: str, fmt: str, wanted: list[str] | None) -> pd.DataFrame:
    import pyarrow as pa

    try:
        if fmt == "parquet":
            with filesystem.open(path, "rb") as handle:
                return pd.read_parquet(handle, columns=wanted)
        with filesystem.open(path, "rb", compression="infer") as handle:
            return pd.read_csv(handle, low_memory=False, usecols=wanted)
    except (ValueError, pa.ArrowException) as exc:  # the parsers' errors (and pyarrow's) are ValueErrors
        if wanted is not None and str(exc).startswith(_ABSENT_COLUMN_ERRORS):
            raise ColumnsAbsent(path) from None
        if not isinstance(exc, pa.ArrowException | pd.errors.ParserError | pd.errors.EmptyDataError | UnicodeError):
            raise
        raise _unreadable(path, fmt, exc) from None


def _read_with_cudf(cudf: ModuleType, filesystem: Any, path: str, fmt: str, wanted: list[str] | None) -> Any:
    """cuDF's readers. cuDF's Parquet reader skips an asked column the file lacks (``ignore_missing_columns``)
    and its CSV reader fails on one with a message of its own: the columns read are checked instead, and a
    projected read that fails at all is reported as :class:`ColumnsAbsent`, so the whole read that follows
    names the missing column, or raises the file's real error."""
    local = is_local(filesystem)
    try:
        if fmt == "parquet":
            read = cudf.read_parquet(path, columns=wanted, filesystem=None if local else filesystem)
        elif local:
            read = cudf.read_csv(path, usecols=wanted, compression="infer")
        else:
            with filesystem.open(path, "rb", compression="infer") as handle:
                read = cudf.read_csv(handle, usecols=wanted)
    except (ValueError, RuntimeError) as exc:  # libcudf's errors reach Python as these; file errors are OSErrors
        if wanted is not None:
            raise ColumnsAbsent(path) from None
        raise _unreadable(path, fmt, exc) from None
    if wanted is not None and not set(wanted) <= {str(name) for name in read.columns}:
        raise ColumnsAbsent(path)
    nullable = _pandas_nullable_columns(filesystem, path) if fmt == "parquet" else set()
    return as_pandas_types(read, keep=nullable)


def as_pandas_types(table: Any, keep: set[str]) -> Any:
    """A cuDF table with the column types pandas gives the same file: cuDF keeps missing whole numbers and
    booleans as nulls, pandas makes such a column float64 (NaN) and object (``True``/``False``/None),
    unless the file's pandas metadata asks for its nullable types (the ``keep`` columns: ``Int64``,
    ``boolean``..., which cuDF's types match). So a target of whole numbers with gaps has the same classes
    on both engines, and a boolean feature with gaps is categorical on both (levels ``"False"``, ``"True"``)."""
    gaps = table.isna().any()
    for name in table.columns:
        column = table[name]
        if name in keep or not bool(gaps[name]):
            continue
        if column.dtype.kind in "iu":
            table[name] = column.astype(np.float64)
        elif column.dtype.kind == "b":
            text = column.astype(np.int8).astype(str).replace({"0": "False", "1": "True"})
            table[name] = text.where(column.notna())
    return table


def _pandas_nullable_columns(filesystem: Any, path: str) -> set[str]:
    """The columns a Parquet file's pandas metadata types as pandas' nullable integers or booleans (read
    from its footer only)."""
    import pyarrow.parquet as pq

    with filesystem.open(path, "rb") as handle:
        metadata = pq.read_schema(handle).pandas_metadata or {}
    return {
        str(column["name"])
        for column in metadata.get("columns", [])
        if str(column.get("numpy_type", "")).startswith(("Int", "UInt", "boolean"))
    }


def is_local(filesystem: Any) -> bool:
    """Whether an fsspec filesystem is this machine's own (its paths can go to a reader as they are)."""
    protocol = filesystem.protocol
    return bool({"file", "local"} & set((protocol,) if isinstance(protocol, str) else protocol))


def _unreadable(path: str, fmt: str, exc: Exception) -> UserError:
    return UserError(f"cannot read {path} as {fmt} ({type(exc).__name__}): is it a {fmt} file?")


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn "not there", "not allowed" and "cannot sign in" from any filesystem into a :class:`UserError`."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
    except ImportError:  # adlfs (and the Azure SDK) not installed: nothing Azure can fail
        ClientAuthenticationError = ()  # type: ignore[assignment,misc]  # noqa: N806
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"data not found: {uri}") from None
    except PermissionError as exc:
        raise UserError(f"no permission to read {uri}: {exc}") from None
    except ClientAuthenticationError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(f"cannot sign in to read {uri} (set AZURE_STORAGE_* credentials): {reason}") from None


def open_filesystem(uri: str) -> tuple[Any, str]:
    """An fsspec filesystem and the path inside it for a local path or URL."""
    import fsspec

    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in {"https", "http"} and _is_azure_storage_host(parts.hostname or ""):
        account = (parts.hostname or "").split(".", 1)[0]
        options: dict[str, Any] = {"account_name": account}
        if parts.query and "sig" in parse_qs(parts.query):
            options["sas_token"] = parts.query
        return fsspec.filesystem("abfs", **options), parts.path.lstrip("/")
    if scheme in {"", "file"}:
        return fsspec.filesystem("file"), str(Path(parts.path if scheme == "file" else uri).resolve())
    try:
        filesystem, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot open {uri}: {exc}") from None
    return filesystem, path


def _is_azure_storage_host(host: str) -> bool:
    return host.endswith((".blob.core.windows.net", ".dfs.core.windows.net"))
