"""``authz serve`` in one process: the check service, its health, the
policy reloader (and the shadow policy's) and telemetry, behind a transport;
SIGTERM/SIGINT drain it. (Several processes on one port: ``workers``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Mode
from authz.ext_authz.attributes import GatewaySettings
from authz.ext_authz.callers import CallerCheck
from authz.ext_authz.check import SERVICE_NAME, CheckService
from authz.ext_authz.grpcio_transport import GrpcioTransport
from authz.ext_authz.health import HealthState
from authz.ext_authz.tls import TlsFiles
from authz.policy import PolicyError
from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS, CompileOptions
from authz.policy.reload import PolicyReloader
from authz.telemetry import Telemetry, from_environment
from authz.telemetry.state_store import DEFAULT_TTL

__all__ = ["EXIT_BAD_POLICY", "SERVICE_NAME", "ServeConfig", "Server", "serve", "telemetry_of"]

EXIT_BAD_POLICY = 2
log = logging.getLogger("authz.server")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    policy_paths: tuple[str, ...]
    listen: str = "127.0.0.1:9191"
    workers: int = 1
    reflection: bool = True
    grace_seconds: float = 5.0
    check_timeout: float = 0.1  # below Envoy's ext_authz default of 200 ms
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    decision_log: str | None = None  # a path, or "-" for stdout
    decision_log_max_bytes: int = 100 * 2**20
    metrics_port: int | None = None  # Prometheus scrape endpoint (worker i: port + i)
    metrics_bind: str = "127.0.0.1"
    first_seen_capacity: int = 100_000
    # First sightings judged by the fleet: a Redis/Valkey URL (telemetry.state_store), the pairs' TTL,
    # a round trip's timeout
    state_store: str | None = None
    first_seen_ttl: float = DEFAULT_TTL
    state_store_timeout: float = 1.0
    load_before_listen: bool = False  # workers sharing a port: see serve()
    mode: Mode = Mode.ENFORCE  # DRY_RUN: the whole zone in dry-run (the guards stay enforced)
    max_exception_days: float = DEFAULT_MAX_EXCEPTION_DAYS
    watch: bool = True  # reload when the policy files change (SIGHUP reloads either way)
    reload_debounce_ms: int = 50
    reload_poll_seconds: float | None = None  # poll instead of inotify (network filesystems)
    transport: str = "grpcio"  # or "pyvoy": Envoy's HTTP/2 server runs the check in-process
    max_restarts: int = 5  # --workers: more unexpected worker deaths than this within restart_window
    restart_window: float = 60.0  # seconds: a crash loop, authz stops (exit 1)
    # mTLS on ``listen`` (all three, with allow_callers) and a plaintext health-only listener
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    allow_callers: tuple[str, ...] = ()
    health_listen: str | None = None
    # A candidate policy set every check is also evaluated against, after its answer (telemetry.shadow)
    shadow_policy_paths: tuple[str, ...] = ()

    @property
    def tls(self) -> TlsFiles | None:
        if self.tls_cert is None or self.tls_key is None or self.client_ca is None:
            return None
        return TlsFiles(self.tls_cert, self.tls_key, self.client_ca)

    def compile_options(self) -> CompileOptions:
        return CompileOptions(mode=self.mode, max_exception_days=self.max_exception_days)

    def shadow_compile_options(self) -> CompileOptions:
        """The shadow set's: its files' own modes (the zone-wide ``mode`` is the served policy's)."""
        return CompileOptions(max_exception_days=self.max_exception_days)

    def to_json(self) -> str:
        """The configuration for another process (a pyvoy worker inside Envoy)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        gateway = self.gateway
        fields["gateway"] = {
            "gateway_names": sorted(gateway.gateway_names),
            "trusted_xfcc_peers": sorted(gateway.trusted_xfcc_peers),
            "zone": gateway.zone,
            "sni_port": gateway.sni_port,
            "rate_limit_headers": gateway.rate_limit_headers,
        }
        fields["mode"] = self.mode.value
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        fields = json.loads(text)
        fields["policy_paths"] = tuple(fields["policy_paths"])
        fields["allow_callers"] = tuple(fields["allow_callers"])
        fields["shadow_policy_paths"] = tuple(fields["shadow_policy_paths"])
        fields["gateway"] = GatewaySettings.create(**fields["gateway"])
        fields["mode"] = Mode(fields["mode"])
        return cls(**fields)


class Server:
    """One process's service: ``start`` listens (NOT_SERVING), ``load`` serves
    the policy (SERVING), ``watch`` reloads it (and the shadow policy), ``stop``
    drains. ``service`` is what transports call. With ``in_process_transport``
    false, something else serves ``service`` (pyvoy: Envoy)."""

    def __init__(
        self, config: ServeConfig, telemetry: Telemetry | None = None, *, in_process_transport: bool = True
    ) -> None:
        self.config = config
        self.service = CheckService(config.gateway, config.check_timeout, telemetry)
        self.health = HealthState()
        self.reloader = PolicyReloader(
            config.policy_paths,
            config.compile_options(),
            self._swap,
            debounce_ms=config.reload_debounce_ms,
            poll_seconds=config.reload_poll_seconds,
        )
        # The shadow set reloads by itself, from its own files; only telemetry evaluates it.
        self.telemetry = telemetry
        self.shadow_reloader = (
            PolicyReloader(
                config.shadow_policy_paths,
                config.shadow_compile_options(),
                self._swap_shadow,
                debounce_ms=config.reload_debounce_ms,
                poll_seconds=config.reload_poll_seconds,
                what="shadow policy",
            )
            if config.shadow_policy_paths
            else None
        )
        # With mTLS, only these callers get decisions (the transport finds the peer's ID).
        self.callers = CallerCheck(config.allow_callers) if config.tls is not None else None
        if telemetry is not None:
            reloader = self.reloader
            telemetry.metrics.observe_policy(lambda: self.service.policy, lambda: reloader.counts,
                                             lambda: reloader.rejected)  # fmt: skip
            if self.callers is not None:
                telemetry.metrics.observe_refused_callers(self.callers.refused)
            shadow = self.shadow_reloader
            if shadow is not None:
                telemetry.metrics.observe_shadow_reloads(lambda: shadow.counts)
        self.transport = (
            GrpcioTransport(config, self.service, self.health, self.callers) if in_process_transport else None
        )

    async def start(self) -> int:
        """Listen; the port bound (0 for a Unix socket)."""
        assert self.transport is not None, "this Server's transport runs elsewhere"
        return await self.transport.start()

    async def load(self) -> CompiledPolicy:
        """Load and compile the policy (and the shadow policy) off the event
        loop, then serve it; raises PolicyError (a bad shadow set too)."""
        compiled = await self.reloader.load()
        if self.shadow_reloader is not None:
            try:
                shadow = await self.shadow_reloader.load()
            except PolicyError:
                log.error("the shadow policy (--shadow-policy) cannot be loaded:")
                raise
            log.info("shadow policy %s: %d policies, evaluated after each answer",
                     shadow.version, len(shadow.services))  # fmt: skip
        self.health.serving()
        return compiled

    async def watch(self, stop: asyncio.Event, *, files: bool = True) -> None:
        """Reload the policy and the shadow policy, each from its own files, until ``stop``."""
        reloaders = [self.reloader] if self.shadow_reloader is None else [self.reloader, self.shadow_reloader]
        await asyncio.gather(*(reloader.watch(stop, files=files) for reloader in reloaders))

    def request_reload(self) -> None:
        """Reread both sets (SIGHUP); each changes only if its files did."""
        self.reloader.request()
        if self.shadow_reloader is not None:
            self.shadow_reloader.request()

    def _swap(self, compiled: CompiledPolicy) -> None:
        self.service.policy = compiled  # one assignment: a check sees the old version or the new

    def _swap_shadow(self, compiled: CompiledPolicy) -> None:
        if self.telemetry is not None:
            self.telemetry.shadow.policy = compiled

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight checks finish within the grace period."""
        self.health.drain()
        if self.transport is not None:
            await self.transport.stop(self.config.grace_seconds if grace is None else grace)


def telemetry_of(config: ServeConfig) -> Telemetry | None:
    """The process's telemetry (its state store's writer starts once the policy serves: ``start_state_store``)."""
    return from_environment(
        config.decision_log,
        config.decision_log_max_bytes,
        config.metrics_port,
        config.first_seen_capacity,
        config.metrics_bind,
        state_store=config.state_store,
        first_seen_ttl=config.first_seen_ttl,
        state_store_timeout=config.state_store_timeout,
    )


async def serve(
    config: ServeConfig, stop: asyncio.Event | None = None, on_serving: Callable[[], None] | None = None
) -> int:
    """Serve until SIGTERM, SIGINT or ``stop``; then drain. The exit status.
    ``on_serving`` is called once the policy is loaded and the port is open."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    telemetry = telemetry_of(config)
    server = Server(config, telemetry)
    try:
        # One process listens first, to report NOT_SERVING while it loads. A
        # worker sharing the port loads first: the kernel would hand it
        # connections before it had a policy.
        compiled = await server.load() if config.load_before_listen else None
        try:
            port = await server.start()
        except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
            log.error("cannot listen on %s: %s", config.listen, exc)
            await server.stop(0)
            return EXIT_BAD_POLICY
        where = (
            config.listen
            if config.listen.startswith("unix:")
            else f"{config.listen.rpartition(':')[0]}:{port}"
        )
        log.info("listening on %s (pid %d)", where, os.getpid())
        if compiled is None:
            compiled = await server.load()
    except PolicyError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        await server.stop(0)
        return EXIT_BAD_POLICY
    except (RuntimeError, ValueError) as exc:  # grpc cannot bind (in use, no such address); bad TLS files
        log.error("cannot listen on %s: %s", config.listen, exc)
        await server.stop(0)
        return EXIT_BAD_POLICY
    mode = " (zone-wide dry-run)" if config.mode is Mode.DRY_RUN else ""
    log.info("serving policy %s: %d policies%s", compiled.version, len(compiled.services), mode)
    if telemetry is not None:
        telemetry.start_state_store()  # on this loop, after the answers' own start-up
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)
    reloads = asyncio.create_task(server.watch(stop, files=config.watch))
    if on_serving is not None:
        on_serving()
    await stop.wait()
    await reloads
    log.info("draining for up to %.1f s", config.grace_seconds)
    await server.stop()
    if telemetry is not None:
        await telemetry.aclose()  # the state store's last answers; flush spans and the decision log
    log.info("stopped")
    return 0
