"""Commands that talk to a running API (``RAPIDS_HPO_API_URL``: a local ``serve`` or the Function App):
``submit``, ``status``, ``watch``, ``list``, ``cancel``, ``download``, ``export``."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shared.cli._app import app, console, err
from shared.config import env
from shared.records import TERMINAL_STATUSES, ExperimentRecord, TrialRecord

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials import TokenCredential


# --------------------------------------------------------------------------------------- API client
def _client() -> httpx.Client:
    """A client of ``RAPIDS_HPO_API_URL`` with the key: ``RAPIDS_HPO_FUNCTION_KEY``, else the one a
    ``serve`` on this machine left for that URL (:mod:`shared.cli.server_keys`); with ``RAPIDS_HPO_API_SCOPE``
    (the API's ``api://<client id>/.default``), the caller's own Entra ID token for it on every request."""
    import httpx

    from shared.cli.server_keys import read_key

    url = env("RAPIDS_HPO_API_URL").rstrip("/")
    key = env("RAPIDS_HPO_FUNCTION_KEY") or read_key(url)
    headers = {"x-functions-key": key} if key else {}
    scope = env("RAPIDS_HPO_API_SCOPE").strip()
    auth = _bearer(_credential(), scope) if scope else None
    return httpx.Client(base_url=url, headers=headers, auth=auth, timeout=60)


def _credential() -> TokenCredential:
    """The signed-in person: ``az login`` (``RAPIDS_HPO_CLI_CREDENTIAL=cli``, the default) or a device code
    (``device_code``: prints a code to enter at https://microsoft.com/devicelogin, for machines without az)."""
    from azure.identity import AzureCliCredential, DeviceCodeCredential

    choice = env("RAPIDS_HPO_CLI_CREDENTIAL").strip().lower()
    if choice == "cli":
        return AzureCliCredential()
    if choice == "device_code":
        return DeviceCodeCredential()
    err.print(f"[red]error:[/red] RAPIDS_HPO_CLI_CREDENTIAL must be cli or device_code, not {choice!r}")
    raise typer.Exit(2)


def _bearer(credential: Any, scope: str) -> Any:
    """httpx auth (a function of the request): ``Authorization: Bearer`` from the credential, asked on each
    request (azure-identity caches the token and renews it before it expires)."""
    from azure.core.exceptions import ClientAuthenticationError

    def sign(request: Any) -> Any:
        try:
            token = credential.get_token(scope).token
        except ClientAuthenticationError as exc:
            err.print(f"[red]error:[/red] no token for {scope}: {str(exc.message).splitlines()[0]}")
            raise typer.Exit(1) from None
        request.headers["Authorization"] = f"Bearer {token}"
        return request

    return sign


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            err.print(f"[red]error {response.status_code}:[/red] {body.get('detail')}")
            for item in body.get("errors") or []:
                err.print(f"  {item.get('loc')}: {item.get('msg')}")
        except ValueError:
            err.print(f"[red]error {response.status_code}:[/red] {response.text[:500]}")
        raise typer.Exit(1)
    return response


@app.command()
def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC")],
    idempotency_key: Annotated[
        str | None, typer.Option(help="retries with the same key return the same experiment")
    ] = None,
) -> None:
    """Submit a spec to a running API; prints the experiment id."""
    from shared.spec import DocumentError, read_document
    from shared.spec.loading import read_spec_file

    try:
        body = spec_path.read_bytes()
        document = read_spec_file(spec_path)  # a relative dataset.uri made absolute against the file's folder
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {spec_path}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    except DocumentError:
        document = None  # sent as written: the API names what is wrong with it
    headers = {"content-type": "application/yaml" if spec_path.suffix in {".yaml", ".yml"} else "application/json"}
    if document is not None and document != read_document(body):
        body, headers["content-type"] = json.dumps(document).encode(), "application/json"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    with _client() as client:
        data = _check(client.post("/api/experiments", content=body, headers=headers)).json()
    console.print(data["id"])


@app.command()
def status(experiment_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show an experiment's status, progress and best trial."""
    with _client() as client:
        data = _check(client.get(f"/api/experiments/{experiment_id}")).json()
    if as_json:
        console.print_json(json.dumps(data))
        return
    from shared.compute_report import ComputeReport
    from shared.cost.report import format_cost
    from shared.dashboard.terminal import experiment_best
    from shared.records import SubmittedBy

    cost = format_cost(data.get("cost"))
    console.print(
        f"{data['id']}  {data['status']}  {data['progress']['done']}/{data['progress']['total']} trials"
        + f"  {experiment_best(data)}"
        + (f"  {cost}" if cost else "")
        + (f"  error: {data['error']}" if data.get("error") else "")
        + (f"  no model: {data['no_model']}" if data.get("no_model") else ""),
        markup=False,
    )
    if compute := ComputeReport.model_validate(data.get("compute") or {}).summary():
        console.print(f"  compute: {compute}", markup=False, highlight=False)
    if data.get("submitted_by"):
        who = SubmittedBy.model_validate(data["submitted_by"]).label
        console.print(f"  submitted by: {who}", markup=False, highlight=False)


def all_trials(client: Any, base: str, page: int = 1000, route: str = "trials") -> list[dict[str, Any]]:
    """Every trial of the experiment at ``base``, following the pages of ``GET /trials`` (or ``/study``:
    ``route``) by ``X-Next-After``."""
    trials: list[dict[str, Any]] = []
    after = -1
    while True:
        response = _check(client.get(f"{base}/{route}", params={"after": after, "limit": page}))
        body = response.json()
        trials += body["trials"] if route == "study" else body
        following = response.headers.get("X-Next-After")
        if following is None or not trials:
            return trials
        after = int(following)


INTERRUPTED_PREFIX = "interrupted:"
"""How the driver marks a trial its restart will retry under the same number (``shared.hpo.driver``)."""


def may_change(trial: dict[str, Any]) -> bool:
    """Whether a trial can still change: running, or interrupted (a resumed driver retries it)."""
    return trial["state"] == "RUNNING" or (
        trial["state"] == "FAILED" and str(trial.get("error") or "").startswith(INTERRUPTED_PREFIX)
    )


def refresh_trials(client: Any, base: str, known: dict[int, dict[str, Any]], page: int = 1000) -> list[dict[str, Any]]:
    """``known`` brought up to date, reading only the trials from the lowest one that may still change (or the
    newest known) on: a watch of an experiment of 10,000 trials re-read them all at every refresh."""
    changing = [number for number, trial in known.items() if may_change(trial)]
    after = min(changing) - 1 if changing else max(known, default=-1)
    while True:
        response = _check(client.get(f"{base}/trials", params={"after": after, "limit": page}))
        for trial in response.json():
            known[trial["number"]] = trial
        following = response.headers.get("X-Next-After")
        if following is None:
            return [known[number] for number in sorted(known)]
        after = int(following)


@app.command()
def watch(
    experiment_id: str,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 5.0,
) -> None:
    """Follow an experiment until it ends: progress bar and a live table of its running trials.

    Exits 0 when it completed; otherwise says why on stderr (the experiment's error, as ``status`` does)
    and exits 1."""
    from rich.live import Live

    from shared.dashboard.terminal import watch_view

    base = f"/api/experiments/{experiment_id}"
    with _client() as client:
        spec = _check(client.get(f"{base}/study", params={"limit": 1})).json()["spec"] or {}  # the spec, not the trials
        searched = list(spec.get("search_space", {}))
        known: dict[int, dict[str, Any]] = {}
        with Live(console=console, auto_refresh=False) as live:
            while True:
                data = _check(client.get(base)).json()
                trials = refresh_trials(client, base, known)
                live.update(watch_view(data, trials, searched), refresh=True)
                if data["status"] in {s.value for s in TERMINAL_STATUSES}:
                    break
                time.sleep(interval)
    if data["status"] != "COMPLETED":
        from rich.markup import escape

        why = escape(data.get("error") or "no error was recorded")
        if data["status"] == "CANCELLED":  # what the cancel kept, or why it kept no model
            kept = f"the best model so far is kept (rapids-hpo download {data['id']})"
            why = escape(f"no model: {data['no_model']}" if data.get("no_model") else kept)
        err.print(f"[red]{data['status']}:[/red] {why}", highlight=False)
        raise typer.Exit(1)


@app.command()
def export(
    experiment_id: str,
    optuna_journal: Annotated[
        Path, typer.Option("--optuna-journal", help="write an Optuna JournalStorage file (a new file)")
    ],
) -> None:
    """Export an experiment for Optuna's tools: `optuna.load_study` and `optuna-dashboard FILE` open it."""
    from shared.dashboard.study import write_journal

    if optuna_journal.exists():
        err.print(f"[red]error:[/red] {optuna_journal} exists; the journal must be a new file")
        raise typer.Exit(2)
    base = f"/api/experiments/{experiment_id}"
    with _client() as client:
        data = _check(client.get(f"{base}/study", params={"limit": 1})).json()
        pages = all_trials(client, base, route="study")
    record = ExperimentRecord(id=data["id"], name=data["name"], status=data["status"], spec=data["spec"])
    trials = [TrialRecord.model_validate(t) for t in pages]
    study = write_journal(str(optuna_journal), record, trials)
    console.print(
        f"{len(study.trials)} trial(s) of {record.id} written to {optuna_journal} (study {study.study_name!r}); "
        f"open it with: optuna-dashboard {optuna_journal}"
    )


@app.command("list")
def list_(
    status_filter: Annotated[str | None, typer.Option("--status", help="only this status")] = None,
    limit: int = 20,
) -> None:
    """List experiments, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status_filter:
        params["status"] = status_filter.upper()
    with _client() as client:
        data = _check(client.get("/api/experiments", params=params)).json()
    from shared.cost.report import cost_cells

    table = Table("id", "name", "status", "trials", "best", "spent", "budget")
    for item in data["items"]:
        best = item.get("best")
        table.add_row(
            item["id"],
            item["name"],
            item["status"],
            f"{item['progress']['done']}/{item['progress']['total']}",
            f"{best['value']:.4f}" if best else "",
            *cost_cells(item.get("cost")),
        )
    console.print(table)


@app.command()
def cancel(experiment_id: str) -> None:
    """Cancel an experiment: running trials stop, compute is torn down."""
    with _client() as client:
        data = _check(client.delete(f"/api/experiments/{experiment_id}")).json()
    console.print(f"{data['id']} {data['status']}")


@app.command()
def download(
    experiment_id: str,
    output: Annotated[Path, typer.Option(help="folder to extract the model into")] = Path("model"),
) -> None:
    """Download the best model's files."""
    with _client() as client:
        response = _check(client.get(f"/api/experiments/{experiment_id}/model"))
    output.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(output)
        names = archive.namelist()
    console.print(f"{len(names)} file(s) in {output}: {', '.join(names)}")
