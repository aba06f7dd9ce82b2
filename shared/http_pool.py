"""One HTTP connection pool for the Azure SDK clients of a process, sized for the API's thread pool.

azure-core's default ``requests`` transport keeps 10 connections per host; FastAPI runs sync handlers on
up to 40 threads, so under load most calls opened a new connection and threw it away after
("Connection pool is full, discarding connection"). A client built with :func:`pooled_transport` keeps
up to :data:`POOL_SIZE` connections alive instead.
"""

from __future__ import annotations

import threading
from typing import Any

POOL_SIZE = 64
_lock = threading.Lock()
_transport: Any = None


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
            adapter = HTTPAdapter(pool_connections=16, pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _transport = RequestsTransport(session=session, session_owner=False)
        return _transport
