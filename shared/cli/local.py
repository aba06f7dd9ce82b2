"""Commands that work on this machine: ``run`` an experiment end to end, ``plan`` a spec offline,
``prices refresh`` (``serve``: :mod:`shared.cli.serve`)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shared.cli._app import app, console, err, load_spec_or_exit
from shared.config import MODEL_PREFIX, Settings, env
from shared.records import TERMINAL_STATUSES, ExperimentRecord, ExperimentStatus, TrialState


def _describe(record: ExperimentRecord) -> str:
    from shared.dashboard.terminal import best_text

    best = record.best.model_dump() if record.best else None
    return f"{record.status.value:<12} {best_text(record.objective[0], best, ended=record.status.terminal)}"


@app.command()
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="experiment spec (YAML or JSON)")],
    poll_seconds: Annotated[int, typer.Option(help="how often the state machine polls the run")] = 2,
    timeout: Annotated[float | None, typer.Option(help="give up waiting after this many seconds")] = None,
) -> None:
    """Run one experiment end to end on this machine, through the same queues, handlers and store."""
    from shared.context import Context, set_context
    from shared.handlers import request_cancel, submit_experiment
    from shared.runner import LocalHost
    from shared.telemetry import trace_id_of
    from shared.telemetry.setup import configure

    configure("rapids-hpo-control")  # OTEL_* (OTEL_TRACES_EXPORTER=console) or Application Insights, else nothing
    spec = load_spec_or_exit(spec_path)
    settings = dataclasses.replace(Settings.from_env(), poll_seconds=poll_seconds)
    ctx = Context.from_settings(settings)
    set_context(ctx)
    record, _ = submit_experiment(ctx, spec)
    console.print(f"experiment [bold]{record.id}[/bold] ({spec.name}) submitted; store: {settings.home}")
    if record.traceparent:
        console.print(f"trace id: {trace_id_of(record.traceparent)}")
    host = LocalHost(ctx, visibility_timeout=30, sweep_interval=30)

    def finished() -> bool:
        return ctx.store.get_experiment(record.id).status in TERMINAL_STATUSES

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    from shared.dashboard.terminal import TrialsProgress, trials_table

    searched = list(spec.search_space)
    with TrialsProgress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("SUBMITTED", total=record.trials_total)
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(1.0):
                current = ctx.store.get_experiment(record.id)
                trials = ctx.store.list_trials(record.id)
                no_result = {TrialState.RUNNING, TrialState.FAILED, TrialState.CANCELLED}
                done = sum(1 for t in trials if t.state not in no_result)
                rows = [t.model_dump(mode="json") for t in trials]
                running = any(t.state is TrialState.RUNNING for t in trials)
                progress.trials = trials_table(rows, searched, recent=0) if running else None
                progress.update(task, completed=done, description=_describe(current))

        watcher = threading.Thread(target=refresh, daemon=True)
        watcher.start()
        interrupted = False
        try:
            reached = host.run(until=finished, timeout=timeout)
        except KeyboardInterrupt:  # Ctrl-C cancels the experiment rather than orphaning its driver
            interrupted = True
            wait = settings.cancel_wait_seconds
            err.print(
                "[yellow]interrupted: cancelling the experiment (its trials stop, the best finished one is refit: "
                f"up to {wait} s, RAPIDS_HPO_CANCEL_WAIT_SECONDS; then its compute is torn down)"
            )
            request_cancel(ctx, record.id)
            reached = host.run(until=finished, timeout=wait + 60)
        finally:
            stop.set()
            watcher.join()
        final = ctx.store.get_experiment(record.id)
        progress.trials = None  # the run is over: no trial table in the last frame
        progress.update(task, completed=final.trials_done, description=_describe(final))
    if interrupted:
        host.run(until=lambda: ctx.store.get_experiment(record.id).torn_down, timeout=30)
        ended = ctx.store.get_experiment(record.id)
        kept = f"no model: {ended.no_model}" if ended.no_model else "its best model so far is kept"
        err.print(f"experiment {record.id} {ended.status.value}; {kept}")
        raise typer.Exit(130)
    if not reached:
        err.print(f"[yellow]still {final.status.value} after {timeout} s; the run goes on in the background")
        raise typer.Exit(1)
    _print_result(ctx, final)
    raise typer.Exit(0 if final.status is ExperimentStatus.COMPLETED else 1)


def _print_result(ctx: Any, record: ExperimentRecord) -> None:
    trials = ctx.store.list_trials(record.id)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    console.print(f"[bold]{record.status.value}[/bold]: {', '.join(f'{v} {k.lower()}' for k, v in counts.items())}")
    check = _data_check(ctx, record.id)
    if check:
        console.print(f"data: {check}")
    if record.error:
        console.print(f"[red]error:[/red] {record.error}")
    if record.best is None:
        return
    table = Table(title=f"best trial #{record.best.number}")
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, value in record.best.params.items():
        table.add_row(name, f"{value:g}" if isinstance(value, float) else str(value))
    from gpu_jobs.metrics import METRICS

    for name in (*METRICS, "fit_seconds", "task", "engine", "rows"):
        if name in record.best.metrics:
            metric = record.best.metrics[name]
            table.add_row(f"[cyan]{name}", f"{metric:.4f}" if isinstance(metric, float) else str(metric))
    console.print(table)
    model_files = ctx.store.list_artifacts(record.id, MODEL_PREFIX)
    if model_files:
        names = ", ".join(f.removeprefix(MODEL_PREFIX) for f in model_files)
        folder = getattr(ctx.store, "artifacts_root", None)  # a local store: the files on this machine
        where = folder / record.id / MODEL_PREFIX if folder is not None else record.best.model_uri or ""
        console.print(f"model: {where} ({names})")


def _data_check(ctx: Any, experiment_id: str) -> str | None:
    """What the driver's data check learned (task, its reason, rows), as one line; None if it did not run."""
    from shared.backends.outcome import read_data_check

    check = read_data_check(ctx.store, experiment_id)
    return None if check is None else check.describe()


