"""Unpack the compiled FunctionRpc protocol from the ``azure-functions-runtime-v1`` wheel (``make functions-venv``).

The wheel carries it under ``tests/protos`` (so installing the wheel would add a top-level ``tests`` package:
it is never installed). Its modules import each other relatively, so the folder becomes the package
``azure_functions_rpc`` under ``<target>``. Usage: ``python tests/functions_protos.py WHEEL_DIR TARGET``.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

PREFIX = "tests/protos/"
PACKAGE = "azure_functions_rpc"


def unpack(wheel_dir: Path, target: Path) -> Path:
    (wheel,) = sorted(wheel_dir.glob("azure_functions_runtime_v1-*.whl"))
    package = target / PACKAGE
    shutil.rmtree(package, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.startswith(PREFIX) and name.endswith(".py")]
        if not any(name.endswith("FunctionRpc_pb2.py") for name in members):
            raise SystemExit(f"{wheel.name} has no {PREFIX}FunctionRpc_pb2.py")
        for name in members:
            path = package / name.removeprefix(PREFIX)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(name))
    return package


if __name__ == "__main__":
    print(unpack(Path(sys.argv[1]), Path(sys.argv[2])))
