"""Cost of OpenTelemetry (shared.telemetry) on the Function App: ``import function_app`` and one
state-machine step, with telemetry off (the reference), the console exporter, OTLP to a local receiver,
and Microsoft's distro (the Azure Monitor exporter) aimed at a local endpoint that accepts every request
and answers none (an unreachable ingestion: the exporter's batches wait, the steps must not).

Each mode runs in a fresh process (telemetry is configured once per process, from the environment, as
the Function App does). Steps: the scripted backend of tests/ over the local store and queues; each
experiment is submit, provision, submit run, ``--polls`` polls, finalize, teardown.

    python bench/telemetry_overhead.py [--imports 5] [--experiments 20] [--polls 5]

Figures per mode: median ``import function_app`` seconds and median step milliseconds, each with its
ratio to telemetry off measured in this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.otlp_receiver import OtlpReceiver  # noqa: E402

IMPORT = "import time; t = time.perf_counter(); import function_app; print('RESULT', time.perf_counter() - t)"
STEPS = """
import json, sys, tempfile, time
from pathlib import Path
from shared.telemetry.setup import configure, flush
mode = configure("rapids-hpo-bench")
from shared.handlers import handle_event, submit_experiment
from shared.ports import RunState
from shared.spec import load_spec
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
experiments, polls = int(sys.argv[1]), int(sys.argv[2])
times = []
with tempfile.TemporaryDirectory() as home:
    ctx = local_context(Path(home))
    for _ in range(experiments):
        ctx.backends["local"] = ScriptedBackend(polls=[RunState.RUNNING] * polls + [RunState.SUCCEEDED])
        submit_experiment(ctx, load_spec(tiny_spec()))
        while messages := ctx.events.receive(1, visibility_timeout=60):
            started = time.perf_counter()
            handle_event(ctx, messages[0].body)
            times.append(time.perf_counter() - started)
            ctx.events.delete(messages[0])
print("RESULT " + json.dumps({"mode": mode, "steps": times}), flush=True)
"""


def clean_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def modes(receiver: OtlpReceiver, held: OtlpReceiver) -> dict[str, dict[str, str]]:
    return {
        "off": {},
        "console": {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"},
        "otlp (local receiver)": {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
        "azure distro (ingestion holds every request)": {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                f"IngestionEndpoint={held.endpoint}/;LiveEndpoint={held.endpoint}/"
            ),
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",  # its own telemetry to Microsoft: unreachable here
        },
    }


def run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not found:
        raise SystemExit(f"failed (exit {done.returncode}): {done.stderr[-2000:]}")
    if done.returncode != 0:  # measured, then the exit (the exporters' shutdown) failed: say so
        print(f"  (exit status {done.returncode} after the measurement: {done.stderr.strip()[-200:]})", flush=True)
    return found[-1][len("RESULT ") :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imports", type=int, default=5)
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--polls", type=int, default=5)
    args = parser.parse_args()
    receiver, held = OtlpReceiver().start(), OtlpReceiver().start()
    held.hold()
    results: dict[str, tuple[float, float, int]] = {}
    try:
        for name, settings in modes(receiver, held).items():
            env = {**clean_environment(), **settings}
            imports = [float(run(IMPORT, env)) for _ in range(args.imports)]
            report = json.loads(run(STEPS, env, str(args.experiments), str(args.polls)))
            steps = report["steps"]
            results[name] = (statistics.median(imports), statistics.median(steps), len(steps))
            print(f"{name}: mode={report['mode']}, {len(steps)} steps", flush=True)
    finally:
        held.release()
        held.stop()
        receiver.stop()
    base_import, base_step, _ = results["off"]
    print(f"\n{'telemetry':<46} {'import function_app':>20} {'ratio':>6} {'step (median)':>14} {'ratio':>6}")
    for name, (imported, step, _count) in results.items():
        print(
            f"{name:<46} {imported:>18.3f} s {imported / base_import:>6.2f} {step * 1000:>11.2f} ms "
            f"{step / base_step:>6.2f}"
        )
    print(f"spans the OTLP receiver got: {len(receiver.spans)}; requests the held ingestion took: {held.requests}")


if __name__ == "__main__":
    main()
