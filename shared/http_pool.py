"""One HTTP connection pool for the Azure SDK clients of a process, sized for the API's thread pool.

azure-core's default ``requests`` transport keeps 10 connections per host; FastAPI runs sync handlers on
up to 40 threads, so under load most calls opened a new connection and threw it away after
("Connection pool is full, discarding connection"). A client built with :func:`pooled_transport` keeps
up to :data:`POOL_SIZE` connections alive instead.

``requests`` also reads the environment on every call (proxy variables, the whole of ``os.environ``
twice, a CA bundle, ``~/.netrc``): a quarter of the CPU of a storage call here, more in a Function App
with many app settings. The CA bundle ``requests`` would use (``REQUESTS_CA_BUNDLE``, else
``CURL_CA_BUNDLE``) is read once, when the transport is built; with no proxy and no netrc file either,
the session stops looking (:func:`_environment_matters`). With a proxy or a netrc file it keeps
``requests``' own per-call handling (``NO_PROXY`` included).
"""

from __future__ import annotations

import os
import threading
import urllib.request
from typing import Any

POOL_SIZE = 64
_lock = threading.Lock()
_transport: Any = None
_CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _ca_bundle() -> str | None:
    """The CA bundle ``requests`` would take from the environment, if any."""
    return next((os.environ[name] for name in _CA_BUNDLE_VARIABLES if os.environ.get(name)), None)


def _environment_matters() -> bool:
    """Whether ``requests`` must keep reading the environment per call: a proxy or a netrc file is set."""
    if urllib.request.getproxies():
        return True
    netrc = os.environ.get("NETRC")
    places = [netrc] if netrc is not None else ["~/.netrc", "~/_netrc"]
    return any(os.path.exists(os.path.expanduser(place)) for place in places)


def pooled_transport() -> Any:
    """The process's shared ``RequestsTransport`` (one ``requests.Session``, :data:`POOL_SIZE` connections per
    host). Clients given it do not close it; it lives as long as the process."""
    global _transport
    with _lock:
        if _transport is None:
            import requests
            from azure.core.pipeline.transport import RequestsTransport
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            session.trust_env = _environment_matters()
            adapter = HTTPAdapter(pool_connections=16, pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            bundle = _ca_bundle()
            verify = {"connection_verify": bundle} if bundle else {}
            _transport = RequestsTransport(session=session, session_owner=False, **verify)
        return _transport
