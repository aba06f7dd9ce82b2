"""``rapids-hpo serve``: the API (uvicorn) and the queue workers on this machine, behind the web edge.

Each start makes a random key (``RAPIDS_HPO_FUNCTION_KEY`` instead, when set), prints it once, and
leaves it for the CLI (:mod:`shared.cli.server_keys`) until the server stops: every request needs it, as
the Functions host requires its key in Azure. The dashboard takes it as ``?code=`` in its links, never
as a cookie: a cookie is not scoped to a port, so every other server on 127.0.0.1 would receive it.
Bound beyond loopback, hosted mode's rules apply (:mod:`shared.spec.policy`): what reaches this server
from other machines may not run a local experiment or read a local file.
"""

from __future__ import annotations

import dataclasses
import secrets
import signal
import threading
from typing import Annotated

import typer

from shared.api_guard import WILDCARD_HOSTS, is_loopback
from shared.cli._app import app, err
from shared.config import Settings, env


def serve_settings(settings: Settings, host: str) -> Settings:
    """``settings`` with hosted mode on when ``host`` reaches beyond this machine (a name, 0.0.0.0, ::)."""
    return settings if is_loopback(host) else dataclasses.replace(settings, hosted=True)


def server_urls(host: str, port: int) -> list[str]:
    """The URLs a client on this machine may use for a server bound to ``host``, first the one to show."""
    bare = host.strip("[]")
    if bare in WILDCARD_HOSTS or is_loopback(host):
        urls = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
        return urls if bare in WILDCARD_HOSTS else [_url(bare, port), *urls]
    return [_url(bare, port)]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind; beyond loopback, hosted mode's rules apply")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port")] = 7071,
    workers: Annotated[bool, typer.Option(help="also run the queue workers and the sweep")] = True,
    access_log: Annotated[bool, typer.Option(help="log each request: method, path, status, ms (never the key)")] = True,
) -> None:
    """Serve the API and run the queue workers here: local adapters unless AzureWebJobsStorage is set.

    Every request needs the key printed at start (x-functions-key, or ?code= in the dashboard's links); the
    CLI on this machine finds it by itself. RAPIDS_HPO_FUNCTION_KEY, when set, is the key instead.
    """
    import uvicorn

    from shared.access_log import AccessLog, log_to_stderr
    from shared.api import create_api
    from shared.auth import AuthSettings
    from shared.cli.server_keys import remove_keys, write_key
    from shared.context import Context, set_context
    from shared.runner import LocalHost
    from shared.telemetry.setup import configure

    configure("rapids-hpo-control")  # as the Function App does: OTEL_* or Application Insights, else nothing
    given = env("RAPIDS_HPO_FUNCTION_KEY")
    key = given or secrets.token_urlsafe(32)
    ctx = Context.from_settings(serve_settings(Settings.from_env(), host))
    set_context(ctx)
    local_host = LocalHost(ctx, sweep_interval=60)
    thread = threading.Thread(target=local_host.run, name="queue-workers", daemon=True)
    if workers:
        thread.start()
    urls = server_urls(host, port)
    files = write_key(urls, key)
    storage = "azure" if ctx.settings.uses_azure_storage else ctx.settings.home
    err.print(f"serving {urls[0]}/api (storage: {storage})", highlight=False)
    if given:
        err.print("key: RAPIDS_HPO_FUNCTION_KEY", highlight=False)
    else:
        err.print(f"key (shown once): {key}", highlight=False, markup=False, soft_wrap=True)
        err.print(f"  dashboard: {urls[0]}/api/ui?code={key}", highlight=False, markup=False, soft_wrap=True)
    err.print(f"  the CLI on this machine reads it from {files[0].parent} (removed when the server stops)")
    if ctx.settings.hosted:
        err.print(
            f"[yellow]bound to {host}, beyond loopback: hosted rules on[/yellow] (no local backend, no local data); "
            "other machines must use a host name of RAPIDS_HPO_ALLOWED_HOSTS, and plain http shows the key to "
            "the network: put TLS in front"
        )
    # uvicorn re-raises the SIGTERM it stopped on once it is done: a handler of ours turns it into an exit
    # that runs the cleanup below (the default action would end the process and leave the key file)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        api = create_api(settings=ctx.settings, function_key=key, bound_host=host, auth=AuthSettings.from_env())
        if access_log:
            log_to_stderr()
        # uvicorn's own access log would print the query string, where the dashboard's links carry the key
        served = AccessLog(api) if access_log else api
        uvicorn.run(served, host=host, port=port, log_level="warning", access_log=False)
    finally:
        local_host.stop()
        remove_keys(files)
