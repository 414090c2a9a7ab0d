"""The coordination tools through the official MCP Python SDK: quotas, rate
limits, semaphores, once (single-flight refresh) and queues. Every tool, the
errors an agent must act on (QUOTA_EXCEEDED, RATE_LIMITED with
retry_after_ms, FENCED on a stale claim), bad input naming the field, and 12
concurrent MCP sessions sharing one credential refresh."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from conftest import TRANSPORTS, call, connect, fails, ok

pytestmark = pytest.mark.anyio

DEADLINE_S = 60


def ns() -> str:
    """A fresh namespace per test, so tests sharing one server never collide."""
    return f"k{uuid.uuid4().hex[:10]}"


async def claim_until_redelivered(client, queue: str, within_s: float = 10.0) -> dict:
    """Claims `queue` until an item comes back (its earlier claim expired)."""
    deadline = time.monotonic() + within_s
    while True:
        claimed = await ok(client, "queue_claim", queue=queue, visibility_ms=30000)
        if not claimed.get("empty"):
            return claimed
        assert time.monotonic() < deadline, f"nothing was redelivered: {claimed}"
        await anyio.sleep(0.05)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_quotas_rate_limits_and_semaphores(baton, transport):
    n = ns()
    with anyio.fail_after(DEADLINE_S):
        async with connect(baton, transport) as a, connect(baton, transport) as b:
            agent_a = (await ok(a, "session_info"))["agent"]
            agent_b = (await ok(b, "session_info"))["agent"]

            # Quotas: reserve before the costly call, commit the actual after.
            quota = f"{n}/tokens"
            created = await ok(a, "quota_set", quota=quota, capacity=10)
            assert created == {"quota": quota, "capacity": 10, "used": 0, "reserved": 0, "available": 10, "reservations": 0}
            reserved = await ok(a, "quota_reserve", quota=quota, amount=6, ttl_ms=60000)
            assert reserved["amount"] == 6 and reserved["available"] == 4
            over = await fails(b, "quota_reserve", quota=quota, amount=5, ttl_ms=60000)
            assert over.code == "QUOTA_EXCEEDED"
            assert over.error["retry_after_ms"] > 0, over.error
            assert "Do NOT make the costly call" in over.text
            seen = await ok(b, "quota_get", quota=quota)
            assert (seen["reserved"], seen["available"], seen["reservations"]) == (6, 4, 1)
            committed = await ok(a, "quota_commit", reservation_id=reserved["reservation_id"], actual=4)
            assert (committed["settled"], committed["committed"], committed["returned"]) == (True, 4, 2)
            again = await fails(a, "quota_commit", reservation_id=reserved["reservation_id"], actual=1)
            assert again.code == "FENCED" and "nothing was recorded" in again.text
            second = await ok(b, "quota_reserve", quota=quota, amount=5, ttl_ms=60000)
            released = await ok(b, "quota_release", reservation_id=second["reservation_id"])
            assert (released["settled"], released["outcome"], released["returned"]) == (True, "released", 5)
            assert (await ok(b, "quota_release", reservation_id=second["reservation_id"]))["settled"] is False
            assert (await ok(a, "quota_get", quota=quota))["used"] == 4
            missing = await fails(a, "quota_get", quota=f"{n}/none")
            assert missing.code == "NOT_FOUND" and "quota_set" in missing.text

            # Rate limits: take before calling; RATE_LIMITED says exactly when.
            bucket = f"{n}/api"
            taken = await ok(a, "rate_take", bucket=bucket, tokens=2, rate_per_sec=5, burst=2)
            assert (taken["taken"], taken["remaining"]) == (2, 0)
            limited = await fails(b, "rate_take", bucket=bucket, rate_per_sec=5, burst=2)
            assert limited.code == "RATE_LIMITED"
            assert 0 < limited.error["retry_after_ms"] <= 200, limited.error
            assert "retry_after_ms" in limited.text and "Do NOT call" in limited.text
            waited = await ok(b, "rate_take", bucket=bucket, rate_per_sec=5, burst=2, wait_ms=5000)
            assert waited["taken"] == 1
            status = await ok(a, "rate_status", bucket=bucket)
            assert status["usage"] == [{"agent": agent_a, "tokens": 2}, {"agent": agent_b, "tokens": 1}]
            assert (await fails(a, "rate_status", bucket=f"{n}/never")).code == "NOT_FOUND"

            # Semaphores: at most `capacity` permits, a grant is a lock.
            pool = f"{n}/gpu"
            first = await ok(a, "semaphore_acquire", key=pool, capacity=2)
            assert (first["status"], first["permits"], first["mode"]) == ("held", 1, "shared")
            assert first["fence_token"] > 0
            busy = await fails(b, "semaphore_acquire", key=pool, permits=2, capacity=2)
            assert busy.code == "CONCURRENT_MODIFICATION" and "permits" in busy.text
            other_size = await fails(b, "semaphore_acquire", key=pool, capacity=5)
            assert other_size.code == "INVALID_ARGUMENT" and "capacity" in other_size.error["message"]
            twice = await fails(a, "semaphore_acquire", key=pool, capacity=2)
            assert twice.code == "DEADLOCK"
            second_permit = await ok(b, "semaphore_acquire", key=pool, capacity=2, ttl_ms=60000)
            assert second_permit["status"] == "held"
            held = await ok(a, "held")
            assert [(l["lock_id"], l["permits"]) for l in held["locks"]] == [(first["lock_id"], 1)]
            key_status = await ok(a, "lock_status", key=pool)
            assert key_status["held"] is True
            assert (await ok(a, "lock_release", lock_id=first["lock_id"]))["released"] is True
            third = await ok(a, "semaphore_acquire", key=pool, capacity=2, wait_ms=5000)
            assert third["status"] == "held" and third["fence_token"] > second_permit["fence_token"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_once_and_queues(baton, transport):
    n = ns()
    with anyio.fail_after(DEADLINE_S):
        async with connect(baton, transport) as a, connect(baton, transport) as b:
            # Once: the first caller gets the claim, the others are told to wait.
            key = f"{n}/cred"
            claim = await ok(a, "once_get", key=key, max_age_ms=60000)
            assert claim["status"] == "claimed" and claim["claim_id"] > 0 and claim["expires_at"] > 0
            busy = await fails(b, "once_get", key=key, max_age_ms=60000)
            assert busy.code == "CONCURRENT_MODIFICATION" and busy.error["retry_after_ms"] > 0
            assert "Do NOT refresh it yourself" in busy.text
            mine = await fails(a, "once_get", key=key, max_age_ms=60000)
            assert mine.code == "DEADLOCK" and mine.error["details"]["claim_id"] == claim["claim_id"]
            published = await ok(a, "once_fulfil", key=key, claim_id=claim["claim_id"], value={"token": "t1"})
            assert (published["status"], published["value"]) == ("fresh", {"token": "t1"})
            fresh = await ok(b, "once_get", key=key, max_age_ms=60000)
            assert (fresh["status"], fresh["value"], fresh["version"]) == ("fresh", {"token": "t1"}, published["version"])
            assert (await ok(b, "state_get", key=key))["value"] == {"token": "t1"}
            late = await fails(a, "once_fulfil", key=key, claim_id=claim["claim_id"], value={"token": "late"})
            assert late.code == "FENCED" and "NOTHING was published" in late.text
            # Stale again: claim, give up, and the next caller gets a new claim.
            await anyio.sleep(0.01)
            stale = await ok(b, "once_get", key=key, max_age_ms=1)
            assert stale["status"] == "claimed" and stale["value"] == {"token": "t1"}
            assert await ok(b, "once_abandon", key=key, claim_id=stale["claim_id"]) == {}
            assert (await fails(b, "once_abandon", key=key, claim_id=stale["claim_id"])).code == "FENCED"
            next_claim = await ok(a, "once_get", key=key, max_age_ms=1)
            assert next_claim["status"] == "claimed" and next_claim["claim_id"] != stale["claim_id"]
            await ok(a, "once_abandon", key=key, claim_id=next_claim["claim_id"])

            # Queues: claim -> work -> ack; a late ack of a redelivered item is FENCED.
            queue = f"{n}/jobs"
            enqueued = await ok(a, "queue_enqueue", queue=queue, item={"to": "ops"}, idempotency_key=f"{n}-1")
            again = await ok(a, "queue_enqueue", queue=queue, item={"to": "ops"}, idempotency_key=f"{n}-1")
            assert again["item_id"] == enqueued["item_id"] and enqueued["depth"] == 1
            slow = await ok(b, "queue_claim", queue=queue, visibility_ms=300)
            assert (slow["item_id"], slow["item"], slow["attempt"]) == (enqueued["item_id"], {"to": "ops"}, 1)
            nothing = await ok(a, "queue_claim", queue=queue)
            assert nothing["empty"] is True and nothing["in_flight"] == 1
            redelivered = await claim_until_redelivered(a, queue)
            assert redelivered["item_id"] == slow["item_id"] and redelivered["attempt"] == 2
            stale_ack = await fails(b, "queue_ack", queue=queue, item_id=slow["item_id"], claim_token=slow["claim_token"])
            assert stale_ack.code == "FENCED" and "Do NOT repeat its side effects" in stale_ack.text
            acked = await ok(a, "queue_ack", queue=queue, item_id=redelivered["item_id"], claim_token=redelivered["claim_token"])
            assert acked["outcome"] == "acked"
            # A nack past max_attempts dead-letters the item.
            doomed = await ok(a, "queue_enqueue", queue=queue, item="resize img-9", max_attempts=1)
            claimed = await ok(b, "queue_claim", queue=queue, visibility_ms=30000)
            assert claimed["item_id"] == doomed["item_id"]
            nacked = await ok(b, "queue_nack", queue=queue, item_id=claimed["item_id"], claim_token=claimed["claim_token"])
            assert nacked["outcome"] == "dead_lettered"
            status = await ok(a, "queue_status", queue=queue)
            assert (status["ready"], status["in_flight"], status["dead_lettered"]) == (0, 0, 1)
            assert status["dead_letters"][0]["item"] == "resize img-9"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_input_to_coordination_tools_names_the_field(baton, transport):
    n = ns()
    cases = [
        ("quota_set", {"capacity": 5}, "quota"),
        ("quota_set", {"quota": f"{n}/q", "capacity": -1}, "capacity"),
        ("quota_get", {"quota": ""}, "quota"),
        ("quota_reserve", {"quota": f"{n}/q", "amount": 0, "ttl_ms": 1000}, "amount"),
        ("quota_reserve", {"quota": f"{n}/q", "amount": 1}, "ttl_ms"),
        ("quota_commit", {"reservation_id": 1}, "actual"),
        ("quota_release", {"reservation_id": "one"}, "reservation_id"),
        ("rate_take", {"bucket": f"{n}/b", "rate_per_sec": 1, "burst": 2, "tokens": 3}, "tokens"),
        ("rate_take", {"bucket": f"{n}/b", "rate_per_sec": 0, "burst": 2}, "rate_per_sec"),
        ("rate_take", {"bucket": f"{n}/b", "rate_per_sec": 1, "burst": 2, "wait_ms": 10_000_000}, "wait_ms"),
        ("rate_status", {"bucket": f"{n}/b", "x": 1}, "x"),
        ("once_get", {"key": f"{n}/c"}, "max_age_ms"),
        ("once_get", {"key": f"{n}/c", "max_age_ms": 1, "claim_ttl_ms": 1}, "claim_ttl_ms"),
        ("once_fulfil", {"key": f"{n}/c", "claim_id": 1}, "value"),
        ("once_fulfil", {"key": f"{n}/c", "claim_id": 1, "value": "x" * (1024 * 1024 + 10)}, "value"),
        ("once_abandon", {"key": f"{n}/c"}, "claim_id"),
        ("queue_enqueue", {"queue": f"{n}/q", "item": 1, "max_attempts": 0}, "max_attempts"),
        ("queue_claim", {"queue": f"{n}/q", "visibility_ms": 1}, "visibility_ms"),
        ("queue_ack", {"queue": f"{n}/q", "item_id": 1}, "claim_token"),
        ("queue_nack", {"queue": f"{n}/q", "item_id": 1, "claim_token": 1, "delay_ms": -5}, "delay_ms"),
        ("queue_status", {}, "queue"),
        ("semaphore_acquire", {"key": f"{n}/s"}, "capacity"),
        ("semaphore_acquire", {"key": f"{n}/s", "permits": 4, "capacity": 3}, "permits"),
        ("semaphore_acquire", {"key": f"{n}/s", "capacity": 3, "ttl_ms": 1}, "ttl_ms"),
    ]
    with anyio.fail_after(DEADLINE_S):
        async with connect(baton, transport) as client:
            for tool, arguments, field in cases:
                envelope, text = await call(client, tool, **arguments)
                assert not envelope["ok"], f"{tool}({str(arguments)[:80]}) was accepted"
                error = envelope["error"]
                assert error["code"] == "INVALID_ARGUMENT", f"{tool}: {text[:200]}"
                assert field in error["message"], f"{tool}: field {field!r} not named in {error['message'][:200]!r}"
                assert "nothing was applied" in text
            # Nothing reached Baton.
            assert (await fails(client, "quota_get", quota=f"{n}/q")).code == "NOT_FOUND"
            assert (await fails(client, "rate_status", bucket=f"{n}/b")).code == "NOT_FOUND"
            assert (await ok(client, "locks_list", prefix=f"{n}/"))["keys"] == []
            assert (await ok(client, "events_recent", prefix=f"{n}/"))["events"] == []


async def test_twelve_sessions_share_one_credential_refresh(baton):
    """12 MCP sessions find `cred/token` stale at once and call once_get with
    a wait: exactly one gets the claim and refreshes, the other 11 wait for
    its value, and all 12 end with the same new value."""
    key = "cred/token"
    max_age_ms = 2000
    sessions = 12
    async with connect(baton, "stdio") as setup:
        old = await ok(setup, "state_put", key=key, value={"token": "old"})
        written_at = time.monotonic()
        claims: list[int] = []
        values: list[dict] = []
        connected = 0
        all_connected = anyio.Event()
        go = anyio.Event()

        async def agent(i: int) -> None:
            nonlocal connected
            async with connect(baton, "stdio") as client:
                await ok(client, "session_info")
                connected += 1
                if connected == sessions:
                    all_connected.set()
                await go.wait()
                got = await ok(client, "once_get", key=key, max_age_ms=max_age_ms, claim_ttl_ms=20000, wait_ms=30000)
                if got["status"] == "claimed":
                    claims.append(i)
                    assert got["value"] == {"token": "old"}
                    await anyio.sleep(0.5)  # the refresh itself
                    published = await ok(client, "once_fulfil", key=key, claim_id=got["claim_id"], value={"token": "new", "by": i})
                    values.append(published["value"])
                else:
                    assert got["status"] == "fresh", got
                    values.append(got["value"])

        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as group:
                for i in range(sessions):
                    group.start_soon(agent, i)
                await all_connected.wait()
                # The value is stale for everyone when they ask.
                await anyio.sleep(max(0.0, max_age_ms / 1000 + 0.1 - (time.monotonic() - written_at)))
                go.set()
        history = await ok(setup, "state_history", key=key, limit=10)
    assert len(claims) == 1, f"{len(claims)} agents refreshed: {claims}"
    assert values == [{"token": "new", "by": claims[0]}] * sessions
    # One refresh: exactly one version after the old one.
    versions = [v for v in history["versions"] if v["version"] > old["version"]]
    assert [v["value"] for v in versions] == [{"token": "new", "by": claims[0]}]
