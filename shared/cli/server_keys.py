"""Where ``rapids-hpo serve`` leaves the key it made, so the CLI on this machine finds it unasked.

One file per server URL (``http://127.0.0.1:7071``), in a folder only the user may open (0700) of the
user's state folder (``RAPIDS_HPO_STATE_DIR``, else platformdirs' ``user_state_dir``); each file is
created 0600 before the key is written, and removed when the server stops. Other users of the machine
cannot read it; the user's own processes can, as they can read the user's other credentials.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, urlsplit

from shared.config import env


def state_dir() -> Path:
    import platformdirs

    return Path(env("RAPIDS_HPO_STATE_DIR") or platformdirs.user_state_dir("rapids-hpo")).expanduser()


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, the port spelled out: one file per server."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower() or "http"
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    host = (parts.hostname or "").rstrip(".")
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def key_file(url: str) -> Path:
    return state_dir() / "serve-keys" / (quote(_origin(url), safe="") + ".key")


def write_key(urls: Iterable[str], key: str) -> list[Path]:
    """Leave ``key`` for each of ``urls`` (0600 files in a 0700 folder); returns the files to remove."""
    folder = state_dir() / "serve-keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask, and an older folder may be wider
    written = []
    for url in dict.fromkeys(urls):
        path = key_file(url)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # never write into a file someone else created or linked
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(key)
        written.append(path)
    return written


def read_key(url: str) -> str | None:
    """The key a ``serve`` on this machine left for ``url``, or ``None``."""
    try:
        return key_file(url).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def remove_keys(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
