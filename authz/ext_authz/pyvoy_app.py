"""The pyvoy transport's application: an ASGI app that Envoy (through
pyvoy's dynamic module) runs in-process, speaking unary gRPC by hand over
Envoy's own HTTP/2 (framing, ``grpc-timeout``, trailers, Trailers-Only
errors) for ``/envoy.service.auth.v3.Authorization/Check`` and
``grpc.health.v1.Health`` (Check and Watch). No reflection.

The launcher (``pyvoy_transport``) passes the serve configuration in
``AUTHZ_SERVE_CONFIG`` and a control directory in ``AUTHZ_CONTROL_DIR``: a
file ``reload`` touched there rereads the policy (SIGHUP), a file ``drain``
marks health NOT_SERVING before Envoy stops accepting; the app writes
``serving`` once it serves, or ``failed`` (the exit status) when it cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from authz.ext_authz.check import MAX_MESSAGE_BYTES, OK, SERVICE_NAME
from authz.ext_authz.health import NOT_SERVING, SERVICE_UNKNOWN, SERVICES
from authz.ext_authz.server import EXIT_BAD_POLICY, ServeConfig, Server, telemetry_of
from authz.policy import PolicyError
from authz.telemetry import Telemetry

__all__ = ["app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CHECK_PATH = f"/{SERVICE_NAME}/Check".encode()
CANCELLED, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 1, 3, 5, 8, 12, 13
_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_START = {"type": "http.response.start", "status": 200, "trailers": True,
          "headers": [(b"content-type", b"application/grpc")]}  # fmt: skip
_TRAILERS_OK = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}
log = logging.getLogger("authz.server")
CONTROL_POLL = 0.02  # seconds between looks at the control directory


class GrpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _grpc_timeout(headers: list[tuple[bytes, bytes]]) -> float | None:
    """Seconds left by the caller's ``grpc-timeout`` (``250m``), None without one."""
    for name, value in headers:
        if name == b"grpc-timeout" and 1 < len(value) <= 9 and value[:-1].isdigit() and value[-1] in _UNITS:
            return int(value[:-1]) * _UNITS[value[-1]]
    return None


def _peer_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The verified client certificate's URI SAN, which Envoy's TLS listener puts
    in ``x-forwarded-client-cert`` (SANITIZE_SET: a client's own value is
    replaced; the health listener drops it), else None."""
    for name, value in headers:
        if name == b"x-forwarded-client-cert":
            for part in value.decode("utf-8", "replace").split(";"):
                key, _, found = part.partition("=")
                if key == "URI":
                    return found.strip('"') or None
    return None


async def _read_message(receive: Receive) -> bytes:
    """The one message of a unary call, checked against gRPC's framing."""
    body = b""
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise GrpcError(CANCELLED, "the caller went away")
        chunk: bytes = event.get("body", b"")
        body += chunk
        if len(body) > MAX_MESSAGE_BYTES + 5:
            raise GrpcError(RESOURCE_EXHAUSTED, f"a message is at most {MAX_MESSAGE_BYTES} bytes")
        if not event.get("more_body", False):
            break
    if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
        raise GrpcError(INTERNAL, "one unary gRPC message expected")
    if body[0] != 0:
        raise GrpcError(UNIMPLEMENTED, "compressed messages are not supported")
    return body[5:]