@app.command()
def plan(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC")],
    full: Annotated[bool, typer.Option("--full", help="also print the sweep job YAML or the VM arguments")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text, or yaml (everything, for machines)")] = "text",
) -> None:
    """Print, without touching Azure, what the spec would create, its node-hours and its cost in USD."""
    import yaml

    from shared.backends import get_planner
    from shared.cost.catalogue import load_catalogue
    from shared.cost.measured import expected_line
    from shared.cost.report import plan_document, plan_renderables

    if output not in {"text", "yaml"}:
        err.print(f"[red]error:[/red] --output is text or yaml, not {output!r}")
        raise typer.Exit(2)
    spec = load_spec_or_exit(spec_path)
    catalogue = load_catalogue()
    planner = get_planner(spec.compute.backend)
    creates = planner.describe(spec)
    from shared.spec.search_table import runs_where

    search = runs_where(spec)
    rungs = _rung_advice(spec)
    search += [rungs] if rungs else []
    expected = expected_line(spec, _measured(spec))
    if output == "yaml":
        document = {
            "task": task_plan(spec),
            "search": search,
            "plan": {**plan_document(spec, catalogue, creates), "expected_wall_time": expected},
            "dry_run": _dry_run(spec, as_text=False),
        }
        document = json.loads(json.dumps(document, default=str))  # plain types for YAML
        typer.echo(yaml.safe_dump(document, sort_keys=False, width=110))
        return
    console.print(f"task: {task_plan(spec)}")
    for line in search:
        console.print(f"search: {line}", markup=False, highlight=False)
    for index, renderable in enumerate(plan_renderables(spec, catalogue, creates)):
        console.print(renderable)
        if index == 0:
            console.print(f"  expects   {expected}", markup=False, highlight=False)
    if full:
        console.print(_dry_run(spec, as_text=True), markup=False, highlight=False)
    elif shows := planner.full_plan_shows:
        console.print(f"[dim]{shows[0].upper()}{shows[1:]}: rapids-hpo plan {spec_path} --full[/dim]")


def _local_store() -> Any:
    """The local store ``plan`` reads past runs from, or None: ``plan`` reads nothing in Azure and creates
    no store."""
    from shared.store.local import LocalStore

    settings = Settings.from_env()
    folder = settings.home / "store"
    if settings.uses_azure_storage or not folder.exists():
        return None
    return LocalStore(folder)


def _measured(spec: Any) -> Any:
    """The last finished run of this workload in the local store."""
    from shared.cost.measured import last_run

    store = _local_store()
    return None if store is None else last_run(store, spec)


def _rung_advice(spec: Any) -> str | None:
    """Where the last run of this workload ranked its trials as at their end, against the rung policy's first
    rung (:mod:`shared.hpo.rung_check`), from the local store."""
    from shared.hpo.rung_check import rung_advice

    store = _local_store()
    return None if store is None else rung_advice(spec, store)


def task_plan(spec: Any) -> str:
    """The task the trials will learn and why, for ``plan``: as stated, a built-in table's, inferred here
    from a file on this machine, or (remote data) inferred by the data check on the compute."""
    from gpu_jobs.errors import UserError

    dataset = spec.dataset
    metric = spec.objective.primary_metric
    if dataset.task != "auto":
        return f"{dataset.task} (dataset.task says so); primary metric {metric}"
    known = dataset.known_task()
    if known is not None:
        return f"{known} ({dataset.uri}'s {dataset.target} is a {known} target); primary metric {metric}"
    if "://" in dataset.uri and not dataset.uri.startswith("file://"):
        return f"auto: inferred from {dataset.target} by the data check on the compute, before any trial"
    from gpu_jobs.cross_validation import check_request, require_fit
    from gpu_jobs.data import prepare_frame, read_selected

    try:
        frame = read_selected(dataset.uri, dataset.target, dataset.format, dataset.features)
        _, _, info = prepare_frame(frame, dataset.target, source=dataset.uri, task="auto")
        request = check_request(
            model=spec.trial.model, params={}, cv_folds=spec.trial.cv_folds, primary_metric=metric, engine="cpu"
        )
        require_fit(request, info.target_encoding, info.minority_class_rows)
    except UserError as exc:
        return f"auto, but the data check will fail: {exc}"
    return f"{info.target_encoding.task} ({info.target_encoding.reason}); primary metric {metric}"


def _dry_run(spec: Any, *, as_text: bool) -> Any:
    """The backend's dry run: each artefact once (the sweep job as YAML text, or as a mapping)."""
    import yaml

    from shared.backends import get_planner

    document = get_planner(spec.compute.backend).dry_run(spec)
    if "sweep_job_yaml" in document:
        if as_text:
            return f"# AmlCompute\n{document['compute_yaml']}\n# Sweep job\n{document['sweep_job_yaml']}"
        document = {k: v for k, v in document.items() if k not in {"compute_yaml", "sweep_job_yaml"}}
    document = json.loads(json.dumps(document, default=str))
    return yaml.safe_dump(document, sort_keys=False, width=110) if as_text else document


prices_app = typer.Typer(no_args_is_help=True, help="The GPU size catalogue and its prices.")
app.add_typer(prices_app, name="prices")


@prices_app.command("refresh")
def prices_refresh(
    output: Annotated[
        Path | None,
        typer.Option(help="file to write (default: RAPIDS_HPO_PRICES_FILE, else RAPIDS_HPO_HOME/prices.yaml)"),
    ] = None,
    region: Annotated[
        list[str] | None, typer.Option(help="a region to price (repeat); default: the catalogue's")
    ] = None,
    api_url: Annotated[str | None, typer.Option(help="the Retail Prices API endpoint")] = None,
) -> None:
    """Rebuild the catalogue's prices from the public Azure Retail Prices API and write your price file."""
    from shared.cost import refresh as price_refresh
    from shared.cost.catalogue import PRICES_FILE_SETTING, load_catalogue

    catalogue = load_catalogue()
    regions = region or catalogue.regions
    target = output or Path(env(PRICES_FILE_SETTING) or Settings.from_env().home / "prices.yaml")
    try:
        rebuilt = price_refresh.refresh(catalogue, regions, base_url=api_url or price_refresh.RETAIL_PRICES_URL)
    except (OSError, ValueError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] the price refresh failed: {exc}")
        raise typer.Exit(1) from None
    price_refresh.write_catalogue(rebuilt, target)
    held = [size.prices for size in rebuilt.sizes.values()] + [size.prices for size in rebuilt.host_sizes.values()]
    priced = sum(1 for prices in held for r in regions if r in prices)  # the GPU sizes and the CPU heads
    console.print(f"{priced} size/region prices from {rebuilt.sources['prices'].url} written to {target}")
    if not output and not env(PRICES_FILE_SETTING):
        console.print(f"use it: export {PRICES_FILE_SETTING}={target}")
