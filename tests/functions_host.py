"""A stand-in for the Azure Functions host: Azure's Python worker library runs the app in a process of its own,
driven over the host's gRPC protocol (FunctionRpc ``EventStream``) on 127.0.0.1.

The worker process is :mod:`tests.functions_proxy` under ``.venv-functions`` (Python 3.13, the app's pinned
``requirements.txt`` and ``azure-functions-runtime``: what Azure runs for a 3.13 Flex Consumption app; built by
``make functions-venv``). :class:`FunctionsHost` plays the host's part of the conversation:

* **start as Flex does**: the worker starts as a placeholder (an empty app folder and a bare environment) and
  gets ``WorkerInitRequest``; the app arrives with ``FunctionEnvironmentReloadRequest`` (its folder and app
  settings); then ``FunctionsMetadataRequest`` (the worker indexes ``function_app.py``) and one
  ``FunctionLoadRequest`` per function. ``placeholder=False`` starts a worker on the app directly (a restart).
  A failure at any step raises :class:`WorkerError` with the worker's exception (type and message).
* **the deployed package**: the app folder the worker gets is a copy of the repository less what
  ``.funcignore`` excludes, so a module the package lacks fails as it would on Azure.
* **invocations shaped as the host shapes them**: HTTP as ``RpcHttp`` (method, full URL, headers, query, body
  bytes), refused with 401 before the worker without the function key (``authLevel: function``); queue
  messages as stored (base64, ``messageEncoding: base64`` in host.json; anything else is refused, as the
  host poisons it), with the trigger metadata the host adds (``Id``, ``DequeueCount``, ``PopReceipt``, times)
  and a JSON body's top-level fields merged into it case-insensitively, so a body with ``"id"`` replaces
  ``Id`` (azure-functions-python-worker#1373, azure-webjobs-sdk-extensions#882); timers as the JSON the
  timer extension sends.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-functions"
PYTHON = VENV / "bin" / "python"
PROTOS = VENV / "protos"
PROXY = Path(__file__).with_name("functions_proxy.py")
REQUIRED_ENV = "RAPIDS_HPO_REQUIRE_WORKER"
"""Set by CI (``.ci/run``): a missing worker environment fails the worker tests instead of skipping them."""
TIMEOUT_S = 120.0


def missing() -> str | None:
    """Why the worker cannot run here, or None."""
    if not PYTHON.exists() or not (PROTOS / "azure_functions_rpc").is_dir():
        return f"{VENV.name} is not built: run `make functions-venv` (needs Python 3.13)"
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "grpcio is not installed in the dev venv (requirements-dev.txt)"
    return None


def load_protos() -> ModuleType:
    if str(PROTOS) not in sys.path:
        sys.path.insert(0, str(PROTOS))
    import azure_functions_rpc

    return azure_functions_rpc


class WorkerError(RuntimeError):
    """The worker answered a request with a failure: ``kind`` is the exception's type, as the worker reports it."""

    def __init__(self, step: str, kind: str, message: str) -> None:
        super().__init__(f"{step}: {kind}: {message}")
        self.step, self.kind, self.message = step, kind, message


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def funcignore_patterns(root: Path) -> list[str]:
    """The patterns of ``root/.funcignore`` (gitignore syntax; this project uses no negations or anchors)."""
    path = root / ".funcignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def funcignored(relative: str, patterns: list[str], *, is_dir: bool = False) -> bool:
    """Whether the deploy leaves out ``relative`` (a POSIX path): a pattern matches any of its components, and a
    pattern ending in ``/`` only a folder (a component before the last, or the last when ``is_dir``)."""
    parts = relative.split("/")
    for raw in patterns:
        dir_only = raw.endswith("/")
        pattern = raw.strip("/")
        for i, part in enumerate(parts):
            if dir_only and i == len(parts) - 1 and not is_dir:
                continue
            if fnmatch.fnmatch(part, pattern):
                return True
    return False


