"""Runs the web UI's ASGI application under uvicorn on a background thread (``mreg serve``, ``mreg web``, tests)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from mreg.client.web.app import WebConfig, create_app

log = logging.getLogger(__name__)


@dataclass
class RunningWeb:
    """A web UI serving on ``host:port`` until ``stop()``."""

    host: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    app: Starlette

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.app.state.ui.stopping.set()
        self.server.should_exit = True
        self.thread.join(timeout)


def split_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:8080" -> ("127.0.0.1", 8080); "[::1]:0" -> ("::1", 0)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{listen!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    if int(port) > 65535:
        raise ValueError(f"{listen!r}: the port must be 0 to 65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def start(config: WebConfig, listen: str, *, startup_timeout: float = 10.0) -> RunningWeb:
    """Binds ``listen`` (port 0: a free port) and serves the web UI on a daemon thread; returns once it accepts.

    Raises:
        OSError: the address cannot be bound (in use, not local).
        RuntimeError: the server did not start within ``startup_timeout`` seconds.
    """
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this (Linux): without it a keep-alive response's body waits ~40 ms for the
    # browser's delayed ACK of its headers (Nagle), on every request after a connection's first.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # Server-sent event streams stay open: stop them after a moment instead of waiting for the browsers.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(uvicorn_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mreg-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the web UI did not start on {listen}")
        time.sleep(0.02)
    log.info("web UI listening on %s:%s", host, bound_port)
    return RunningWeb(host, bound_port, server, thread, app)
