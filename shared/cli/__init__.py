"""``rapids-hpo``: run an experiment here, serve the API, or talk to a running API (local or Azure)."""

from __future__ import annotations

import os
import sys

from shared.cli import local, remote
from shared.cli._app import app
from shared.cli.local import serve_refusal

__all__ = ["app", "local", "main", "remote", "serve_refusal"]


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
