"""The dashboard's HTTP server: the page, its script, and the JSON API; GET only.

A standard-library :class:`~http.server.ThreadingHTTPServer` (threads are fine in this
consumer; the core has none of its own but the store's refresh). One more thread refreshes
the :class:`~._model.Board` from the store on a timer; requests only read its documents.
Bounded: connections at once, the path's length, each connection's idle time (a slow or
dead client holds its own thread, never the server), and the request (no body is read).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import Rollouts, Steering
from ._model import SCHEMA_VERSION, Board, dumps

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_CONNECTIONS = 64
"""Connections served at once; one more is closed at once."""
MAX_PATH = 8192
"""The longest request path answered (a longer one: 414)."""
IDLE_TIMEOUT_S = 10.0
"""How long a connection may keep the server waiting for its next bytes."""

_FILES = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
_SECURITY = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    """The host of a ``Host`` header, without its port."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # closing never waits for a slow client

    def __init__(self, address: tuple[str, int], board: Board, files: dict[str, bytes]) -> None:
        self.board = board
        self.files = files
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.loopback_only = _loopback(address[0])
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # too many at once: refused, not queued
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or too slow is no error of the server's; anything else is printed."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = IDLE_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "stagedroll-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing per request (a page polls every second)."""

    def end_headers(self) -> None:
        """Every response carries the security headers, ``http.server``'s own errors too."""
        for key, value in _SECURITY.items():
            self.send_header(key, value)
        super().end_headers()

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str, **headers: str) -> None:
        body = dumps({"schema_version": SCHEMA_VERSION, "error": message})
        self._send(status, body, "application/json", **headers)

    def _allowed_host(self) -> bool:
        """Refuse a name that is not the loopback's when bound there (DNS rebinding)."""
        if not self.server.loopback_only:
            return True
        header = self.headers.get("Host")
        return header is None or _loopback(_host_of(header.strip().lower()))

    def do_GET(self) -> None:
        """Serve the page, its script and style, or a JSON document of the API."""
        if len(self.path) > MAX_PATH:
            self._error(HTTPStatus.REQUEST_URI_TOO_LONG, "path too long")
            return
        if not self._allowed_host():
            self._error(HTTPStatus.FORBIDDEN, "this dashboard answers to localhost only")
            return
        path = urlsplit(self.path).path
        if path in _FILES:
            name, content_type = _FILES[path]
            self._send(HTTPStatus.OK, self.server.files[name], content_type)
        elif path == "/api/rollouts":
            self._send(HTTPStatus.OK, self.server.board.index(), "application/json")
        elif path.startswith("/api/rollouts/"):
            try:
                name = unquote(path[len("/api/rollouts/") :], errors="strict")
            except UnicodeDecodeError:
                self._error(HTTPStatus.BAD_REQUEST, "the name is not percent-encoded UTF-8")
                return
            body = self.server.board.detail(name)
            if body is None:
                self._error(HTTPStatus.NOT_FOUND, "no such rollout on this dashboard")
            else:
                self._send(HTTPStatus.OK, body, "application/json")
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        self.do_GET()

    def _refuse(self) -> None:
        self.close_connection = True  # a body it may have sent is not read
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET only", Allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse


def _files() -> dict[str, bytes]:
    here = resources.files(__package__ or "stagedroll.dashboard")
    return {name: here.joinpath(name).read_bytes() for name, _ in _FILES.values()}


class Dashboard:
    """The live, read-only dashboard of ``rollouts`` (the policy's) and of the store's others.

    ``steering`` reads the rollouts the store holds without a policy (default: a
    :class:`~stagedroll.Steering` of ``rollouts.store``); ``broken`` names rollouts a policy
    is broken for, with its problem. The server binds ``host``:``port`` at once (port 0:
    a free one; see :attr:`url`); :meth:`start` serves in the background, :meth:`serve_forever`
    in the calling thread. Every ``refresh_interval`` seconds one thread reads the store;
    requests never do; ``clock`` stamps what it reads (pass the ``Rollouts``' own clock in a
    simulation). A refresh that fails is logged, counted (:attr:`failures`) and shown on the
    page, and the next one is tried; the page says its data is stale once the last good
    refresh began over three ``refresh_interval`` ago. The caller keeps ``rollouts`` and
    closes it; :meth:`close` stops the server and the refresh.
    """

    def __init__(
        self,
        rollouts: Rollouts | None = None,
        *,
        steering: Steering | None = None,
        broken: dict[str, str] | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        refresh_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rollouts is None and steering is None:
            raise TypeError("Dashboard needs rollouts, a steering, or both")
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be above 0, not {refresh_interval!r}")
        if steering is None and rollouts is not None:
            steering = Steering(rollouts.store)
        self.board = Board(
            rollouts, steering, broken=broken, clock=clock, stale_after=3 * refresh_interval
        )
        self.refresh_interval = float(refresh_interval)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._serving = False
        self.board.refresh()  # the first page shows the rollouts at once
        self._server = _Server((host, port), self.board, _files())

    @property
    def url(self) -> str:
        """The page's address: ``http://127.0.0.1:8765/``."""
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def loopback_only(self) -> bool:
        """Whether it listens on a loopback address only (else anyone who reaches it reads it)."""
        return self._server.loopback_only

    @property
    def failures(self) -> dict[str, int]:
        """The refreshes that failed so far, by the type of their exception."""
        return self.board.failures

    def __repr__(self) -> str:
        return f"Dashboard({self.url!r})"

    def refresh(self) -> bool:
        """Read the store now, as the refresh thread does; whether it worked (never raises)."""
        return self.board.refresh()

    def _refreshing(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            started = time.monotonic()
            self.board.refresh()  # a failure is logged, counted and shown: the loop goes on
            if time.monotonic() - started > self.refresh_interval:  # a slow store: breathe
                self._stop.wait(self.refresh_interval)

    def _start_refresh(self) -> None:
        thread = threading.Thread(
            target=self._refreshing, name="stagedroll-dashboard-refresh", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def start(self) -> Dashboard:
        """Serve in background threads; return this dashboard."""
        self._start_refresh()
        self._serving = True
        thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="stagedroll-dashboard-http",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` (from another thread) or ``Ctrl-C``."""
        self._start_refresh()
        self._serving = True
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving and refreshing; the rollouts stay open (they are the caller's)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._serving:  # (serve_forever has returned when close runs in its thread)
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(
    rollouts: Rollouts | None = None,
    *,
    steering: Steering | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    refresh_interval: float = 1.0,
) -> None:
    """Serve the dashboard of ``rollouts`` at ``host``:``port`` until ``Ctrl-C`` (see Dashboard)."""
    board = Dashboard(
        rollouts, steering=steering, host=host, port=port, refresh_interval=refresh_interval
    )
    board.serve_forever()
