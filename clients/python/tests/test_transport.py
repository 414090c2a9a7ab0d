"""The SDK's connection handling: errors that say what to do, no request
ever sent twice, a pool that survives a server restart, and timeouts that
leave room for the server-side waits a call asks for."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from baton import Client, InvalidArgument, Unavailable
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
    for url in ("https://127.0.0.1:7700", "http://127.0.0.1", "http://127.0.0.1:7700/v1", "127.0.0.1:99999"):
        with pytest.raises(InvalidArgument) as bad:
            Client(url, agent="a")
        assert bad.value.details == {"field": "url"}, url
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