def deploy_package(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` less what its ``.funcignore`` excludes (and any virtual environment)."""
    patterns = [*funcignore_patterns(source), ".venv*/"]

    def copy(folder: Path) -> None:
        for entry in folder.iterdir():
            relative = entry.relative_to(source)
            if entry.is_symlink() or funcignored(relative.as_posix(), patterns, is_dir=entry.is_dir()):
                continue
            if entry.is_dir():
                (target / relative).mkdir()
                copy(entry)
            else:
                shutil.copy2(entry, target / relative)

    target.mkdir(parents=True, exist_ok=True)
    copy(source)
    return target


def _typed_json(value: Any) -> Any:
    return load_protos().TypedData(json=json.dumps(value))


@dataclass
class _Function:
    name: str
    function_id: str
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def binding(self, kind: str) -> tuple[str, dict[str, Any]]:
        for name, binding in self.bindings.items():
            if binding["type"] == kind:
                return name, binding
        raise KeyError(f"{self.name} has no {kind} binding")


class FunctionsHost:
    """``with FunctionsHost(app_dir, environ) as host: host.http(...)``; see the module docstring."""

    def __init__(
        self,
        app_dir: Path,
        environ: dict[str, str],
        *,
        placeholder: bool = True,
        import_profile: bool = False,
        log: Path | None = None,
    ) -> None:
        self.app_dir, self.environ, self.placeholder = app_dir, environ, placeholder
        self.import_profile = import_profile
        """``PYTHONPROFILEIMPORTTIME`` (``-X importtime``) in the worker: every import it makes goes to the log."""
        self.protos = load_protos()
        self.function_key = secrets.token_urlsafe(24)
        self.functions: dict[str, _Function] = {}
        self._outgoing: queue.Queue[Any] = queue.Queue()
        self._waiting: dict[str, futures.Future[Any]] = {}
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="functions-host-")
        self.log = log or Path(self._tmp.name) / "worker.log"
        self.worker_metadata: Any = None
        self._server: Any = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- the gRPC side
    def _event_stream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        def read() -> None:
            try:
                for message in requests:
                    if message.WhichOneof("content") == "start_stream":
                        self._started.set()
                        continue
                    with self._lock:
                        waiting = self._waiting.pop(message.request_id, None)
                    if waiting is not None:
                        waiting.set_result(message)
            except Exception:  # the stream ended (the worker exited): anyone still waiting fails below
                pass
            finally:
                self._outgoing.put(None)
                with self._lock:
                    for waiting in self._waiting.values():
                        waiting.set_exception(RuntimeError(f"the worker closed the stream; log:\n{self.log_tail()}"))
                    self._waiting.clear()

        threading.Thread(target=read, daemon=True).start()
        while (message := self._outgoing.get()) is not None:
            yield message

    def _request(self, step: str, timeout: float = TIMEOUT_S, **content: Any) -> Any:
        request_id = str(uuid.uuid4())
        answer: futures.Future[Any] = futures.Future()
        with self._lock:
            self._waiting[request_id] = answer
        self._outgoing.put(self.protos.StreamingMessage(request_id=request_id, **content))
        message = answer.result(timeout=timeout)
        response = getattr(message, message.WhichOneof("content"))
        result = getattr(response, "result", None)
        if result is not None and result.status == self.protos.StatusResult.Failure:
            raise WorkerError(step, result.exception.source or "", result.exception.message)
        return response

    # -- lifecycle
    def __enter__(self) -> FunctionsHost:
        import grpc

        protos = self.protos
        host = self

        class Servicer(protos.FunctionRpcServicer):  # type: ignore[misc, name-defined]
            def EventStream(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:  # noqa: N802
                return host._event_stream(request_iterator, context)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        protos.add_FunctionRpcServicer_to_server(Servicer(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        try:
            self._start_worker(port)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._outgoing.put(None)
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._server is not None:
            self._server.stop(grace=None)
        self._tmp.cleanup()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def imports_since(self, offset: int) -> dict[str, int]:
        """Modules the worker imported after log byte ``offset`` -> self time in microseconds (``import_profile``)."""
        with self.log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        found: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[0].strip().isdigit():
                found[parts[2].strip()] = int(parts[0])
        return found

    def _start_worker(self, port: int) -> None:
        placeholder_dir = Path(self._tmp.name) / "placeholder"
        placeholder_dir.mkdir()
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FUNCTIONS_RPC_PROTOS": str(PROTOS)}
        worker_env = base if self.placeholder else {**base, **self.environ}
        if self.import_profile:
            worker_env = {**worker_env, "PYTHONPROFILEIMPORTTIME": "1"}
        command = [
            str(PYTHON),
            "-P",  # the proxy's own folder (tests/) is not on the app's path: only the deployed package is
            str(PROXY),
            "--host=127.0.0.1",
            f"--port={port}",
            f"--workerId={uuid.uuid4()}",
            f"--requestId={uuid.uuid4()}",
            "--grpcMaxMessageLength=2147483647",
        ]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                env=worker_env,
                cwd=placeholder_dir if self.placeholder else self.app_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not self._started.wait(TIMEOUT_S):
            raise RuntimeError(f"the worker never opened its stream; log:\n{self.log_tail()}")
        protos = self.protos
        capabilities = {"RpcHttpBodyOnly": "true", "RawHttpBodyBytes": "true", "TypedDataCollection": "true"}
        first_dir = placeholder_dir if self.placeholder else self.app_dir
        init = self._request(
            "WorkerInitRequest",
            worker_init_request=protos.WorkerInitRequest(
                host_version="4.1040.0",
                capabilities=capabilities,
                function_app_directory=str(first_dir),
                worker_directory=str(PROXY.parent),
            ),
        )
        self.worker_metadata = init.worker_metadata
        if self.placeholder:
            self._request(
                "FunctionEnvironmentReloadRequest",
                function_environment_reload_request=protos.FunctionEnvironmentReloadRequest(
                    environment_variables={**base, **self.environ}, function_app_directory=str(self.app_dir)
                ),
            )
        metadata = self._request(
            "FunctionsMetadataRequest",
            functions_metadata_request=protos.FunctionsMetadataRequest(function_app_directory=str(self.app_dir)),
        )
        for entry in metadata.function_metadata_results:
            bindings = {name: json.loads(raw) for raw in entry.raw_bindings for name in [json.loads(raw)["name"]]}
            self.functions[entry.name] = _Function(entry.name, entry.function_id, bindings)
            self._request(
                "FunctionLoadRequest",
                function_load_request=protos.FunctionLoadRequest(function_id=entry.function_id, metadata=entry),
            )

    # -- invocations
    def invoke(
        self,
        name: str,
        input_data: dict[str, Any],
        trigger_metadata: dict[str, Any] | None = None,
        *,
        traceparent: str | None = None,
    ) -> Any:
        """One ``InvocationRequest``; returns the ``InvocationResponse`` (raises :class:`WorkerError` on failure).

        Like the host, it sends the invocation's trace context (W3C ``traceparent`` of the host's span for
        this execution; a fresh one unless ``traceparent`` is given)."""
        protos = self.protos
        function = self.functions[name]
        traceparent = traceparent or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        return self._request(
            f"InvocationRequest {name}",
            invocation_request=protos.InvocationRequest(
                invocation_id=str(uuid.uuid4()),
                function_id=function.function_id,
                input_data=[protos.ParameterBinding(name=k, data=v) for k, v in input_data.items()],
                trigger_metadata=trigger_metadata or {},
                trace_context=type(protos.InvocationRequest().trace_context)(trace_parent=traceparent, trace_state=""),
            ),
        )

    def http(
        self,
        method: str,
        path: str,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        *,
        key: bool = True,
        traceparent: str | None = None,
    ) -> HttpResponse:
        """A request for ``<path>`` as the host forwards it to the HTTP-triggered function: the URL and ``Host`` of
        the site (``WEBSITE_HOSTNAME``, else ``localhost:7071`` as Core Tools serves), the caller's headers."""
        protos = self.protos
        (function,) = [
            f for f in self.functions.values() if any(b["type"] == "httpTrigger" for b in f.bindings.values())
        ]
        arg, binding = function.binding("httpTrigger")
        site = self.environ.get("WEBSITE_HOSTNAME")  # Azure sets it; requests arrive under that name over https
        url = f"https://{site}{path}" if site else f"http://localhost:7071{path}"
        sent = {"host": urlsplit(url).netloc, **{k.lower(): v for k, v in (headers or {}).items()}}
        query = dict(parse_qsl(urlsplit(url).query))
        needs_key = str(binding.get("authLevel", "function")).lower() != "anonymous"
        if needs_key and key:
            sent["x-functions-key"] = self.function_key
        if needs_key and self.function_key not in {sent.get("x-functions-key"), query.get("code")}:
            return HttpResponse(401, {}, b"")  # the host answers; the worker never sees it
        data = body.encode() if isinstance(body, str) else body
        request = protos.TypedData(
            http=protos.RpcHttp(
                method=method.upper(), url=url, headers=sent, query=query, body=protos.TypedData(bytes=data)
            )
        )
        response = self.invoke(function.name, {arg: request}, traceparent=traceparent)
        http = response.return_value.http
        which = http.body.WhichOneof("data")
        raw = getattr(http.body, which) if which else b""
        return HttpResponse(
            int(http.status_code or 200), dict(http.headers), raw.encode() if isinstance(raw, str) else raw
        )

    def queue(
        self,
        name: str,
        stored: str,
        *,
        message_id: str | None = None,
        dequeue_count: int = 1,
        traceparent: str | None = None,
    ) -> Any:
        """Deliver a queue message as stored in the queue (base64 text) to the function ``name``."""
        try:
            text = base64.b64decode(stored, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise WorkerError("host", "FormatException", f"the message is not base64: {exc}") from exc
        arg, _ = self.functions[name].binding("queueTrigger")
        now = datetime.now(UTC)
        metadata: dict[str, Any] = {
            "Id": self.protos.TypedData(string=message_id or str(uuid.uuid4())),
            "DequeueCount": _typed_json(dequeue_count),
            "PopReceipt": self.protos.TypedData(string=secrets.token_urlsafe(12)),
            "InsertionTime": _typed_json(now.isoformat()),
            "ExpirationTime": _typed_json((now + timedelta(days=7)).isoformat()),
            "NextVisibleTime": _typed_json((now + timedelta(seconds=30)).isoformat()),
        }
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):  # the host's merge of a JSON body into the trigger metadata
            for key, value in document.items():
                existing = next((k for k in metadata if k.lower() == key.lower()), key)
                metadata[existing] = _typed_json(value)
        return self.invoke(name, {arg: self.protos.TypedData(string=text)}, metadata, traceparent=traceparent)

    def timer(self, name: str, *, past_due: bool = False) -> Any:
        arg, _ = self.functions[name].binding("timerTrigger")
        info = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None, "IsPastDue": past_due}
        return self.invoke(name, {arg: _typed_json(info)})
