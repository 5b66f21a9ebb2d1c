"""The baseline for bench/server.py: a grpc.aio server whose Check returns a
constant, pre-serialized OK CheckResponse; the gRPC stack's own cost."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal

import grpc

OK = b"\x0a\x00"  # CheckResponse{status: {}}


async def _check(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return OK


async def _serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.auth.v3.Authorization", {"Check": grpc.unary_unary_rpc_method_handler(_check)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def _worker(listen: str) -> None:
    asyncio.run(_serve(listen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9192")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(args.listen,)) for _ in range(args.workers)]
    for process in workers:
        process.start()
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in workers])
    for process in workers:
        process.join()


if __name__ == "__main__":
    main()
