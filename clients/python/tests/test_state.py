"""Versioned state through the SDK: reads, conditional writes, patches,
transactions, idempotent retries, and `update` under real concurrency."""

from __future__ import annotations

import threading

import pytest
from baton import (
    BatonError,
    Client,
    ConcurrentModification,
    IdempotencyMismatch,
    InvalidArgument,
    NotFound,
)


def test_put_get_and_a_stale_compare_and_set_carries_the_current_value(agent, ns) -> None:
    alice = agent("alice")
    key = f"{ns}config"
    first = alice.put(key, {"mode": "a"}, if_absent=True)["version"]
    got = alice.get(key)
    assert (got["value"], got["version"]) == ({"mode": "a"}, first)

    second = alice.put(key, {"mode": "b"}, if_version=first)["version"]
    assert second > first
    with pytest.raises(ConcurrentModification) as stale:
        alice.put(key, {"mode": "stale"}, if_version=first)
    assert stale.value.status == 409
    assert stale.value.details["current_version"] == second
    assert stale.value.details["current_value"] == {"mode": "b"}
    with pytest.raises(ConcurrentModification):
        alice.put(key, {"mode": "again"}, if_absent=True)
    # Nothing the refusals carried was applied.
    assert alice.get(key)["value"] == {"mode": "b"}


def test_missing_keys_patches_deletes_lists_and_history(agent, ns) -> None:
    bob = agent("bob")
    with pytest.raises(NotFound) as missing:
        bob.get(f"{ns}nothing")
    assert missing.value.code == "NOT_FOUND" and missing.value.status == 404

    key = f"{ns}doc"
    bob.put(key, {"a": 1, "b": {"c": 2}})
    bob.patch(key, merge={"b": {"c": None, "d": 3}})
    assert bob.get(key)["value"] == {"a": 1, "b": {"d": 3}}
    bob.patch(key, json_patch=[{"op": "replace", "path": "/a", "value": 5}])
    assert bob.get(key)["value"]["a"] == 5
    with pytest.raises(ConcurrentModification):
        bob.patch(key, json_patch=[{"op": "test", "path": "/a", "value": 6}])
    with pytest.raises(InvalidArgument):
        bob.patch(key)  # neither merge nor json_patch: refused before sending

    versions = [v["version"] for v in bob.history(key)["versions"]]
    assert len(versions) == 3 and versions == sorted(versions, reverse=True)  # newest first
    assert bob.get(key)["version"] == versions[0]

    for i in range(5):
        bob.put(f"{ns}list/{i}", i)
    page = bob.list(f"{ns}list/", limit=2)
    seen = [e["key"] for e in page["entries"]]
    while page.get("next_after"):
        page = bob.list(f"{ns}list/", after=page["next_after"], limit=2)
        seen += [e["key"] for e in page["entries"]]
    assert seen == [f"{ns}list/{i}" for i in range(5)]

    assert bob.delete(key)["deleted"] is True
    with pytest.raises(NotFound):
        bob.get(key)


def test_keys_with_characters_a_path_cannot_carry_round_trip(agent, ns) -> None:
    carol = agent("carol")
    key = f"{ns}a b/ü?&#%"
    carol.put(key, "odd")
    assert carol.get(key)["key"] == key
    assert [e["key"] for e in carol.list(ns)["entries"]] == [key]
    with pytest.raises(InvalidArgument) as dots:
        carol.put(f"{ns}../escape", 1)
    assert "'..'" in dots.value.message
    assert carol.list(ns)["entries"][0]["key"] == key  # nothing else was written


def test_a_txn_applies_all_or_nothing(agent, ns) -> None:
    dave = agent("dave")
    a, b = f"{ns}a", f"{ns}b"
    version = dave.put(a, 1)["version"]
    done = dave.txn(
        compares=[{"key": a, "version": version}],
        success=[{"op": "put", "key": a, "value": 2}, {"op": "put", "key": b, "value": 2}],
    )
    assert done["succeeded"] is True
    refused = dave.txn(
        compares=[{"key": a, "version": version}],
        success=[{"op": "put", "key": b, "value": 99}],
        failure=[{"op": "get", "key": a}],
    )
    assert refused["succeeded"] is False
    assert dave.get(b)["value"] == 2


