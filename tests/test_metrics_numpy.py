"""The NumPy metrics of ``gpu_jobs.metrics`` against scikit-learn's functions, the oracle: every metric of
every task equal on generated folds, ties and extreme probabilities included, degenerate folds too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_jobs.metrics import BY_SKLEARN, TASK_METRICS, score


def assert_same(task: str, labels: np.ndarray, prediction: np.ndarray) -> None:
    truth = labels.astype(np.float64 if task == "regression" else np.int64)
    ours = score(task, truth, prediction)  # type: ignore[arg-type]
    oracle = BY_SKLEARN[task](truth, np.asarray(prediction, dtype=np.float64))  # type: ignore[index]
    assert set(ours) == set(TASK_METRICS[task])  # type: ignore[index]
    for name in ours:
        assert ours[name] == pytest.approx(float(oracle[name]), rel=1e-9, abs=1e-12, nan_ok=True), name


# Scores drawn from a few values make ties (the ROC and precision-recall curves' hard cases); 0 and 1 reach the
# clipping of log loss.
TIED = st.sampled_from([0.0, 1e-17, 0.2, 0.5, 0.5000001, 0.8, 1.0 - 1e-17, 1.0])
ANY = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.one_of(TIED, ANY)), min_size=2, max_size=60))
def test_binary_metrics_equal_sklearns(rows: list[tuple[int, float]]) -> None:
    labels, positive = (np.array(column) for column in zip(*rows, strict=True))
    with warnings.catch_warnings():  # one class only: scikit-learn warns that ROC AUC is undefined (NaN)
        warnings.simplefilter("ignore")
        assert_same("binary", labels, positive)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(3, 6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.tuples(st.integers(0, k - 1), st.lists(st.one_of(TIED, ANY), min_size=k, max_size=k)),
                     min_size=k, max_size=50),
        )
    )
)  # fmt: skip
def test_multiclass_metrics_equal_sklearns(case: tuple[int, list[tuple[int, list[float]]]]) -> None:
    _classes, rows = case
    labels = np.array([label for label, _ in rows])
    raw = np.array([scores for _, scores in rows], dtype=np.float64) + 1e-9  # a row of zeros has no argmax
    proba = raw / raw.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():  # a class missing from the fold: scikit-learn's own answer
        warnings.simplefilter("ignore")
        assert_same("multiclass", labels, proba)


VALUE = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(VALUE, VALUE), min_size=1, max_size=60))
def test_regression_metrics_equal_sklearns(rows: list[tuple[float, float]]) -> None:
    values, predicted = (np.array(column) for column in zip(*rows, strict=True))
    if len(values) < 2:  # R2 is undefined on one row: scikit-learn says NaN, and so do we
        assert np.isnan(score("regression", values, predicted)["r2"])
        return
    assert_same("regression", values, predicted)


def test_a_constant_target_keeps_sklearns_r2() -> None:
    values = np.full(5, 3.0)
    assert score("regression", values, values)["r2"] == 1.0
    assert score("regression", values, values + 1)["r2"] == 0.0


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_prediction_that_is_not_finite_is_refused_as_scikit_learn_refuses_it(task: str) -> None:
    labels = np.array([0, 1, 2, 1, 0, 2])
    prediction = np.full((6, 3), 1 / 3) if task == "multiclass" else np.full(6, 0.5)
    prediction[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score(task, labels if task != "binary" else labels % 2, prediction)  # type: ignore[arg-type]
