"""HTTP/1.1 to one Baton server: keep-alive connections in a small pool
shared by the threads of a process, standard library only.

A request is one small JSON body to one known server, so this is
``http.client`` plus a pool, not a general HTTP client. It never sends a
request twice: an idle connection the server has closed is found closed
*before* anything goes out on it (and the next one is tried), and any
failure after sending is :class:`~baton.errors.Unavailable`, because the
request may or may not have applied. Retrying that safely is the caller's
decision, with an idempotency key.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

from .errors import Unavailable

#: How long to wait for a TCP connection before answering UNAVAILABLE.
CONNECT_TIMEOUT_S = 2.0
#: How long a call may take beyond any server-side wait it asked for.
REQUEST_TIMEOUT_S = 30.0
#: Idle connections kept for reuse; more are closed once their answer is read.
MAX_IDLE_CONNECTIONS = 32
#: An idle connection older than this is closed instead of reused: the
#: server, or a proxy between, may have dropped it without a word.
IDLE_CONNECTION_TIMEOUT_S = 60.0

#: What to do when the server is not there; every UNAVAILABLE says it.
START_HINT = (
    "is `baton serve` running? start it with `baton serve` or set BATON_URL "
    "to a running server"
)

USER_AGENT = "baton-python/0.1.0"


def parse_url(url: str) -> Tuple[str, int]:
    """``http://host:port`` (a bare ``host:port`` means http) as (host, port)."""
    rest = url.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "http":
            raise ValueError(
                f"{url!r}: only http:// is supported (put TLS in front of Baton with a proxy)"
            )
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest:
        raise ValueError(f"{url!r} has a path; give only http://host:port")
    if rest.startswith("["):  # [IPv6]:port or [IPv6]
        host, _, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else port
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host, port = rest, ""
    if not host or (port and (not port.isdigit() or not 0 < int(port) < 65536)):
        raise ValueError(f"{url!r} is not http://host:port (e.g. http://127.0.0.1:7700)")
    return host, int(port) if port else 80


class Transport:
    """The connections of every client of one server (clients share it)."""

    def __init__(self, url: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.host, self.port = parse_url(url)
        self.base = f"http://{self.host}:{self.port}"
        self.connect_timeout_s = connect_timeout_s
        self._idle: List[Tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()
        # A child made by fork() inherits the idle sockets; parent and child
        # must never share one connection (each would read the other's
        # answers), so a child starts with an empty pool.
        self._pid = os.getpid()

    def exchange(
        self,
        method: str,
        target: str,
        headers: Dict[str, str],
        body: Optional[bytes],
        timeout_s: float,
    ) -> Tuple[int, bytes]:
        """Sends one request and reads its whole answer: (status, body)."""
        conn = self._ready_connection()
        try:
            response = self._send(conn, method, target, headers, body, timeout_s)
            data = response.read()
        except socket.timeout:
            conn.close()
            raise Unavailable(
                f"{self.base}{target} did not answer within {timeout_s:g} s; whether it "
                "applied is unknown: retry with the same idempotency_key"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unavailable(
                f"the connection to {self.base} broke during {method} {target} ({e!r}); "
                "whether it applied is unknown: retry with the same idempotency_key"
            ) from None
        if response.will_close:
            conn.close()
        else:
            self._put_back(conn)
        return response.status, data

    def stream(
        self,
        target: str,
        headers: Dict[str, str],
        idle_timeout_s: float,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A GET whose answer is read as it comes (SSE), on its own connection."""
        conn = self._connect()
        try:
            return conn, self._send(conn, "GET", target, headers, None, idle_timeout_s)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unavailable(f"cannot open {self.base}{target} ({e!r}); {START_HINT}") from None

    def _send(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: Dict[str, str],
        body: Optional[bytes],
        timeout_s: float,
    ) -> http.client.HTTPResponse:
        assert conn.sock is not None
        conn.sock.settimeout(timeout_s)
        all_headers = {"User-Agent": USER_AGENT, **headers}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        conn.request(method, target, body=body, headers=all_headers)
        return conn.getresponse()

    def _ready_connection(self) -> http.client.HTTPConnection:
        """An idle connection still open, or a new one."""
        while True:
            with self._lock:
                if self._pid != os.getpid():
                    # The parent's sockets: leave them to it, unclosed.
                    self._idle, self._pid = [], os.getpid()
                entry = self._idle.pop() if self._idle else None
            if entry is None:
                return self._connect()
            conn, since = entry
            if time.monotonic() - since < IDLE_CONNECTION_TIMEOUT_S and _still_open(conn):
                return conn
            # Nothing was sent on it yet, so trying the next one is safe.
            conn.close()

    def _put_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout_s)
        try:
            conn.connect()
        except socket.timeout:
            raise Unavailable(
                f"no connection to {self.base} within {self.connect_timeout_s:g} s; {START_HINT}"
            ) from None
        except OSError as e:
            raise Unavailable(f"cannot connect to {self.base} ({e.strerror or e}); {START_HINT}") from None
        # Requests are small and answered one at a time: send each at once.
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def close(self) -> None:
        """Closes the idle connections (the ones in use close when done)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection has nothing to read: if it is readable,
    the server closed it (or sent something unasked), so it is not reused."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            # poll, not select: select cannot watch descriptors past 1024.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False