def test_a_retry_with_the_idempotency_key_applies_once(agent, ns) -> None:
    erin = agent("erin")
    key = f"{ns}charge"
    first = erin.counter_add(key, 10, idempotency_key="charge-1")
    again = erin.counter_add(key, 10, idempotency_key="charge-1")
    assert first == again
    assert erin.get(key)["value"] == 10
    with pytest.raises(IdempotencyMismatch) as mismatch:
        erin.counter_add(key, 11, idempotency_key="charge-1")
    assert mismatch.value.status == 422
    assert erin.get(key)["value"] == 10


def test_update_loses_no_increment_among_concurrent_writers(baton, ns) -> None:
    key = f"{ns}visits"
    writers, each = 8, 25
    errors: list[BaseException] = []

    def work(n: int) -> None:
        client = Client(baton.url, agent=f"writer-{n}")
        try:
            for _ in range(each):
                client.update(key, lambda v: (v or 0) + 1)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer did not finish within 60 s"
    assert errors == []
    assert Client(baton.url, agent="reader").get(key)["value"] == writers * each


def test_update_gives_up_with_the_last_conflict_after_max_attempts(agent, ns) -> None:
    fred, gina = agent("fred"), agent("gina")
    key = f"{ns}hot"
    fred.put(key, 0)

    def change(value):
        # Another writer gets in between every read and write of this one.
        gina.counter_add(key, 1)
        return value + 100

    with pytest.raises(ConcurrentModification):
        fred.update(key, change, max_attempts=3)
    assert fred.get(key)["value"] == 3  # only gina's adds landed


def test_a_value_that_is_not_json_is_refused_before_sending(agent, ns) -> None:
    hank = agent("hank")
    with pytest.raises(InvalidArgument) as bad:
        hank.put(f"{ns}x", {1, 2})
    assert "not JSON" in bad.value.message
    with pytest.raises(InvalidArgument):
        hank.put(f"{ns}x", float("nan"))
    with pytest.raises(NotFound):
        hank.get(f"{ns}x")


def test_an_unknown_error_code_still_raises_with_it() -> None:
    from baton.errors import from_envelope

    error = from_envelope({"code": "SOMETHING_NEW", "message": "m", "retry_after_ms": 5}, 418)
    assert type(error) is BatonError
    assert (error.code, error.retry_after_ms, error.status) == ("SOMETHING_NEW", 5, 418)
    assert str(error) == "SOMETHING_NEW: m"


def test_update_redoes_a_change_on_a_key_deleted_meanwhile(agent, ns) -> None:
    ivy, jon = agent("ivy"), agent("jon")
    key = f"{ns}gone"
    ivy.put(key, {"n": 1})
    seen = []

    def change(value):
        seen.append(value)
        if len(seen) == 1:
            jon.delete(key)  # another writer deletes it in between
        return {"n": (value or {"n": 0})["n"] + 10}

    result = ivy.update(key, change)
    assert seen == [{"n": 1}, None]
    assert ivy.get(key)["value"] == {"n": 10} == result["value"]
    with pytest.raises(InvalidArgument):
        ivy.update(key, change, max_attempts=0)


def test_a_refresh_whose_value_cannot_be_published_gives_the_claim_back(agent, ns) -> None:
    kim, lee = agent("kim"), agent("lee")
    key = f"{ns}token"
    with pytest.raises(InvalidArgument):
        kim.refresh_once(key, lambda: {1, 2}, max_age_ms=60_000, claim_ttl_ms=60_000)
    # Without the abandon, lee would wait out kim's 60 s claim.
    assert lee.once(key, 60_000, 10_000)["status"] == "claimed"
