"""The worker side of the Functions host stand-in: a gRPC client that runs Azure's Python 3.13+ worker library.

Run by :mod:`tests.functions_host` with the Function App's interpreter (``.venv-functions``: Python 3.13,
``requirements.txt`` as Azure installs it, the pinned ``azure-functions-runtime``), with the arguments the
Functions host gives a language worker (``--host --port --workerId --requestId --grpcMaxMessageLength``).

``azure-functions-runtime`` has no transport of its own: on Azure a thin proxy worker owns the host's gRPC
stream and hands each request to the library's ``worker_init_request``, ``functions_metadata_request``,
``function_load_request``, ``invocation_request`` and ``function_environment_reload_request``, wrapped as
an object with ``.request`` (the ``StreamingMessage``) and ``.properties`` (``protos``, ``host``). This
script is that proxy, and nothing more: every decision about the app (indexing, binding conversion,
invocation) is the library's own. Requests are served concurrently, as the host sends them.

The compiled FunctionRpc protocol is imported from the folder named by ``FUNCTIONS_RPC_PROTOS`` (put there by
``make functions-venv`` from the ``azure-functions-runtime-v1`` wheel, never pip-installed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

PROTOS_ENV = "FUNCTIONS_RPC_PROTOS"

_RESPONSES = {
    "worker_init_request": ("worker_init_response", "worker_init_request"),
    "functions_metadata_request": ("function_metadata_response", "functions_metadata_request"),
    "function_load_request": ("function_load_response", "function_load_request"),
    "invocation_request": ("invocation_response", "invocation_request"),
    "function_environment_reload_request": (
        "function_environment_reload_response",
        "function_environment_reload_request",
    ),
}
"""Request field -> (response field, handler of ``azure_functions_runtime``)."""


class WorkerRequest:
    """What the library's handlers take: the host's message and the proxy's properties."""

    def __init__(self, name: str, request: Any, properties: dict[str, Any]) -> None:
        self.name = name
        self.request = request
        self.properties = properties


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workerId", required=True)
    parser.add_argument("--requestId", required=True)
    parser.add_argument("--grpcMaxMessageLength", type=int, default=2**31 - 1)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.environ[PROTOS_ENV])
    import azure_functions_rpc as protos
    import azure_functions_runtime as library  # type: ignore[import-not-found]
    import grpc

    library.start_threadpool_executor()
    options = [
        ("grpc.max_send_message_length", args.grpcMaxMessageLength),
        ("grpc.max_receive_message_length", args.grpcMaxMessageLength),
    ]
    host = f"{args.host}:{args.port}"
    async with grpc.aio.insecure_channel(host, options=options) as channel:
        call = protos.FunctionRpcStub(channel).EventStream()
        write_lock = asyncio.Lock()

        async def send(message: Any) -> None:
            async with write_lock:
                await call.write(message)

        await send(
            protos.StreamingMessage(request_id=args.requestId, start_stream=protos.StartStream(worker_id=args.workerId))
        )

        async def answer(message: Any, kind: str) -> None:
            response_field, handler = _RESPONSES[kind]
            request = WorkerRequest(kind, message, {"protos": protos, "host": host})
            response = await getattr(library, handler)(request)
            await send(protos.StreamingMessage(request_id=message.request_id, **{response_field: response}))

        pending: set[asyncio.Task[None]] = set()
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                break
            kind = message.WhichOneof("content")
            if kind == "worker_terminate":
                break
            if kind == "worker_status_request":
                await send(
                    protos.StreamingMessage(
                        request_id=message.request_id, worker_status_response=protos.WorkerStatusResponse()
                    )
                )
            elif kind in _RESPONSES:
                task = asyncio.create_task(answer(message, kind))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                logging.warning("proxy: no handler for %s", kind)
        await call.done_writing()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(_arguments(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
