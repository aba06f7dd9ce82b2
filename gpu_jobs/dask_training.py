"""One HPO trial on a Dask cluster (the seed's multi-node multi-GPU example), with the same result shape.

The engine is what the *workers* have (``resolve_engine`` runs as a task on every worker): GPU workers get
cuDF partitions, ``cuml.dask``'s forest and ``xgboost.dask`` on ``cuda``; CPU workers pandas partitions,
``xgboost.dask`` on ``cpu`` and per-worker scikit-learn forests. The calling process only lists the data,
loads the encoded table onto the workers (:mod:`gpu_jobs.dask_table`), and submits one task per fold and
one for the refit (:mod:`gpu_jobs.dask_trainers`); it needs neither a GPU nor RAPIDS. Scores are computed
here from the gathered validation labels and predictions, by :func:`gpu_jobs.metrics.score` (the code a
single-process trial scores with).

Numbers differ from a single-process trial's by design: folds come from a seeded per-partition fold column
(not ``StratifiedKFold``), and each worker's forest sees only that worker's rows (as ``cuml.dask`` does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_jobs.cross_validation import (
    DISTRIBUTED_FOLDS,
    FoldCallback,
    check_request,
    cross_validation,
    require_fit,
    rerun_arguments,
)
from gpu_jobs.dask_placement import cluster_workers
from gpu_jobs.dask_table import load_distributed_table
from gpu_jobs.dask_trainers import DistributedJob, FoldResult, prepare_table, refit, run_fold, tree_shares
from gpu_jobs.engine import get_engine, resolve_engine
from gpu_jobs.errors import UserError
from gpu_jobs.model_files import save_outputs


def run_distributed(
    *,
    scheduler: str,
    data: str,
    target: str,
    model: str,
    params: dict[str, float],
    cv_folds: int = 5,
    seed: int = 0,
    engine: str = "auto",
    output: str | Path | None = None,
    data_format: str | None = None,
    max_rows: int | None = None,
    primary_metric: str = "accuracy",
    n_jobs: int | None = None,
    on_fold: FoldCallback | None = None,
    task: str = "auto",
    features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Cross-validate ``model`` on the Dask cluster at ``scheduler``; same arguments and result as
    :func:`gpu_jobs.train.run_trial`, plus ``n_workers`` in the result. A random forest needs
    ``n_estimators`` >= the number of workers (:class:`UserError` otherwise)."""
    import dask
    from distributed import Client

    started = time.perf_counter()
    request = check_request(model=model, params=params, cv_folds=cv_folds, primary_metric=primary_metric, engine=engine)
    if request.params.get("early_stopping_rounds"):
        raise UserError("early_stopping_rounds is not supported by a --distributed trial yet: leave it 0 there")
    try:
        client = Client(scheduler, timeout=dask.config.get("distributed.comm.timeouts.connect"))
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    with client:
        workers = cluster_workers(client)
        if not workers:
            raise UserError(f"the Dask cluster at {scheduler} has no workers")
        if model == "random_forest":
            tree_shares(int(request.params["n_estimators"]), len(workers))
        engine_name = resolve_cluster_engine(client, engine, workers)
        table = load_distributed_table(
            client,
            data,
            target,
            data_format=data_format,
            max_rows=max_rows,
            seed=seed,
            cv_folds=cv_folds,
            n_workers=len(workers),
            task=task,
            features=features,
        )
        kind = table.target_encoding
        require_fit(request, kind, table.minority_class_rows)
        token = uuid.uuid4().hex
        job = DistributedJob(
            model=model,
            engine=engine_name,
            params=request.params,
            feature_columns=tuple(table.feature_columns),
            seed=seed,
            n_jobs=n_jobs,
            workers=workers,
            table=f"rapids-hpo-placed-{token}",
            task=kind.task,
            n_classes=kind.n_classes,
        )
        source = f"rapids-hpo-encoded-{token}"
        client.publish_dataset(table.frame, name=source)
        try:
            fill = model == "random_forest" and table.missing_feature_values > 0
            client.submit(prepare_table, job, source, fill_missing=fill, pure=False).result()
            client.unpublish_dataset(source)
            host_scores = get_engine("cpu")  # validation labels and predictions come back to this process
            with cross_validation(
                request, engine_name=engine_name, seed=seed, on_fold=on_fold, task=kind.task
            ) as folds:
                for fold in range(cv_folds):
                    result: FoldResult = client.submit(run_fold, job, fold, pure=False).result()
                    folds.record(
                        host_scores.score(kind.task, result.labels, result.prediction),
                        fit_seconds=result.fit_seconds,
                        predict_seconds=result.predict_seconds,
                    )
                metrics = folds.metrics(
                    engine_name=engine_name,
                    rows=table.rows,
                    rows_dropped=table.rows_dropped_missing_target,
                    n_features=len(table.feature_columns),
                    folds=DISTRIBUTED_FOLDS,
                )
                metrics.update(n_jobs=n_jobs, n_workers=len(workers), task_reason=kind.reason)
                if output is not None:
                    estimator, metrics["refit_seconds"] = client.submit(refit, job, pure=False).result()
                    metrics["total_seconds"] = time.perf_counter() - started
                    trial = rerun_arguments(
                        request,
                        data=data,
                        target=target,
                        seed=seed,
                        max_rows=max_rows,
                        task=kind.task,
                        features=features,
                    )
                    save_outputs(
                        Path(output),
                        model=model,
                        estimator=estimator,
                        metrics=metrics,
                        trial={**trial, "engine": engine_name, "scheduler": scheduler},
                        encoding=table.encoding,
                        target=kind,
                    )
                else:
                    metrics["total_seconds"] = time.perf_counter() - started
                folds.finish(metrics)
        finally:
            for name in (source, job.table):
                if name in client.list_datasets():
                    client.unpublish_dataset(name)
    return metrics


def resolve_cluster_engine(client: Any, requested: str, workers: Sequence[str]) -> str:
    """Run :func:`resolve_engine` as a task on every worker (importing cuDF/cuML in a worker thread, not
    on its event loop): ``gpu`` only if all of them can, else ``cpu`` (or :class:`UserError` when ``gpu``
    was requested and some worker cannot)."""
    tasks = {
        worker: client.submit(resolve_engine, requested, workers=[worker], allow_other_workers=False, pure=False)
        for worker in workers
    }
    answers: dict[str, str] = {}
    for worker, task in tasks.items():
        try:
            answers[worker] = task.result()
        except UserError as error:
            raise UserError(f"worker {worker}: {error}") from None
    engines = set(answers.values())
    return "gpu" if engines == {"gpu"} else "cpu"
