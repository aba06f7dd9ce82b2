"""Category levels and codes from the frame library's own calls (issue 26), checked against the previous
implementation (Python ``str`` of each value, sorted, then ``Index.get_indexer``), kept below as the oracle.

What runs here: the shared encoder (:func:`gpu_jobs.encoding.learn_levels`, :func:`category_codes`) with
pandas as its frame library, on the bundled tables and on Hypothesis-made string columns. The same functions
with cuDF run only on a GPU host, in tests/test_gpu_jobs_gpu_reading.py (skipped where no GPU is visible).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_jobs.builtin import DIGITS_URI, FLIGHTS_TARGET, FLIGHTS_URI, builtin_table
from gpu_jobs.data import prepare_frame, sample_positions
from gpu_jobs.encoding import MISSING_CATEGORY_CODE, category_codes, category_levels, column_kind, learn_levels


def previous_levels(column: pd.Series) -> tuple[str, ...]:
    """The levels as gpu_jobs.encoding made them before issue 26 (the oracle)."""
    present = column.dropna()
    if ptext(present):
        return tuple(sorted(set(present.unique())))
    return tuple(sorted(set(present.map(str, na_action="ignore").unique())))


def previous_codes(column: pd.Series, levels: tuple[str, ...]) -> np.ndarray:
    """The codes as gpu_jobs.encoding made them before issue 26 (the oracle)."""
    text = column if ptext(column) else column.map(str, na_action="ignore")
    codes: np.ndarray = pd.Index(levels, dtype=object).get_indexer(text.astype(object)).astype(np.float32)
    return codes


def ptext(column: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(column.dtype) and not pd.api.types.is_object_dtype(column.dtype)


def assert_as_before(learned_on: pd.Series, encoded: pd.Series | None = None) -> tuple[str, ...]:
    """New levels equal the oracle's, and so do the codes of ``encoded`` (default: the learning column)."""
    levels = learn_levels(learned_on)
    assert levels == previous_levels(learned_on)
    target = learned_on if encoded is None else encoded
    codes = category_codes(target, levels, pd)
    assert codes.dtype == np.float32 and codes.index.equals(target.index)
    np.testing.assert_array_equal(codes.to_numpy(), previous_codes(target, levels))
    return levels


@pytest.mark.parametrize("uri", [FLIGHTS_URI, DIGITS_URI])
def test_the_bundled_tables_encode_as_before(uri: str) -> None:
    """Every categorical column of the bundled tables (flights: carrier, origin, dest, tailnum...) gets the
    levels and codes it got before, learned after dropping the rows without a target, as the loader does."""
    target = FLIGHTS_TARGET if uri == FLIGHTS_URI else "digit"
    table = builtin_table(uri, target)
    table = table.loc[table[target].notna()]
    categorical = [name for name in table.columns if name != target and column_kind(table[name]) == "categorical"]
    if uri == FLIGHTS_URI:
        assert len(categorical) >= 3, categorical
    for name in categorical:
        assert_as_before(table[name])
    _, _, info = prepare_frame(table, target, source=uri)
    assert dict(info.encoding.categorical_levels) == {name: previous_levels(table[name]) for name in categorical}


TEXT = st.text(max_size=6)  # any code point but surrogates, "" included
VALUES = st.one_of(st.none(), TEXT, st.sampled_from(["", "a", "A", "é", "e\u0301", "Z", "日本", "🚀", "\x00"]))


@settings(max_examples=150, deadline=None)
@given(learned=st.lists(VALUES, max_size=40), seen_later=st.lists(VALUES, max_size=40))
def test_string_columns_encode_as_before_with_nulls_empty_text_and_unseen_values(
    learned: list[str | None], seen_later: list[str | None]
) -> None:
    """Levels learned on one column; a later column (prediction time) holds unseen values and nulls: the
    codes are the oracle's, an unseen value and a null get MISSING_CATEGORY_CODE, the levels are in
    code point order = UTF-8 byte order, on object and on pandas' string dtypes."""
    for dtype in (object, "str"):
        train, later = pd.Series(learned, dtype=dtype), pd.Series(seen_later, dtype=dtype)
        levels = assert_as_before(train, later)
        assert list(levels) == sorted(levels, key=lambda level: level.encode("utf-8"))
        codes = category_codes(later, levels, pd).to_numpy()
        for value, code in zip(seen_later, codes, strict=True):
            expected = levels.index(value) if value is not None and value in levels else MISSING_CATEGORY_CODE
            assert code == expected


