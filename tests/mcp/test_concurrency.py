"""Many agents through MCP at once: no lost update with either safe pattern,
and a dropped connection's lock comes back within its session TTL."""

from __future__ import annotations

import os
import signal
import time
import uuid

import anyio
import pytest

from conftest import TRANSPORTS, call, connect, ok

pytestmark = pytest.mark.anyio

SESSIONS = 12
INCREMENTS = 25
DEADLINE_S = 180


async def cas_worker(baton, transport: str, key: str) -> int:
    """25 increments by read -> put(if_version) -> retry on conflict."""
    conflicts = 0
    async with connect(baton, transport) as client:
        for _ in range(INCREMENTS):
            while True:
                envelope, text = await call(client, "state_get", key=key)
                assert envelope["ok"], text
                current = envelope["result"]
                envelope, text = await call(
                    client,
                    "state_put",
                    key=key,
                    value={"n": current["value"]["n"] + 1},
                    if_version=current["version"],
                )
                if envelope["ok"]:
                    break
                assert envelope["error"]["code"] == "CONCURRENT_MODIFICATION", text
                conflicts += 1
    return conflicts


async def lock_worker(baton, transport: str, key: str) -> None:
    """25 increments by lock -> read -> write with fence -> release."""
    lock_key = f"{key}.lock"
    async with connect(baton, transport) as client:
        for _ in range(INCREMENTS):
            while True:
                envelope, text = await call(client, "lock_acquire", keys=[lock_key], wait_ms=20000)
                if envelope["ok"]:
                    lock = envelope["result"]
                    break
                assert envelope["error"]["code"] == "CONCURRENT_MODIFICATION", text
            current = await ok(client, "state_get", key=key)
            await ok(
                client,
                "state_put",
                key=key,
                value={"n": current["value"]["n"] + 1},
                fence={"key": lock_key, "token": lock["fence_token"]},
            )
            released = await ok(client, "lock_release", lock_id=lock["lock_id"])
            assert released["released"] is True


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_twelve_sessions_compare_and_set_reach_exactly_300(baton, transport):
    key = f"c{uuid.uuid4().hex[:8]}/counter"
    async with connect(baton, transport) as setup:
        await ok(setup, "state_put", key=key, value={"n": 0}, if_absent=True)
        conflicts: list[int] = []

        async def run() -> None:
            conflicts.append(await cas_worker(baton, transport, key))

        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as group:
                for _ in range(SESSIONS):
                    group.start_soon(run)
        final = await ok(setup, "state_get", key=key)
    assert final["value"]["n"] == SESSIONS * INCREMENTS
    assert len(conflicts) == SESSIONS
    # Each write is one version: 1 create + 300 increments in the history order.
    history = baton.api("GET", f"/v1/history/{key}?limit=1")
    assert history["result"]["versions"][0]["value"] == {"n": 300}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_twelve_sessions_lock_read_write_fence_release_reach_exactly_300(baton, transport):
    key = f"l{uuid.uuid4().hex[:8]}/counter"
    async with connect(baton, transport) as setup:
        await ok(setup, "state_put", key=key, value={"n": 0}, if_absent=True)
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as group:
                for _ in range(SESSIONS):
                    group.start_soon(lock_worker, baton, transport, key)
        final = await ok(setup, "state_get", key=key)
        assert (await ok(setup, "locks_list", prefix=key.split("/")[0] + "/"))["keys"] == []
    assert final["value"]["n"] == SESSIONS * INCREMENTS


def pids_with_agent(agent: str) -> list[int]:
    """The `baton mcp` processes started with `--agent agent`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mcp" in argv and agent.encode() in argv:
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the server process through /proc")
async def test_killed_stdio_server_releases_its_lock_within_the_session_ttl(baton):
    """`baton mcp` is killed (no goodbye) while its session holds a lock: the
    lock comes back when the 2 s session TTL runs out, and another agent's
    waiting lock_acquire then gets it."""
    n = f"d{uuid.uuid4().hex[:8]}"
    agent = f"doomed-{n}"
    ttl_s = 2.0
    with anyio.fail_after(60):
        async with connect(baton, "stdio", "--session-ttl", "2s") as survivor:
            killed_at = None
            try:
                async with connect(baton, "stdio", "--session-ttl", "2s", agent=agent) as doomed:
                    taken = await ok(doomed, "lock_acquire", keys=[f"{n}/job"])
                    assert taken["agent"] == agent
                    pids = pids_with_agent(agent)
                    assert len(pids) == 1, pids
                    # Outlive several keepalives first: the lock must still be held.
                    await anyio.sleep(ttl_s * 1.5)
                    busy, _ = await call(survivor, "lock_acquire", keys=[f"{n}/job"])
                    assert busy["error"]["code"] == "CONCURRENT_MODIFICATION"
                    os.kill(pids[0], signal.SIGKILL)
                    killed_at = time.monotonic()
                    got = await ok(survivor, "lock_acquire", keys=[f"{n}/job"], wait_ms=15000)
                    waited = time.monotonic() - killed_at
            except* Exception as group:  # the SDK reports the dead server when its context exits
                if killed_at is None:
                    raise
                del group
    assert got["status"] == "held" and got["fence_token"] > taken["fence_token"]
    assert waited <= ttl_s + 3.0, f"the lock came back {waited:.1f} s after the kill"


async def test_killed_http_client_releases_its_lock_soon(baton):
    """An HTTP agent is killed while holding a lock (no DELETE, no goodbye):
    its event stream ends, and after a short grace its session is closed, so
    another agent's waiting lock_acquire gets the lock well before the MCP
    idle timeout (5 min)."""
    import subprocess
    import sys

    n = f"h{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "http_holder.py"), baton.mcp_url, f"{n}/job"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with anyio.fail_after(60):
            token = int(await anyio.to_thread.run_sync(holder.stdout.readline))
            async with connect(baton, "http") as survivor:
                # An idle client with its event stream open is alive: it keeps
                # the lock past the grace period.
                await anyio.sleep(12)
                busy, _ = await call(survivor, "lock_acquire", keys=[f"{n}/job"])
                assert busy["error"]["code"] == "CONCURRENT_MODIFICATION"
                holder.kill()
                killed_at = time.monotonic()
                got = await ok(survivor, "lock_acquire", keys=[f"{n}/job"], wait_ms=45000)
                waited = time.monotonic() - killed_at
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert got["fence_token"] > token
    # Noticed at a failed SSE ping (every 5 s), then 10 s of grace for a reconnect.
    assert waited <= 5 + 10 + 1 + 5, f"the lock came back {waited:.1f} s after the kill"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_closed_connection_releases_its_locks_at_once(baton, transport):
    """A connection that ends normally closes its session: its locks are free
    immediately, long before the 30 s session TTL."""
    n = f"e{uuid.uuid4().hex[:8]}"
    with anyio.fail_after(60):
        async with connect(baton, transport) as other:
            async with connect(baton, transport) as leaving:
                taken = await ok(leaving, "lock_acquire", keys=[f"{n}/job"])
            closed_at = time.monotonic()
            got = await ok(other, "lock_acquire", keys=[f"{n}/job"], wait_ms=20000)
            waited = time.monotonic() - closed_at
    assert got["fence_token"] > taken["fence_token"]
    assert waited < 5.0, f"the lock came back {waited:.1f} s after the close"
