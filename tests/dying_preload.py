"""A worker preload that ends the first worker process to import it (``DYING_PRELOAD_MARKER`` names a file
it leaves behind): a worker that dies while its cluster starts, for ``tests/test_worker_watch.py``."""

import os
from pathlib import Path

_marker = Path(os.environ["DYING_PRELOAD_MARKER"])
if not _marker.exists():
    _marker.write_text("died once")
    os._exit(1)