def test_other_column_types_keep_the_text_saved_models_have() -> None:
    """Categoricals (of text and of numbers) and object columns of Python values keep their old text
    ("1" for the category 1, "b'x'" for bytes, the date's str), so levels saved with models still apply."""
    columns = [
        pd.Series(pd.Categorical(["b", None, "a", "b"])),
        pd.Series(pd.Categorical([3, None, 1, 3])),
        pd.Series(pd.Categorical([1.5, 2.0, None])),
        pd.Series([1, "a", 2.5, b"x", None, True, dt.date(2020, 1, 2), Decimal("1.10")], dtype=object),
        pd.Series([None, None], dtype=object),
        pd.Series([], dtype=object),
    ]
    for column in columns:
        assert category_levels(column) == previous_levels(column)
        assert_as_before(column)
    assert learn_levels(columns[1]) == ("1", "3")


def test_unseen_levels_of_another_type_are_missing() -> None:
    levels = learn_levels(pd.Series(["x", "y"]))
    codes = category_codes(pd.Series(pd.Categorical([1, 2, None])), levels, pd)
    assert codes.tolist() == [MISSING_CATEGORY_CODE] * 3


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 500), fraction=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1))
def test_sample_positions_are_the_rows_pandas_sample_draws(rows: int, fraction: float, seed: int) -> None:
    """Both engines sample with these positions; the CPU engine drew with DataFrame.sample before."""
    size = max(1, int(rows * fraction))
    frame = pd.DataFrame({"row": np.arange(rows)})
    expected: Any = frame.sample(n=size, random_state=seed)["row"].to_numpy()
    np.testing.assert_array_equal(sample_positions(rows, size, seed), expected)


def test_rows_keep_their_order_and_index_even_when_the_index_repeats() -> None:
    """Prediction frames come from users: codes go to their own rows whatever the index."""
    from gpu_jobs.encoding import encode_features, plan_encoding

    frame = pd.DataFrame({"city": ["b", "a", None, "b"], "x": [1.0, 2.0, 3.0, 4.0]}, index=[7, 7, 3, 0])
    encoded = encode_features(frame, plan_encoding(frame))
    assert encoded.index.tolist() == [7, 7, 3, 0]
    assert encoded["city"].tolist() == [1.0, 0.0, MISSING_CATEGORY_CODE, 1.0]
    assert encoded["x"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_the_parquet_columns_pandas_reads_as_nullable_types_are_found(tmp_path) -> None:
    """What the cuDF reader keeps nullable (runs here: pyarrow reads the footer; the cuDF side only on a GPU)."""
    from gpu_jobs.file_readers import _pandas_nullable_columns, open_filesystem

    frame = pd.DataFrame(
        {
            "whole": pd.array([1, None], dtype="Int64"),
            "small": pd.array([1, 2], dtype="UInt8"),
            "flag": pd.array([True, None], dtype="boolean"),
            "plain_flag": [True, None],
            "number": [1.0, None],
        }
    )
    frame.to_parquet(tmp_path / "typed.parquet")
    filesystem, path = open_filesystem(str(tmp_path / "typed.parquet"))
    assert _pandas_nullable_columns(filesystem, path) == {"whole", "small", "flag"}
    bare = tmp_path / "bare.parquet"
    pd.DataFrame({"whole": [1, 2]}).to_parquet(bare, index=False)
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(bare).replace_schema_metadata(None), bare)
    assert _pandas_nullable_columns(*open_filesystem(str(bare))) == set()
