"""Counters, quotas, rate limits, single-flight refresh, queues and the
event stream through the SDK, with real concurrent clients."""

from __future__ import annotations

import threading

import pytest
from baton import Client, QuotaExceeded, RateLimited
from test_locks import run_all


def test_a_bounded_counter_never_crosses_its_bound_under_contention(baton, ns) -> None:
    key = f"{ns}seats"
    bound, clients, tries = 50, 8, 10
    granted = [0]
    refused = [0]
    count = threading.Lock()

    def work(n: int) -> None:
        client = Client(baton.url, agent=f"booker-{n}")
        for _ in range(tries):
            try:
                client.counter_add(key, 1, max=bound)
                outcome = granted
            except QuotaExceeded as e:
                assert e.status == 429
                outcome = refused
            with count:
                outcome[0] += 1

    assert run_all(work, clients) == []
    assert granted[0] == bound and refused[0] == clients * tries - bound
    assert Client(baton.url, agent="reader").get(key)["value"] == bound


def test_quota_reservations_commit_what_was_used_and_return_the_rest(agent, ns) -> None:
    alice = agent("alice")
    quota = f"{ns}tokens"
    alice.quota_set(quota, 100)
    reservation = alice.reserve(quota, 60, 30_000)
    with pytest.raises(QuotaExceeded):
        alice.reserve(quota, 50, 30_000)
    settled = alice.reservation_commit(reservation["reservation_id"], 45)
    assert (settled["committed"], settled["returned"]) == (45, 15)
    assert alice.quota_get(quota)["available"] == 55
    second = alice.reserve(quota, 50, 30_000)
    assert alice.reservation_release(second["reservation_id"])["returned"] == 50
    assert alice.quota_get(quota)["available"] == 55


def test_a_shared_rate_limit_refuses_with_the_time_to_wait(agent, ns) -> None:
    bucket = f"{ns}api"
    clients = [agent(f"caller-{n}") for n in range(3)]
    for n in range(5):
        clients[n % 3].rate_take(bucket, rate_per_sec=1, burst=5)
    with pytest.raises(RateLimited) as limited:
        clients[0].rate_take(bucket, rate_per_sec=1, burst=5)
    assert limited.value.status == 429 and 0 < limited.value.retry_after_ms <= 1000
    usage = {u["agent"]: u["tokens"] for u in clients[0].bucket(bucket)["usage"]}
    assert usage == {"caller-0": 2, "caller-1": 2, "caller-2": 1}


def test_refresh_once_runs_one_refresh_for_many_concurrent_callers(baton, ns) -> None:
    key = f"{ns}oauth-token"
    callers = 6
    refreshes = []
    seen = []
    entered = threading.Semaphore(0)
    guard = threading.Lock()

    def refresh() -> str:
        with guard:
            refreshes.append(1)
        # Hold the claim until every caller has sent its request, so they
        # all race it (each either queues for this value or finds it fresh).
        for _ in range(callers):
            assert entered.acquire(timeout=10), "a caller never called"
        return "token-1"

    def work(n: int) -> None:
        client = Client(baton.url, agent=f"agent-{n}")
        entered.release()
        value = client.refresh_once(key, refresh, max_age_ms=60_000, claim_ttl_ms=10_000, wait_ms=20_000)
        with guard:
            seen.append(value)

    assert run_all(work, callers) == []
    assert seen == ["token-1"] * callers
    assert len(refreshes) == 1


def test_a_failed_refresh_gives_the_claim_to_the_next_caller(agent, ns) -> None:
    alice, bob = agent("alice"), agent("bob")
    key = f"{ns}cache"

    def broken() -> str:
        raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError):
        alice.refresh_once(key, broken, max_age_ms=60_000, claim_ttl_ms=10_000)
    assert bob.refresh_once(key, lambda: "fresh", max_age_ms=60_000, claim_ttl_ms=10_000) == "fresh"
    assert alice.refresh_once(key, broken, max_age_ms=60_000, claim_ttl_ms=10_000) == "fresh"


def test_every_queued_item_is_acked_exactly_once_by_concurrent_workers(baton, agent, ns) -> None:
    queue = f"{ns}jobs"
    producer = agent("producer")
    items = 40
    ids = [producer.enqueue(queue, {"n": n}, idempotency_key=f"job-{n}")["item_id"] for n in range(items)]
    # A retried enqueue (same key) does not add the item twice.
    assert producer.enqueue(queue, {"n": 0}, idempotency_key="job-0")["item_id"] == ids[0]
    done = []
    guard = threading.Lock()

    def work(n: int) -> None:
        client = Client(baton.url, agent=f"consumer-{n}")
        while True:
            item = client.claim(queue, visibility_ms=30_000)
            if item is None:
                return
            client.ack(queue, item["item_id"], item["claim_token"])
            with guard:
                done.append(item["item"]["n"])

    assert run_all(work, 4) == []
    assert sorted(done) == list(range(items))
    status = producer.queue_status(queue)
    assert (status["ready"], status["in_flight"]) == (0, 0)


def test_a_watch_streams_the_changes_under_its_prefix_in_order(agent, ns) -> None:
    alice = agent("alice")
    start = alice.status()["revision"] + 1
    with alice.watch(f"{ns}watched/") as watch:
        alice.put(f"{ns}elsewhere", 0)
        for n in range(3):
            alice.put(f"{ns}watched/{n}", n)
        events = [next(watch) for _ in range(3)]
    assert [e["keys"] for e in events] == [[f"{ns}watched/{n}"] for n in range(3)]
    assert all(e["agent"] == "alice" for e in events)
    assert events[0]["revision"] < events[1]["revision"] < events[2]["revision"]
    assert watch.last_event_id is not None

    # The same changes again, from a revision: a watcher that reconnects misses nothing.
    with alice.watch(f"{ns}watched/", from_revision=start) as replay:
        assert [next(replay)["revision"] for _ in range(3)] == [e["revision"] for e in events]
    page = alice.events(f"{ns}watched/", from_revision=start)
    assert [e["revision"] for e in page["events"]] == [e["revision"] for e in events]
