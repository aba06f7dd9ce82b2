"""Cold start of the Function App in Azure's own Python 3.13 worker (tests/functions_host.py), as Flex starts it.

Prints, for a fresh worker: the time from the environment reload (the app arriving) until every function is
indexed and loaded, the first HTTP request, and the timer's first run, each with what it imported (self time
from ``-X importtime``). The reference beside ours: ``import azure.ai.ml`` alone, which the timer's first run
paid before it built only the orphan finders (issue 23 measured ~6 s on a Functions instance; here it is
measured on this machine in the same worker venv).

    .venv/bin/python bench/functions_cold_start.py   (needs `make functions-venv`)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.functions_host import PYTHON, FunctionsHost, deploy_package, missing  # noqa: E402


def main() -> None:
    reason = missing()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory() as tmp:
        package = deploy_package(ROOT, Path(tmp) / "wwwroot")
        settings = {"RAPIDS_HPO_HOME": str(Path(tmp) / "home"), "WEBSITE_SITE_NAME": "bench"}
        started = time.perf_counter()
        with FunctionsHost(package, settings, import_profile=True) as host:
            ready = time.perf_counter() - started
            indexed = host.imports_since(0)
            offset = host.log_size()
            t0 = time.perf_counter()
            assert host.http("GET", "/api/health").status == 200
            first_http = time.perf_counter() - t0
            http_imports = host.imports_since(offset)
            offset = host.log_size()
            t0 = time.perf_counter()
            host.timer("sweep")
            first_timer = time.perf_counter() - t0
            timer_imports = host.imports_since(offset)
    probe = "import time; t = time.perf_counter(); import azure.ai.ml; print(time.perf_counter() - t)"
    azure_ai_ml = float(subprocess.run([str(PYTHON), "-c", probe], capture_output=True, text=True, check=True).stdout)

    def line(name: str, seconds: float, imports: dict[str, int]) -> str:
        self_time = sum(imports.values()) / 1e6
        return f"{name}: {seconds:.2f} s wall, {len(imports)} modules imported ({self_time:.2f} s self)"

    print(line("worker start to functions loaded", ready, indexed))
    print(line("first HTTP request (/api/health)", first_http, http_imports))
    print(line("first timer run (sweep + orphan sweep)", first_timer, timer_imports))
    print(f"reference: import azure.ai.ml in the same venv: {azure_ai_ml:.2f} s (what the first timer run paid before)")


if __name__ == "__main__":
    main()
