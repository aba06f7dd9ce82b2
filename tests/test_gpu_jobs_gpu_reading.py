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
    frame = pd.DataFrame({"city": city, "score": score, "label": label})
    return pd.concat([frame, pd.DataFrame(unused, columns=[f"unused_{i}" for i in range(20)])], axis=1)


@pytest.fixture(params=["parquet", "csv"])
def table_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"wide.{request.param}"
    table = _table()
    table.to_parquet(path) if request.param == "parquet" else table.to_csv(path, index=False)
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
    gpu = load_dataset(str(table_file), "label", engine="gpu", features=["city", "score"], max_rows=2000, seed=4)
    cpu = load_dataset(str(table_file), "label", engine="cpu", features=["city", "score"], max_rows=2000, seed=4)
    assert isinstance(gpu.X, cudf.DataFrame)
    assert gpu.info.encoding.categorical_levels == cpu.info.encoding.categorical_levels
    assert "Bergen" not in gpu.info.encoding.categorical_levels["city"]
    assert gpu.info.missing_feature_values == cpu.info.missing_feature_values > 0
    host = gpu.X.to_pandas()
    np.testing.assert_array_equal(host["city"].to_numpy(), cpu.X["city"].to_numpy())
    scores = host["score"].to_numpy(dtype=np.float32, na_value=np.nan)
    np.testing.assert_allclose(scores, cpu.X["score"], equal_nan=True)
    np.testing.assert_array_equal(gpu.y.to_numpy(), cpu.y.to_numpy())
    matrix = get_engine("gpu").to_array(gpu.X, np.float32)  # nulls from the reader become NaN
    np.testing.assert_array_equal(np.isnan(get_engine("gpu").to_host(matrix)), cpu.X.isna().to_numpy())


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
