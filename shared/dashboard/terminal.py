"""``rapids-hpo watch`` and ``run``: live terminal views of an experiment (rich): progress and running trials.

Built from the API's JSON (``GET /api/experiments/{id}`` and ``/trials``), so it works against a local
``serve`` and the Function App alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress import Progress
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shared.compute_report import ComputeReport
from shared.cost.report import format_cost
from shared.dashboard.charts import no_best
from shared.records import ExperimentStatus

STATE_STYLES = {
    "RUNNING": "cyan",
    "COMPLETED": "green",
    "PRUNED": "yellow",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "CANCELLED": "dim",
}


def _elapsed(started: str | None) -> str:
    if not started:
        return ""
    began = datetime.fromisoformat(started)
    seconds = int((datetime.now(UTC) - began).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    return f"{minutes}m{seconds:02d}s"


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


BEST_MARK = "★"


def trials_table(trials: list[dict[str, Any]], searched: list[str], recent: int = 5, best: int | None = None) -> Table:
    """The running trials, the last ``recent`` finished ones and trial ``best`` (always shown, marked
    :data:`BEST_MARK` and bold, however long ago it ended): params, folds, running mean, value."""
    names = searched or sorted({k for t in trials for k in t.get("params", {})})
    caption = f"{BEST_MARK} best trial" if best is not None else None
    table = Table(title="trials", title_justify="left", caption=caption, caption_justify="left", expand=False)
    for column in ("#", "state", *names, "folds", "running mean", "value", "elapsed", "attempt"):
        table.add_column(column, justify="left" if column == "state" else "right", no_wrap=True)
    running = [t for t in trials if t["state"] == "RUNNING"]
    ended = [t for t in trials if t["state"] != "RUNNING"][-recent:] if recent else []
    shown = {t["number"]: t for t in running + ended + [t for t in trials if t["number"] == best]}
    for t in sorted(shown.values(), key=lambda t: t["number"]):
        steps = sorted(t.get("intermediate", {}).items(), key=lambda kv: int(kv[0]))
        marked = t["number"] == best
        table.add_row(
            f"{BEST_MARK} {t['number']}" if marked else str(t["number"]),
            Text(t["state"], style=STATE_STYLES.get(t["state"], "")),
            *(_value(t.get("params", {}).get(n)) for n in names),
            str(len(steps)),
            _value(steps[-1][1]) if steps else "",
            _value(t.get("value")),
            _elapsed(t.get("started_at")) if t["state"] == "RUNNING" else f"{t.get('duration_s') or 0:.1f}s",
            str(t.get("attempt", 1)),
            style="bold" if marked else None,
        )
    return table


def watch_view(experiment: dict[str, Any], trials: list[dict[str, Any]], searched: list[str]) -> RenderableType:
    """The progress bar, a summary line, the running trials and the last few finished ones."""
    done, total = experiment["progress"]["done"], experiment["progress"]["total"]
    best = experiment.get("best")
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    header = Text.assemble(
        (f"{experiment['name']} ", "bold"),
        (f"{experiment['id']}  ", "dim"),
        (experiment["status"], "bold cyan"),
        f"  {done}/{total} trials  ",
        (experiment_best(experiment), "green"),
        "  " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())),
        (f"  {format_cost(experiment.get('cost'))}" if experiment.get("cost") else "", "yellow"),
    )
    bar = ProgressBar(total=max(total, 1), completed=done, width=60)
    compute = ComputeReport.model_validate(experiment.get("compute") or {}).summary()
    lines: list[RenderableType] = [header, Text(f"compute: {compute}", style="dim")] if compute else [header]
    return Group(*lines, bar, trials_table(trials, searched, best=best["number"] if best else None))


def best_text(metric: str, best: dict[str, Any] | None, *, ended: bool) -> str:
    """``best accuracy=0.8763 (trial 7)``, or why there is no best trial (no "yet" once ended)."""
    if best is None:
        return no_best(ended)
    return f"best {metric}={best['value']:.4f} (trial {best['number']})"


def experiment_best(experiment: dict[str, Any]) -> str:
    """:func:`best_text` of the API's experiment JSON (``GET /api/experiments/{id}``)."""
    ended = ExperimentStatus(experiment["status"]).terminal
    return best_text(experiment.get("metric", "value"), experiment.get("best"), ended=ended)


class TrialsProgress(Progress):
    """``rapids-hpo run``'s progress bar with the running trials' table under it (set ``trials``)."""

    trials: RenderableType | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.trials is not None:
            yield self.trials