async def _disconnected(receive: Receive) -> None:
    """Returns once the caller has gone (other events after the request, such as
    an empty end of body, are not a disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_status(send: Send, code: int, message: str) -> None:
    """A Trailers-Only response: the status in the only headers."""
    headers = [(b"content-type", b"application/grpc"), (b"grpc-status", str(code).encode()),
               (b"grpc-message", quote(message, safe=" ").encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_message(send: Send, message: bytes) -> None:
    await send(_START)
    await send({"type": "http.response.body", "body": _frame(message), "more_body": False})
    await send(_TRAILERS_OK)


class App:
    """The ASGI application: one Server (check service, health, reloader, telemetry) per Envoy process."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.telemetry: Telemetry | None = None
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self._claiming, self._claimed = threading.Lock(), False
        self.routes: dict[bytes, Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            CHECK_PATH: self.check,
            b"/grpc.health.v1.Health/Check": self.health_check,
            b"/grpc.health.v1.Health/Watch": self.health_watch,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope.get("http_version") != "2":
                await send({"type": "http.response.start", "status": 505, "headers": []})
                await send({"type": "http.response.body", "body": b"gRPC needs HTTP/2\n"})
                return
            route = self.routes.get(scope.get("raw_path") or scope["path"].encode())
            if route is None:
                await _send_status(send, UNIMPLEMENTED, "unknown method")
                return
            await route(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def check(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            data = await _read_message(receive)
        except GrpcError as error:
            await _send_status(send, error.code, error.message)
            return
        server = self.server
        remaining = _grpc_timeout(scope["headers"])
        if server is None or server.service.policy is None:
            # A worker sharing the port may take a call before its policy is in:
            # wait for it within the call's budget, rather than deny it unheard.
            # (Polled: the policy is loaded on the lifespan's loop, not this one.)
            deadline = time.monotonic() + min(remaining or 1.0, self.check_timeout)
            while self.server is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            server = self.server
        if server is None:
            await _send_status(send, INTERNAL, "authz is starting")
            return
        callers = server.callers
        if callers is not None:  # mTLS: only allowed callers get decisions
            refusal = callers.refusal(_peer_id(scope["headers"]))
            if refusal is not None:
                await _send_status(send, refusal.status, refusal.message)
                return
        outcome = server.service.check(data, remaining)
        if outcome.status != OK:
            await _send_status(send, outcome.status, outcome.message)
            return
        await _send_message(send, outcome.body)
        server.service.after_response()  # the response is with Envoy: telemetry's turn

    @property
    def check_timeout(self) -> float:
        return self.server.config.check_timeout if self.server is not None else 0.1

    def _health_service(self, message: bytes) -> str:
        """``HealthCheckRequest.service`` (field 1) from its bytes."""
        if not message:
            return ""
        if message[0] != 0x0A or len(message) < 2 or message[1] > 0x7F or len(message) != 2 + message[1]:
            raise GrpcError(INVALID_ARGUMENT, "not a HealthCheckRequest")
        return message[2:].decode("utf-8", "replace")

    def _status(self, service: str) -> int:
        if self.server is not None:
            return self.server.health.of(service)
        return NOT_SERVING if service in SERVICES else SERVICE_UNKNOWN  # still starting

    async def health_check(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            service = self._health_service(await _read_message(receive))
        except GrpcError as error:
            await _send_status(send, error.code, error.message)
            return
        status = self._status(service)
        if status == SERVICE_UNKNOWN:
            await _send_status(send, NOT_FOUND, f"unknown service {service!r}")
            return
        await _send_message(send, bytes([0x08, status]))

    async def health_watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            service = self._health_service(await _read_message(receive))
        except GrpcError as error:
            await _send_status(send, error.code, error.message)
            return
        await send(_START)
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def watcher(_: int) -> None:  # from whichever pyvoy thread changes health (the drain's)
            loop.call_soon_threadsafe(changed.set)

        unwatch = self.server.health.watch(watcher) if self.server is not None else None
        gone = asyncio.ensure_future(_disconnected(receive))
        last = None
        try:
            while not gone.done():
                status = self._status(service)
                if status != last:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": _frame(bytes([0x08, status])),
                            "more_body": True,
                        }
                    )
                    last = status
                waiting = asyncio.ensure_future(changed.wait())
                await asyncio.wait({gone, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                changed.clear()
        finally:
            gone.cancel()
            if unwatch is not None:
                unwatch()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """pyvoy runs a lifespan per listener (the health listener is a second
        one), each on its own event loop: the first starts authz, the others
        share it and leave its shutdown to the first."""
        with self._claiming:
            owner, self._claimed = not self._claimed, True
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    if owner:
                        await self.startup()
                except Exception as error:
                    self.failed(error)
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if owner:
                    await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def failed(self, error: Exception) -> None:
        """Log why authz could not start, and tell the launcher, which stops this Envoy:
        it would go on running without the app. A bad policy ends with the status it would alone."""
        if isinstance(error, PolicyError):
            for problem in error.problems:
                log.error("%s", problem)
        else:
            log.error("authz did not start", exc_info=error)
        control = os.environ.get("AUTHZ_CONTROL_DIR")
        if control:
            failed = Path(control) / "failed"
            failed.with_suffix(".tmp").write_text(
                str(EXIT_BAD_POLICY if isinstance(error, PolicyError) else 1)
            )
            failed.with_suffix(".tmp").replace(failed)  # whole, never half written

    async def startup(self) -> None:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
        )
        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # a line for every file event otherwise
        config = ServeConfig.from_json(os.environ["AUTHZ_SERVE_CONFIG"])
        telemetry = telemetry_of(config)
        server = Server(config, telemetry, in_process_transport=False)
        compiled = await server.load()
        self.server, self.telemetry = server, telemetry
        if telemetry is not None:
            telemetry.start_state_store()  # on this loop (the checks'), its I/O never awaited by one
        log.info(
            "serving policy %s: %d policies (pyvoy, pid %d)",
            compiled.version,
            len(compiled.services),
            os.getpid(),
        )
        self.tasks.append(asyncio.create_task(server.watch(self.stopping, files=config.watch)))
        control = os.environ.get("AUTHZ_CONTROL_DIR")
        if control:
            (Path(control) / "serving").touch()  # the launcher tells when every worker serves
            self.tasks.append(asyncio.create_task(self.control(Path(control))))

    async def control(self, directory: Path) -> None:
        """``reload`` touched: reread the policy; ``drain`` created: NOT_SERVING from now on.
        Looked at every ``CONTROL_POLL`` seconds (two stat calls) rather than watched: the
        launcher may touch a file the moment ``serving`` appears, before a watch would be in place."""
        reloaded: int | None = None  # the mtime of ``reload`` last acted on (one already there counts)
        while not self.stopping.is_set() and self.server is not None:
            if not self.server.health.draining and (directory / "drain").exists():
                self.server.health.drain()
                log.info("draining")
            try:
                touched: int | None = (directory / "reload").stat().st_mtime_ns
            except FileNotFoundError:
                touched = None
            if touched != reloaded:
                reloaded = touched
                self.server.request_reload()  # nothing to do if the files did not change
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), CONTROL_POLL)

    async def shutdown(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            try:
                await asyncio.wait_for(task, 5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.telemetry is not None:
            await self.telemetry.aclose()  # the state store's last answers; flush spans and the decision log
        log.info("stopped")


app = App()
