"""Locks, fencing, deadlocks, semaphores and sessions through the SDK, with
real concurrent clients and the invariants they must keep."""

from __future__ import annotations

import threading
import time

import pytest
from baton import Client, ConcurrentModification, Deadlock, Fenced, InvalidArgument, NotFound

WAIT_S = 30.0


def wait_until(condition, what: str, timeout_s: float = WAIT_S):
    """Polls `condition` until it returns something truthy, or fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"{what} did not happen within {timeout_s} s")


def run_all(target, count: int) -> list:
    """Runs `target(n)` on `count` threads; returns what they raised."""
    errors: list = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as e:  # surfaced to the test
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S * 2)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    return errors


def test_critical_sections_never_overlap_and_no_increment_is_lost(baton, ns) -> None:
    key = f"{ns}counter"
    clients, rounds = 8, 10
    inside = [0]
    overlaps: list = []
    guard = threading.Lock()
    exits_released_by_write: list = []

    def work(n: int) -> None:
        client = Client(baton.url, agent=f"worker-{n}")
        for _ in range(rounds):
            with client.lock(key, ttl_ms=30_000, wait_ms=20_000, read=True) as lock:
                with guard:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlaps.append(n)
                current = lock.values.get(key, {}).get("value", 0)
                # A round trip while inside, so an overlap has time to show.
                if current:
                    assert client.get(key)["value"] == current
                else:
                    client.status()
                with guard:
                    inside[0] -= 1
                # The write is fenced and releases the lock in its own commit
                # (the next holder may be granted before this reply arrives,
                # so "inside" ends just before it is sent).
                client.put(key, current + 1, fence=lock, release=lock)
                exits_released_by_write.append(lock.released)

    assert run_all(work, clients) == []
    assert overlaps == []
    assert Client(baton.url, agent="reader").get(key)["value"] == clients * rounds
    assert all(exits_released_by_write)


def test_a_write_fenced_by_an_expired_lock_is_refused(agent, ns) -> None:
    alice, bob = agent("alice"), agent("bob")
    key = f"{ns}report"
    old = alice.lock(key, ttl_ms=200)
    wait_until(lambda: alice.lock_state(old.lock_id)["status"] != "held", "the lease running out")
    with bob.lock(key, ttl_ms=30_000, wait_ms=5_000) as new:
        assert new.fence_token > old.fence_token
        bob.put(key, "bob's", fence=new)
        with pytest.raises(Fenced):
            alice.put(key, "alice's stale write", fence=old)
    assert alice.get(key)["value"] == "bob's"
    # The `with` block's release of a lock that already ended is harmless.
    assert old.release()["released"] is False


def test_a_busy_lock_without_wait_says_who_holds_it_and_when_to_retry(agent, ns) -> None:
    alice, bob = agent("alice"), agent("bob")
    key = f"{ns}busy"
    with alice.lock(key, ttl_ms=30_000):
        with pytest.raises(ConcurrentModification) as busy:
            bob.lock(key, ttl_ms=30_000)
        assert busy.value.retry_after_ms is not None
        assert "holders" in busy.value.details
    with bob.lock(key, ttl_ms=30_000) as free:
        assert free.keys == [key]


def test_a_wait_that_would_close_a_cycle_is_a_deadlock(baton, agent, ns) -> None:
    alice, bob = agent("alice"), agent("bob")
    k1, k2 = f"{ns}k1", f"{ns}k2"
    a = alice.lock(k1, ttl_ms=30_000)
    b = bob.lock(k2, ttl_ms=30_000)
    granted: list = []

    def alice_waits() -> None:
        granted.append(alice.lock(k2, ttl_ms=30_000, wait_ms=20_000))

    waiter = threading.Thread(target=alice_waits)
    waiter.start()
    wait_until(lambda: bob.key_locks(k2)["waiters"], "alice queueing for k2")
    with pytest.raises(Deadlock) as cycle:
        bob.lock(k1, ttl_ms=30_000, wait_ms=20_000)
    assert cycle.value.details, "a deadlock names its cycle"
    b.release()
    waiter.join(timeout=WAIT_S)
    assert granted and granted[0].keys == [k2]
    granted[0].release()
    a.release()


def test_semaphore_permits_are_never_oversubscribed(baton, ns) -> None:
    key = f"{ns}gpu"
    capacity = 3
    held = [0]
    peak = [0]
    guard = threading.Lock()

    def work(n: int) -> None:
        client = Client(baton.url, agent=f"job-{n}")
        for _ in range(5):
            with client.semaphore(key, 1, capacity, ttl_ms=30_000, wait_ms=20_000):
                with guard:
                    held[0] += 1
                    peak[0] = max(peak[0], held[0])
                # Hold the permit across a round trip, as real work would.
                assert client.key_locks(key)["permits_held"] <= capacity
                with guard:
                    held[0] -= 1

    assert run_all(work, 8) == []
    assert 1 <= peak[0] <= capacity


def test_a_multi_key_lock_names_the_key_to_fence(agent, ns) -> None:
    alice = agent("alice")
    with alice.lock([f"{ns}a", f"{ns}b"], ttl_ms=30_000) as both:
        with pytest.raises(InvalidArgument):
            both.fence()
        alice.put(f"{ns}b", 1, fence=both.fence(f"{ns}b"))
    with pytest.raises(InvalidArgument) as read:
        alice.call("GET", f"/v1/kv/{ns}b", fence=(f"{ns}b", 1))
    assert "is a read" in read.value.message


def test_a_session_kept_alive_outlives_its_ttl_and_takes_its_locks_with_it(agent, ns) -> None:
    alice, admin = agent("alice"), agent("admin")
    key = f"{ns}session-lock"
    with alice.session(ttl_ms=1200) as session:
        lock = session.client.lock(key)  # no ttl: lives as long as the session
        # Three TTLs pass: only the keepalive thread (every 400 ms) keeps
        # the session, with 800 ms to spare for a stalled machine.
        threading.Event().wait(3.6)
        assert admin.session_get(session.session_id)["session_id"] == session.session_id
        assert admin.lock_state(lock.lock_id)["status"] == "held"
    assert admin.lock_state(lock.lock_id)["status"] != "held"


def test_a_killed_session_is_reported_and_its_writes_are_fenced(agent, ns) -> None:
    alice, admin = agent("alice"), agent("admin")
    with alice.session(ttl_ms=300) as session:
        admin.session_kill(session.session_id, reason="runaway agent")
        wait_until(lambda: session.lost is not None, "the keepalive noticing the kill")
        assert session.lost.code == "FENCED" and "killed" in session.lost.message
        with pytest.raises(Fenced):
            session.client.put(f"{ns}after-kill", 1)
        with pytest.raises(Fenced) as closed:
            session.close()
        assert "killed" in closed.value.message
    # Leaving the block did not raise: the session had ended already.
    with pytest.raises(NotFound):
        admin.get(f"{ns}after-kill")


def test_a_lock_of_a_session_that_ended_releases_quietly(agent, ns) -> None:
    alice, admin = agent("alice"), agent("admin")
    with alice.session(ttl_ms=30_000) as session:
        with session.client.lock(f"{ns}held") as lock:
            admin.session_kill(session.session_id)
        # The block ended without FENCED: the lock ended with the session.
        assert lock.released
        assert admin.lock_state(lock.lock_id)["status"] != "held"
