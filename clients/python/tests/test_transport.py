"""The SDK's connection handling: errors that say what to do, no request
ever sent twice, a pool that survives a server restart, and timeouts that
leave room for the server-side waits a call asks for."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from baton import BatonError, Client, Compacted, InvalidArgument, Unavailable
from baton_server import BatonServer, free_port
from test_locks import run_all, wait_until


def test_no_server_is_unavailable_with_how_to_start_one() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", agent="lonely")
    started = time.monotonic()
    with pytest.raises(Unavailable) as down:
        client.get("a/b")
    assert time.monotonic() - started < 5
    assert "baton serve" in down.value.message and down.value.status == 0


def test_bad_settings_are_refused_before_anything_is_sent() -> None:
    for url in ("https://127.0.0.1:7700", "http://127.0.0.1:7700/v1", "127.0.0.1:99999", "http://:7700", "http://h:x"):
        with pytest.raises(InvalidArgument) as bad:
            Client(url, agent="a")
        assert bad.value.details == {"field": "url"}, url
    # What the Rust client accepts, this one does too.
    assert Client(" HTTP://127.0.0.1:7700/ ", agent="a").url == "http://127.0.0.1:7700"
    assert Client("http://localhost", agent="a").url == "http://localhost:80"
    assert Client("http://[::1]:7700", agent="a")._transport.host == "::1"
    with pytest.raises(InvalidArgument) as agent:
        Client("http://127.0.0.1:7700", agent="bötø")
    assert agent.value.details == {"field": "agent"}
    client = Client("http://127.0.0.1:7700", agent="a")
    with pytest.raises(InvalidArgument):
        client.put("a/b", 1, idempotency_key="ключ")
    assert Client("127.0.0.1:7700", agent="a").url == "http://127.0.0.1:7700"


def test_bad_input_is_refused_by_the_server_with_the_field_and_nothing_applied(agent, ns) -> None:
    alice = agent("alice")
    key = f"{ns}locked"
    with pytest.raises(InvalidArgument) as bad:
        alice.lock(key, mode="sideways", ttl_ms=1000)
    assert bad.value.status == 400
    assert "mode" in bad.value.message
    assert alice.key_locks(key)["holders"] == []


def test_many_threads_share_one_clients_connections(baton, ns) -> None:
    client = Client(baton.url, agent="shared")
    key = f"{ns}shared"

    def work(n: int) -> None:
        for i in range(20):
            client.counter_add(key, 1)
            assert client.get(f"{key}")["value"] >= 1

    assert run_all(work, 8) == []
    assert client.get(key)["value"] == 160


def test_a_pooled_connection_the_server_closed_is_not_used(tmp_path) -> None:
    server = BatonServer(tmp_path / "data", tmp_path / "serve.log")
    try:
        client = Client(server.url, agent="survivor")
        client.put("t/restart", 1)
        pooled = list(client._transport._idle)
        assert len(pooled) == 1, "the first call's connection is kept for reuse"
        server.stop()
        server = BatonServer(tmp_path / "data", tmp_path / "serve.log", port=server.port)
        # The old connection is closed on the server's side: it is found
        # closed before the request goes out, and a new one carries it.
        assert client.counter_add("t/restart-count", 1)["value"] == 1
        assert client.get("t/restart")["value"] == 1
        assert all(conn not in [c for c, _ in client._transport._idle] for conn, _ in pooled)
    finally:
        server.stop()


def test_a_call_that_asks_to_wait_gets_its_wait_on_top_of_the_timeout(agent, baton, ns) -> None:
    alice = agent("alice")
    patient = Client(baton.url, agent="patient", timeout_s=1.0)
    key = f"{ns}slow"
    holder = alice.lock(key, ttl_ms=30_000)
    granted = []
    waiter = threading.Thread(target=lambda: granted.append(patient.lock(key, ttl_ms=30_000, wait_ms=10_000)))
    waiter.start()
    wait_until(lambda: alice.key_locks(key)["waiters"], "the patient client queueing")
    # Longer than the client's own timeout: only the asked-for wait covers it.
    threading.Event().wait(1.5)
    holder.release()
    waiter.join(timeout=15)
    assert granted and granted[0].keys == [key]
    granted[0].release()


def test_a_server_that_stops_answering_times_out_as_unavailable() -> None:
    # A listener that accepts and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        client = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", agent="a", timeout_s=0.5)
        with pytest.raises(Unavailable) as silent:
            client.put("a/b", 1)
        assert "whether it applied is unknown" in silent.value.message
        assert "idempotency_key" in silent.value.message
    finally:
        listener.close()


class OneShotServer:
    """A loopback server that answers each connection with `answer` (or
    closes it unanswered when `answer` is None) and counts the requests it
    received whole."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head.split(b"\r\n")[0])
                if self.answer is not None:
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.listener.close()


