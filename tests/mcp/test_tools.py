"""Baton's MCP tools through the official MCP Python SDK, over stdio
(`baton mcp`) and streamable HTTP (`/mcp` on `baton serve`): the handshake,
the tool list and its schemas, every tool, and the mapping of every error an
agent must act on."""

from __future__ import annotations

import time
import uuid

import anyio
import jsonschema
import pytest

from conftest import TRANSPORTS, call, connect, fails, ok

pytestmark = pytest.mark.anyio

EXPECTED_TOOLS = {
    "session_info",
    "lock_acquire",
    "lock_release",
    "lock_renew",
    "lock_status",
    "locks_list",
    "fence_check",
    "state_get",
    "state_put",
    "state_patch",
    "state_delete",
    "state_list",
    "state_history",
    "state_txn",
    "counter_add",
    "events_recent",
    "held",
    "semaphore_acquire",
    "quota_set",
    "quota_get",
    "quota_reserve",
    "quota_commit",
    "quota_release",
    "rate_take",
    "rate_status",
    "once_get",
    "once_fulfil",
    "once_abandon",
    "queue_enqueue",
    "queue_claim",
    "queue_ack",
    "queue_nack",
    "queue_status",
}


def ns() -> str:
    """A fresh namespace per test, so tests sharing one server never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_initialize_lists_tools_with_valid_schemas(baton, transport):
    async with connect(baton, transport) as client:
        assert client.server_info.name == "baton"
        instructions = client.instructions or ""
        assert "if_version" in instructions and "fence" in instructions and "LEASE LOST" in instructions
        tools = (await client.list_tools()).tools
        assert {t.name for t in tools} == EXPECTED_TOOLS
        for tool in tools:
            assert len(tool.description) > 60, tool.name
            schema = tool.input_schema
            jsonschema.Draft202012Validator.check_schema(schema)
            assert schema["type"] == "object"
            assert schema.get("additionalProperties") is False, f"{tool.name} accepts unknown fields"
            for name, prop in schema.get("properties", {}).items():
                assert prop.get("description") or "$ref" in prop or "anyOf" in prop, f"{tool.name}.{name}"
        by_name = {t.name: t for t in tools}
        lock = by_name["lock_acquire"].input_schema
        assert lock["required"] == ["keys"]
        assert lock["properties"]["keys"]["maxItems"] == 64
        assert lock["properties"]["wait_ms"]["maximum"] == 300000
        assert "state_put with if_version" in by_name["state_patch"].description
        assert "CONCURRENT_MODIFICATION" in by_name["state_put"].description
        assert "FENCED" in by_name["state_put"].description
        assert "max_kv_bytes" in by_name["state_put"].description


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_tool(baton, transport):
    n = ns()
    async with connect(baton, transport) as client:
        info = await ok(client, "session_info")
        assert info["session"]["session_id"] > 0
        assert info["session"]["ttl_ms"] == 30000
        assert info["locks"] == []
        agent = info["agent"]

        # Versioned state.
        created = await ok(client, "state_put", key=f"{n}/doc", value={"a": 1, "b": "x"}, if_absent=True)
        assert "previous_version" not in created
        got = await ok(client, "state_get", key=f"{n}/doc")
        assert got["value"] == {"a": 1, "b": "x"} and got["version"] == created["version"]
        put = await ok(client, "state_put", key=f"{n}/doc", value={"a": 2, "b": "x"}, if_version=got["version"])
        assert put["previous_version"] == got["version"]
        merged = await ok(client, "state_patch", key=f"{n}/doc", merge={"b": None, "c": True}, if_version=put["version"])
        patched = await ok(client, "state_patch", key=f"{n}/doc", json_patch=[{"op": "replace", "path": "/a", "value": 3}])
        assert patched["previous_version"] == merged["version"]
        assert (await ok(client, "state_get", key=f"{n}/doc"))["value"] == {"a": 3, "c": True}
        history = await ok(client, "state_history", key=f"{n}/doc", limit=10)
        assert [v["value"] for v in history["versions"]][0] == {"a": 3, "c": True}
        assert len(history["versions"]) == 4 and history["versions"][0]["agent"] == agent
        await ok(client, "state_put", key=f"{n}/other", value=[1, 2])
        listed = await ok(client, "state_list", prefix=f"{n}/", limit=1)
        assert [e["key"] for e in listed["entries"]] == [f"{n}/doc"] and listed["next_after"] == f"{n}/doc"
        rest = await ok(client, "state_list", prefix=f"{n}/", after=listed["next_after"])
        assert [e["key"] for e in rest["entries"]] == [f"{n}/other"]

        txn = await ok(
            client,
            "state_txn",
            compares=[{"key": f"{n}/other", "version": 0, "op": "ne"}],
            success=[{"op": "put", "key": f"{n}/moved", "value": [1, 2]}, {"op": "delete", "key": f"{n}/other"}],
            failure=[{"op": "get", "key": f"{n}/other"}],
            idempotency_key=f"{n}-move",
        )
        assert txn["succeeded"] is True
        deleted = await ok(client, "state_delete", key=f"{n}/moved")
        assert deleted["deleted"] is True
        assert (await ok(client, "state_delete", key=f"{n}/moved"))["deleted"] is False

        # Counters, with an idempotent retry applied once.
        c1 = await ok(client, "counter_add", key=f"{n}/count", delta=5, idempotency_key=f"{n}-c")
        c2 = await ok(client, "counter_add", key=f"{n}/count", delta=5, idempotency_key=f"{n}-c")
        assert c1["value"] == c2["value"] == 5
        assert (await ok(client, "counter_add", key=f"{n}/count", delta=-2, min=0))["value"] == 3

        # Locks, fencing, and what this agent holds.
        lock = await ok(client, "lock_acquire", keys=[f"{n}/res", f"{n}/res2"], ttl_ms=60000)
        assert lock["status"] == "held" and lock["session"] == info["session"]["session_id"]
        token = lock["fence_token"]
        fenced = await ok(client, "state_put", key=f"{n}/res", value="v", fence={"key": f"{n}/res", "token": token})
        assert fenced["version"] > 0
        assert (await ok(client, "fence_check", key=f"{n}/res", token=token))["valid"] is True
        status = await ok(client, "lock_status", lock_id=lock["lock_id"])
        assert status["held"] is True and status["mine"] is True
        by_key = await ok(client, "lock_status", key=f"{n}/res2")
        assert by_key["held"] is True and by_key["my_locks"][0]["lock_id"] == lock["lock_id"]
        renewed = await ok(client, "lock_renew", lock_id=lock["lock_id"], ttl_ms=90000)
        assert renewed["expires_at"] >= lock["expires_at"]
        locks = await ok(client, "locks_list", prefix=f"{n}/")
        assert sorted(k["key"] for k in locks["keys"]) == [f"{n}/res", f"{n}/res2"]
        held = await ok(client, "held")
        assert [l["lock_id"] for l in held["locks"]] == [lock["lock_id"]]
        assert held["locks"][0]["fence_token"] == token
        resource = await client.read_resource("baton://held")
        assert str(lock["lock_id"]) in resource.contents[0].text
        released = await ok(client, "lock_release", lock_id=lock["lock_id"])
        assert released["released"] is True
        assert (await ok(client, "lock_release", lock_id=lock["lock_id"]))["released"] is False
        # A grant with read carries the locked keys that exist, as of the grant.
        reading = await ok(client, "lock_acquire", keys=[f"{n}/res", f"{n}/absent"], read=True)
        assert [(v["key"], v["value"]) for v in reading["values"]] == [(f"{n}/res", "v")]
        assert "values" not in lock
        await ok(client, "lock_release", lock_id=reading["lock_id"])
        assert (await ok(client, "held"))["locks"] == []
        assert (await ok(client, "lock_status", key=f"{n}/res"))["held"] is False
        shared = await ok(client, "lock_acquire", keys=[f"{n}/r"], mode="shared")
        assert shared["mode"] == "shared"
        await ok(client, "lock_release", lock_id=shared["lock_id"])

        # The audit trail names this agent.
        events = await ok(client, "events_recent", prefix=f"{n}/", limit=1000)
        assert events["events"] and {e["agent"] for e in events["events"]} == {agent}
        later = await ok(client, "events_recent", prefix=f"{n}/", from_revision=events["next_revision"])
        assert later["events"] == []

        # The prompt and the guide teach the safe patterns.
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["safe_patterns"]
        prompt = await client.get_prompt("safe_patterns")
        assert "if_version" in prompt.messages[0].content.text
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        assert resources == {"baton://held", "baton://guide"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_errors_say_what_to_do(baton, transport):
    n = ns()
    async with connect(baton, transport) as a, connect(baton, transport) as b:
        # NOT_FOUND.
        missing = await fails(a, "state_get", key=f"{n}/nothing")
        assert missing.code == "NOT_FOUND"

        # CONCURRENT_MODIFICATION on a stale if_version carries the current state.
        v1 = (await ok(a, "state_put", key=f"{n}/k", value={"n": 1}))["version"]
        await ok(b, "state_put", key=f"{n}/k", value={"n": 2}, if_version=v1)
        stale = await fails(a, "state_put", key=f"{n}/k", value={"n": 3}, if_version=v1)
        assert stale.code == "CONCURRENT_MODIFICATION"
        assert stale.error["details"]["current_value"] == {"n": 2}
        assert "Re-read" in stale.text and "if_version" in stale.text
        assert (await ok(a, "state_get", key=f"{n}/k"))["value"] == {"n": 2}

        # A held lock: CONCURRENT_MODIFICATION with retry_after_ms and the holders.
        lock = await ok(a, "lock_acquire", keys=[f"{n}/l"])
        busy = await fails(b, "lock_acquire", keys=[f"{n}/l"])
        assert busy.code == "CONCURRENT_MODIFICATION"
        assert busy.error.get("retry_after_ms", 0) >= 0 and "wait" in busy.text
        waited = await fails(b, "lock_acquire", keys=[f"{n}/l"], wait_ms=200)
        assert waited.code == "CONCURRENT_MODIFICATION"

        # FENCED: a write with a token that is no longer current.
        await ok(a, "lock_release", lock_id=lock["lock_id"])
        old = lock["fence_token"]
        fenced = await fails(b, "state_put", key=f"{n}/l", value=1, fence={"key": f"{n}/l", "token": old})
        assert fenced.code == "FENCED" and "stop writing" in fenced.text
        assert (await fails(b, "state_get", key=f"{n}/l")).code == "NOT_FOUND"
        assert (await ok(b, "fence_check", key=f"{n}/l", token=old))["valid"] is False

        # QUOTA_EXCEEDED: a bound is never crossed.
        await ok(a, "counter_add", key=f"{n}/slots", delta=1, max=1)
        quota = await fails(b, "counter_add", key=f"{n}/slots", delta=1, max=1)
        assert quota.code == "QUOTA_EXCEEDED"

        # A failing JSON Patch test is a conflict, with nothing applied.
        conflict = await fails(
            a, "state_patch", key=f"{n}/k", json_patch=[{"op": "test", "path": "/n", "value": 99}, {"op": "remove", "path": "/n"}]
        )
        assert conflict.code == "CONCURRENT_MODIFICATION"

        # Reusing an idempotency key for another request.
        await ok(a, "counter_add", key=f"{n}/c", delta=1, idempotency_key=f"{n}-i")
        mismatch = await fails(a, "counter_add", key=f"{n}/c", delta=2, idempotency_key=f"{n}-i")
        assert mismatch.code == "IDEMPOTENCY_MISMATCH"

        # An unknown lock.
        unknown = await fails(a, "lock_release", lock_id=987654321)
        assert unknown.code in ("NOT_FOUND", "FENCED")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_retried_lock_acquire_with_its_key_takes_one_lock(baton, transport):
    n = ns()
    async with connect(baton, transport) as a:
        first = await ok(a, "lock_acquire", keys=[f"{n}/l"], ttl_ms=60000, idempotency_key=f"{n}-a")
        again = await ok(a, "lock_acquire", keys=[f"{n}/l"], ttl_ms=60000, idempotency_key=f"{n}-a")
        assert again["lock_id"] == first["lock_id"] and again["fence_token"] == first["fence_token"]
        assert [l["lock_id"] for l in (await ok(a, "held"))["locks"]] == [first["lock_id"]]
        # Without the key, a second acquire of a held key is refused (own deadlock).
        assert (await fails(a, "lock_acquire", keys=[f"{n}/l"], ttl_ms=60000)).code in ("DEADLOCK", "CONCURRENT_MODIFICATION")
        bad = await fails(a, "lock_acquire", keys=[f"{n}/m"], idempotency_key="")
        assert bad.code == "INVALID_ARGUMENT" and "idempotency_key" in bad.error["message"], bad.error


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_write_releases_the_lock_it_was_made_under(baton, transport):
    n = ns()
    async with connect(baton, transport) as a, connect(baton, transport) as b:
        envelope, text = await call(a, "lock_acquire", keys=[f"{n}/l"], ttl_ms=60000)
        lock = envelope["result"]
        lock_id = lock["lock_id"]
        assert f'"release": {lock_id}' in text, text
        fence = {"key": f"{n}/l", "token": lock["fence_token"]}

        # Someone else's lock, or a refused write: nothing applies, the lock stays.
        foreign = await fails(b, "state_put", key=f"{n}/k", value=1, release=lock_id)
        assert foreign.code == "PERMISSION_DENIED"
        assert (await fails(b, "state_get", key=f"{n}/k")).code == "NOT_FOUND"
        stale = await fails(a, "state_put", key=f"{n}/k", value=1, if_version=7, fence=fence, release=lock_id)
        assert stale.code == "CONCURRENT_MODIFICATION"
        failed, text = await call(
            a, "state_txn", compares=[{"key": f"{n}/k", "exists": True}], success=[], release=lock_id
        )
        assert failed["result"]["succeeded"] is False and "NOT released" in text, text
        assert [l["lock_id"] for l in (await ok(a, "held"))["locks"]] == [lock_id]

        # The write and the release in one call: held forgets the lock, b may take it.
        envelope, text = await call(a, "state_put", key=f"{n}/k", value=1, fence=fence, release=lock_id)
        assert envelope["result"]["released_lock_id"] == lock_id and f"Released lock {lock_id}" in text, text
        assert (await ok(a, "held"))["locks"] == []
        assert (await ok(a, "lock_status", lock_id=lock_id))["held"] is False
        theirs = await ok(b, "lock_acquire", keys=[f"{n}/l"])
        added = await ok(b, "counter_add", key=f"{n}/n", delta=1, release=theirs["lock_id"])
        assert added["released_lock_id"] == theirs["lock_id"]
        assert (await ok(b, "held"))["locks"] == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_input_names_the_field_and_applies_nothing(baton, transport):
    n = ns()
    async with connect(baton, transport) as client:
        cases = [
            ("state_put", {"value": 1}, "key"),  # missing field
            ("state_put", {"key": f"{n}/k"}, "value"),  # missing field
            ("state_put", {"key": 42, "value": 1}, "key"),  # wrong type
            ("state_put", {"key": f"{n}/k", "value": 1, "if_version": "one"}, "if_version"),
            ("state_put", {"key": f"{n}/k", "value": 1, "colour": "red"}, "colour"),  # unknown field
            ("state_put", {"key": f"{n}/k", "value": "x" * (1024 * 1024 + 10)}, "value"),  # oversize
            ("state_put", {"key": f"{n}/" + "k" * 600, "value": 1}, "key"),  # key too long
            ("state_put", {"key": f"{n}/k", "value": 1, "ttl_ms": 1}, "ttl_ms"),  # out of bounds
            ("state_put", {"key": f"{n}/k", "value": 1, "fence": {"key": f"{n}/k"}}, "token"),
            ("state_patch", {"key": f"{n}/k", "merge": [1]}, "merge"),
            ("state_patch", {"key": f"{n}/k"}, "merge"),
            ("lock_acquire", {"keys": []}, "keys"),
            ("lock_acquire", {"keys": [f"{n}/a"] * 65}, "keys"),
            ("lock_acquire", {"keys": [f"{n}/a"], "wait_ms": 10_000_000}, "wait_ms"),
            ("lock_acquire", {"keys": [f"{n}/a"], "mode": "sideways"}, "mode"),
            ("lock_acquire", {"keys": "a/b"}, "keys"),
            ("lock_status", {}, "lock_id"),
            ("counter_add", {"key": f"{n}/k", "delta": 1.5}, "delta"),
            ("counter_add", {"key": f"{n}/k", "delta": 1, "min": 5, "max": 1}, "min"),
            ("state_txn", {"success": [{"op": "put", "key": f"{n}/k"}]}, "success[0]"),
            ("state_list", {"limit": 0}, "limit"),
            ("events_recent", {"limit": 100000}, "limit"),
            ("held", {"x": 1}, "x"),
        ]
        for tool, arguments, field in cases:
            envelope, text = await call(client, tool, **arguments)
            assert not envelope["ok"], f"{tool}({str(arguments)[:80]}) was accepted"
            error = envelope["error"]
            assert error["code"] == "INVALID_ARGUMENT", f"{tool}: {text[:200]}"
            assert field in error["message"], f"{tool}({str(arguments)[:80]}): field {field!r} not named in {error['message'][:200]!r}"
            assert "nothing was applied" in text
        # Nothing was applied: no key, no lock, no counter under the namespace.
        assert (await ok(client, "state_list", prefix=f"{n}/"))["entries"] == []
        assert (await ok(client, "locks_list", prefix=f"{n}/"))["keys"] == []
        assert (await ok(client, "events_recent", prefix=f"{n}/"))["events"] == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lease_lost_is_said_first(baton, transport):
    n = ns()
    async with connect(baton, transport) as client:
        # A lock with its own short TTL runs out: the next look says so.
        lock = await ok(client, "lock_acquire", keys=[f"{n}/short"], ttl_ms=150)
        await anyio.sleep(0.6)
        envelope, text = await call(client, "held")
        assert text.startswith("LEASE LOST:"), text
        assert envelope["lease_lost"][0]["id"] == lock["lock_id"]
        assert envelope["lease_lost"][0]["status"] == "expired"
        assert envelope["result"]["locks"] == []
        status = await ok(client, "lock_status", lock_id=lock["lock_id"])
        assert status["held"] is False and status["status"] == "expired"

        # The session is killed by an admin: the next call says so prominently,
        # and the call after it runs in a new session.
        session = (await ok(client, "session_info"))["session"]["session_id"]
        taken = await ok(client, "lock_acquire", keys=[f"{n}/k"])
        killed = baton.api("POST", f"/v1/sessions/{session}/kill", {"reason": "test"})
        assert killed["ok"], killed
        envelope, text = await call(client, "state_put", key=f"{n}/k", value=1, fence={"key": f"{n}/k", "token": taken["fence_token"]})
        assert not envelope["ok"] and envelope["error"]["code"] == "FENCED"
        assert text.startswith("LEASE LOST: your Baton session"), text
        assert envelope["lease_lost"][0]["what"] == "session"
        assert envelope["lease_lost"][0]["locks"][0]["lock_id"] == taken["lock_id"]
        again = await ok(client, "session_info")
        assert again["session"]["session_id"] != session and again["locks"] == []
        assert (await ok(client, "lock_acquire", keys=[f"{n}/k"]))["status"] == "held"


async def test_no_server_is_said_clearly_and_never_hangs(tmp_path):
    from conftest import BATON_BIN, free_port, stdio_params  # noqa: F401
    from mcp import Client

    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with anyio.fail_after(30):
        async with Client(stdio_params(url), read_timeout_seconds=30) as client:
            tools = (await client.list_tools()).tools
            assert len(tools) == len(EXPECTED_TOOLS)
            failure = await fails(client, "state_get", key="a/b")
    assert failure.code == "UNAVAILABLE"
    assert url in failure.error["message"] and "baton serve" in failure.text
    assert time.monotonic() - started < 20


async def test_http_rejects_foreign_hosts(baton):
    import httpx2 as httpx

    async with httpx.AsyncClient(timeout=10) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        headers = {"Accept": "application/json, text/event-stream", "Host": "evil.example:80"}
        answer = await http.post(baton.mcp_url, json=body, headers=headers)
        assert answer.status_code == 403, answer.text
