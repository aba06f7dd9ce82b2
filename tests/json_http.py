"""What the local JSON stand-ins (ARM, the AzureML workspace) share: read a request's body, send a reply."""

from __future__ import annotations

import json
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any


def read_json_body(handler: BaseHTTPRequestHandler) -> Any:
    """The request's body: parsed JSON, the text when it is not JSON, None when empty."""
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length else b""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def send_json(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: Any) -> None:
    """Reply ``payload`` as JSON (no body for None), with ``headers`` and an ``x-ms-request-id`` as Azure sends."""
    data = b"" if payload is None else json.dumps(payload).encode()
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    if data and not any(name.lower() == "content-type" for name in headers):
        handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("x-ms-request-id", str(uuid.uuid4()))
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
