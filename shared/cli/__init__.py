"""``rapids-hpo``: run an experiment here, serve the API, or talk to a running API (local or Azure)."""

from __future__ import annotations

import os
import sys

from shared.cli import local, remote, serve
from shared.cli._app import app

__all__ = ["app", "local", "main", "remote", "serve"]


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
