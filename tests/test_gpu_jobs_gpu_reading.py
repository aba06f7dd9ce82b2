"""The GPU engine's reading and encoding (issue 26): cuDF's own readers with column projection, and the shared
category encoder run on cuDF, give the levels, codes and features the pandas path gives. Marked ``gpu``.

What runs where: on a host with an NVIDIA GPU and RAPIDS, everything below. Here (no GPU) the module is
skipped whole, as tests/test_gpu_jobs_gpu.py is; the same encoder with pandas runs in the default run
(tests/test_gpu_jobs_encoding.py, and both Dask and single-process paths in tests/test_gpu_jobs_distributed.py).
On a GPU host a missing or broken cuDF fails this module, it is never skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_jobs.engine import probe_gpus

pytestmark = pytest.mark.gpu

if probe_gpus().count == 0:
    pytest.skip(f"no NVIDIA GPU visible ({probe_gpus().detail})", allow_module_level=True)

import cudf  # noqa: E402

from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI, clear_dataset_cache, load_dataset, read_selected  # noqa: E402
from gpu_jobs.encoding import category_codes, learn_levels  # noqa: E402
from gpu_jobs.engine import get_engine  # noqa: E402
from gpu_jobs.errors import UserError  # noqa: E402

CITIES = ["Oslo", "Lima", "", "Ålesund", "östra", "Zürich", "e\u0301", "日本", "🚀", None]


def _table(rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    score = rng.normal(size=rows)
    score[::17] = np.nan
    label = np.where(score > 0, "yes", "no").astype(object)
    city = rng.choice(np.array(CITIES, dtype=object), rows)
    city[:7], label[:7] = "Bergen", None  # only in rows without a target: never a level
    unused = rng.normal(size=(rows, 20))
    late = (score > 0.5).astype(float)
    late[::13] = np.nan  # whole numbers with gaps: pandas reads float64, cuDF int64 with nulls
    flag = np.where(score > 1, True, False).astype(object)
    flag[::11] = None  # booleans with gaps: pandas reads object
    day = np.array([f"2026-01-{d:02d}" for d in rng.integers(1, 29, rows)], dtype=object)  # text, never parsed
    frame = pd.DataFrame({"city": city, "score": score, "label": label, "late": late, "flag": flag, "day": day})
    frame["late"] = frame["late"].astype("Int64")
    return pd.concat([frame, pd.DataFrame(unused, columns=[f"unused_{i}" for i in range(20)])], axis=1)


@pytest.fixture(params=["parquet", "bare-parquet", "csv"])
def table_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The table as pandas writes it (Parquet with pandas metadata: ``late`` is Int64), as other writers do
    (Parquet without it: pandas reads ``late`` as float64) and as CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _table()
    path = tmp_path / f"{request.param}.{'csv' if request.param == 'csv' else 'parquet'}"
    if request.param == "csv":
        table.to_csv(path, index=False)
    elif request.param == "parquet":
        table.to_parquet(path)
    else:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False).replace_schema_metadata(None), path)
    return path


def test_cudf_reads_only_the_asked_columns_and_the_values_match_pandas(table_file: Path) -> None:
    fmt = table_file.suffix.lstrip(".")
    on_device = read_selected(str(table_file), "label", fmt, ["city", "score"], frame=cudf)
    on_host = read_selected(str(table_file), "label", fmt, ["city", "score"])
    assert isinstance(on_device, cudf.DataFrame)
    assert list(on_device.columns) == ["city", "score", "label"] == list(on_host.columns)
    back = on_device.to_pandas()
    for name in ("city", "label"):
        assert back[name].isna().tolist() == on_host[name].isna().tolist()
        assert back[name].dropna().tolist() == on_host[name].dropna().tolist()
    np.testing.assert_allclose(back["score"].astype(float), on_host["score"].astype(float), equal_nan=True)


def test_a_feature_the_file_lacks_is_named_on_the_gpu_too(table_file: Path) -> None:
    fmt = table_file.suffix.lstrip(".")
    with pytest.raises(UserError, match="'colours' not in"):
        read_selected(str(table_file), "label", fmt, ["city", "colours"], frame=cudf)


def test_gpu_and_cpu_datasets_have_identical_levels_codes_and_features(table_file: Path) -> None:
    clear_dataset_cache()
    chosen = ["city", "score", "day"]
    gpu = load_dataset(str(table_file), "label", engine="gpu", features=chosen, max_rows=2000, seed=4)
    cpu = load_dataset(str(table_file), "label", engine="cpu", features=chosen, max_rows=2000, seed=4)
    assert isinstance(gpu.X, cudf.DataFrame)
    assert gpu.info.encoding.categorical_levels == cpu.info.encoding.categorical_levels
    assert "Bergen" not in gpu.info.encoding.categorical_levels["city"]
    assert gpu.info.missing_feature_values == cpu.info.missing_feature_values > 0
    host = gpu.X.to_pandas()
    for name in ("city", "day"):
        np.testing.assert_array_equal(host[name].to_numpy(), cpu.X[name].to_numpy())
    scores = host["score"].to_numpy(dtype=np.float32, na_value=np.nan)
    np.testing.assert_allclose(scores, cpu.X["score"], equal_nan=True)
    np.testing.assert_array_equal(gpu.y.to_numpy(), cpu.y.to_numpy())
    matrix = get_engine("gpu").to_array(gpu.X, np.float32)  # nulls from the reader become NaN
    np.testing.assert_array_equal(np.isnan(get_engine("gpu").to_host(matrix)), cpu.X.isna().to_numpy())


def test_gaps_in_whole_numbers_and_booleans_give_what_pandas_gives(table_file: Path) -> None:
    """gpu_jobs.file_readers.as_pandas_types: the target's classes are what pandas makes of them on both
    engines (0 and 1 where the file's pandas metadata says Int64, else 0.0 and 1.0), the boolean feature
    with gaps is categorical ("False", "True") on both, with the same codes."""
    clear_dataset_cache()
    gpu = load_dataset(str(table_file), "late", engine="gpu", features=["flag", "city"])
    cpu = load_dataset(str(table_file), "late", engine="cpu", features=["flag", "city"])
    assert gpu.info.target_encoding == cpu.info.target_encoding
    assert gpu.info.rows_dropped_missing_target == cpu.info.rows_dropped_missing_target > 0
    assert gpu.info.encoding == cpu.info.encoding
    pd.testing.assert_frame_equal(gpu.X.to_pandas(), cpu.X, check_dtype=False)
    np.testing.assert_array_equal(gpu.y.to_numpy(), cpu.y.to_numpy())


def test_flights_on_both_engines_encode_alike() -> None:
    clear_dataset_cache()
    gpu = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, engine="gpu", max_rows=5000, seed=1)
    cpu = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, engine="cpu", max_rows=5000, seed=1)
    assert gpu.info.encoding.categorical_levels == cpu.info.encoding.categorical_levels
    pd.testing.assert_frame_equal(gpu.X.to_pandas(), cpu.X, check_dtype=False)


VALUES = st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["", "é", "e\u0301", "Z", "a", "🚀"]))


@settings(max_examples=40, deadline=None)
@given(learned=st.lists(VALUES, max_size=30), later=st.lists(VALUES, max_size=30))
def test_the_shared_encoder_gives_cudf_the_levels_and_codes_pandas_gets(
    learned: list[str | None], later: list[str | None]
) -> None:
    host_train, host_later = pd.Series(learned, dtype=object), pd.Series(later, dtype=object)
    device_train, device_later = cudf.Series(learned, dtype="str"), cudf.Series(later, dtype="str")
    levels = learn_levels(host_train)
    assert learn_levels(device_train) == levels
    expected = category_codes(host_later, levels, pd).to_numpy()
    np.testing.assert_array_equal(category_codes(device_later, levels, cudf).to_numpy(), expected)