def test_a_connection_that_breaks_after_sending_is_unavailable_and_not_retried() -> None:
    server = OneShotServer(answer=None)  # reads the request, closes without a word
    try:
        client = Client(server.url, agent="a")
        with pytest.raises(Unavailable) as broke:
            client.counter_add("a/b", 1)
        assert "whether it applied is unknown" in broke.value.message
        wait_until(lambda: server.requests, "the request arriving")
        assert server.requests == [b"POST /v1/counters/add HTTP/1.1"], "sent exactly once"
    finally:
        server.close()


def test_an_answer_that_is_not_batons_envelope_says_so() -> None:
    html = b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 9\r\n\r\n<h1>no</h1"
    server = OneShotServer(answer=html)
    try:
        with pytest.raises(BatonError) as other:
            Client(server.url, agent="a").get("a/b")
        assert other.value.code == "INTERNAL" and other.value.status == 404
        assert "BATON_URL" in other.value.message
    finally:
        server.close()
    gateway = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nbad"
    server = OneShotServer(answer=gateway)
    try:
        with pytest.raises(Unavailable):
            Client(server.url, agent="a").get("a/b")
    finally:
        server.close()


def sse(*chunks: bytes) -> bytes:
    """A chunked text/event-stream answer carrying `chunks`, then the end."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body


def test_a_watch_reads_multi_line_data_crlf_comments_and_ends_with_the_cut_off() -> None:
    stream = sse(
        b": keep-alive\r\n\r\n",
        b"event: baton\r\nid: 7.0\r\ndata: {\"revision\": 7,\r\ndata:  \"keys\": [\"a/b\"]}\r\n\r\n",
        b"event: something-new\ndata: ignored\n\n",
        b"event: baton\nid: 8.0\ndata: {\"revision\": 8}\n\n",
        b'event: cut_off\ndata: {"code":"COMPACTED","message":"fell behind","last_event_id":"8.0"}\n\n',
    )
    server = OneShotServer(answer=stream)
    try:
        watch = Client(server.url, agent="a").watch("a/", from_revision=3)
        assert next(watch) == {"revision": 7, "keys": ["a/b"]}
        assert next(watch) == {"revision": 8}
        with pytest.raises(Compacted) as cut:
            next(watch)
        assert cut.value.details == {"last_event_id": "8.0"}
        assert "from_revision=8" in cut.value.message
        assert server.requests == [b"GET /v1/watch?prefix=a%2F&from_revision=3 HTTP/1.1"]
    finally:
        server.close()


def test_a_watch_cut_mid_chunk_is_unavailable_with_where_to_resume() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    cut = head + b"40\r\nevent: baton\nid: 5.0\ndata: {\"revision\": 5}\n\n" + b"event: baton\nda"
    server = OneShotServer(answer=cut)
    try:
        watch = Client(server.url, agent="a").watch("", from_revision=2)
        with pytest.raises(Unavailable) as broke:
            for _ in range(3):
                next(watch)
        assert "from_revision" in broke.value.message
    finally:
        server.close()
