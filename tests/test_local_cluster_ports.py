"""The local driver's Dask cluster listens on loopback only, on a free port (two local runs do not collide)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from shared.backends.local.driver import dask_client
from shared.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-multiclass.yaml"


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_two_local_clusters_bind_loopback_on_their_own_ports() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["compute"] = {"backend": "local", "n_workers": 1, "threads_per_worker": 1}
    spec = load_spec(document)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "Port 8787 is already in use" would raise here
        with dask_client(spec.compute) as first, dask_client(spec.compute) as second:  # type: ignore[arg-type]
            bound = [client.cluster.scheduler.http_server._sockets for client in (first, second)]  # type: ignore[union-attr]
            addresses = [sock.getsockname() for sockets in bound for sock in sockets.values()]
    assert {host for host, _port in addresses} == {"127.0.0.1"}
    assert len({port for _host, port in addresses}) == len(addresses) == 2
