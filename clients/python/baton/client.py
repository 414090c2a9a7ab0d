"""The Python SDK: one method per endpoint of Baton's HTTP API
(``docs/http-api.md``), plus the few patterns every agent needs and gets
wrong by hand: a lock held in a ``with`` block, a session kept alive, a
read-modify-write that never loses an update, and single-flight refresh.

Results are the server's JSON ``result`` as plain dicts and lists, exactly
as the HTTP API documents them. Failures raise the
:class:`~baton.errors.BatonError` subclass named by the error code. The SDK
never retries by itself: a retry is the caller's decision, made safe with an
``idempotency_key``.

A :class:`Client` is safe to share between threads; its copies
(:meth:`Client.with_session`, a session's client) share its connections.
"""

from __future__ import annotations

import copy
import getpass
import http.client
import json
import os
import socket
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote

from .errors import BatonError, ConcurrentModification, Fenced, Internal, InvalidArgument, Unavailable, from_envelope
from .transport import REQUEST_TIMEOUT_S, START_HINT, Transport

#: Where ``baton serve`` listens unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:7700"
#: How long a watch may hear nothing before it is taken for dead (the server
#: sends a keep-alive comment every 15 s).
WATCH_IDLE_TIMEOUT_S = 60.0
#: How many times :meth:`Client.update` redoes a change that lost a race
#: before it gives up with the last conflict.
UPDATE_MAX_ATTEMPTS = 64

Json = Any
#: A fence: ``(key, token)``, or a held :class:`Lock` on one key.
FenceArg = Union[Tuple[str, int], "Lock", None]
#: A lock to release with a write: its id, or the :class:`Lock`.
ReleaseArg = Union[int, "Lock", None]


def default_agent() -> str:
    """``BATON_AGENT``, else ``<user>@<host>`` like the CLI: stable across
    calls, so a retry is recognised as the same agent's."""
    agent = os.environ.get("BATON_AGENT")
    if agent:
        return agent
    try:
        user = getpass.getuser()
    except Exception:  # no USER, LOGNAME or passwd entry
        user = f"uid-{os.getuid()}" if hasattr(os, "getuid") else "python"
    return f"{user}@{socket.gethostname()}"


def encode_key(key: str) -> str:
    """A key as it goes into a path: ``/`` kept, everything outside RFC
    3986's unreserved characters percent-encoded. A ``.`` or ``..`` segment
    is refused: HTTP clients and proxies resolve it away, and the request
    would then name another key."""
    if any(segment in (".", "..") for segment in key.split("/")):
        raise InvalidArgument(
            f"{key!r} has a '.' or '..' segment, which a URL path cannot carry; rename the key",
            details={"field": "key"},
        )
    return quote(key, safe="/")


def _json_bytes(body: Json) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"the request is not JSON ({e}); pass dicts, lists, str, int, float, bool, None") from None


class Client:
    """A connection to one Baton server, as one agent.

    ``url`` defaults to ``BATON_URL`` or ``http://127.0.0.1:7700``; ``agent``
    to ``BATON_AGENT`` or ``<user>@<host>``. Give every agent its own name:
    locks, sessions and idempotency keys belong to the agent.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        agent: Optional[str] = None,
        *,
        session: Optional[int] = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        _transport: Optional[Transport] = None,
    ) -> None:
        url = url or os.environ.get("BATON_URL") or DEFAULT_URL
        try:
            self._transport = _transport or Transport(url)
        except ValueError as e:
            raise InvalidArgument(str(e), details={"field": "url"}) from None
        self.agent = agent if agent is not None else default_agent()
        if not self.agent or not self.agent.isascii() or not self.agent.isprintable():
            raise InvalidArgument(
                f"agent {self.agent!r} cannot go in an HTTP header: use printable ASCII, e.g. 'order-bot-1'",
                details={"field": "agent"},
            )
        self.session_id = session
        self.timeout_s = timeout_s

    @property
    def url(self) -> str:
        return self._transport.base

    def with_session(self, session_id: Optional[int]) -> "Client":
        """This client calling in a session: locks it takes end with the
        session. Shares this client's connections."""
        return Client(agent=self.agent, session=session_id, timeout_s=self.timeout_s, _transport=self._transport)

    def close(self) -> None:
        """Closes idle connections; the client still works afterwards."""
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the wire ----

    def _headers(self) -> Dict[str, str]:
        headers = {"Baton-Agent": self.agent}
        if self.session_id is not None:
            headers["Baton-Session"] = str(self.session_id)
        return headers

    def call(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        *,
        query: Optional[Dict[str, Any]] = None,
        wait_ms: int = 0,
        idempotency_key: Optional[str] = None,
        fence: FenceArg = None,
        release: ReleaseArg = None,
    ) -> Json:
        """Any endpoint: returns the envelope's ``result``, raises its error.

        ``wait_ms`` is how long the server may hold the request (a lock
        wait); the timeout is that plus ``timeout_s``.
        """
        headers = self._headers()
        mutation = method not in ("GET", "HEAD")
        if mutation:
            if idempotency_key is not None:
                if not idempotency_key.isascii() or not idempotency_key.isprintable():
                    raise InvalidArgument(
                        f"idempotency_key {idempotency_key!r} cannot go in an HTTP header: use printable ASCII",
                        details={"field": "idempotency_key"},
                    )
                headers["Idempotency-Key"] = idempotency_key
            if fence is not None or release is not None:
                body = dict(body or {})
                if fence is not None:
                    key, token = _fence_of(fence)
                    body["fence"] = {"key": key, "token": token}
                if release is not None:
                    body["release"] = release.lock_id if isinstance(release, Lock) else int(release)
        elif idempotency_key is not None or fence is not None or release is not None:
            raise InvalidArgument(f"{method} {path} is a read: idempotency_key, fence and release are for mutations")
        target = _path_target(path)
        if query:
            pairs = [f"{name}={quote(str(value), safe='')}" for name, value in query.items() if value is not None]
            if pairs:
                target += ("&" if "?" in target else "?") + "&".join(pairs)
        data = None if body is None else _json_bytes(body)
        status, answer = self._transport.exchange(
            method, target, headers, data, self.timeout_s + max(wait_ms, 0) / 1000.0
        )
        result = _decode(status, answer, f"{self.url}{target}")
        if isinstance(release, Lock) and isinstance(result, dict) and result.get("released_lock_id") == release.lock_id:
            release.released = True
        return result

    # ---- sessions ----

    def session_open(self, ttl_ms: int) -> Json:
        return self.call("POST", "/v1/sessions", {"ttl_ms": ttl_ms})

    def session_keepalive(self, session_id: int) -> Json:
        return self.call("POST", f"/v1/sessions/{int(session_id)}/keepalive", {})

    def session_close(self, session_id: int) -> Json:
        return self.call("DELETE", f"/v1/sessions/{int(session_id)}")

    def session_kill(self, session_id: int, reason: Optional[str] = None) -> Json:
        body = {} if reason is None else {"reason": reason}
        return self.call("POST", f"/v1/sessions/{int(session_id)}/kill", body)

    def session_get(self, session_id: int) -> Json:
        return self.call("GET", f"/v1/sessions/{int(session_id)}")

    def session_list(self) -> List[Json]:
        return self.call("GET", "/v1/sessions")["sessions"]

    def session(self, ttl_ms: int = 30_000, *, keepalive: bool = True) -> "Session":
        """Opens a session; use it in a ``with`` block. Its :attr:`Session.client`
        calls in the session, and a thread keeps it alive every third of
        ``ttl_ms`` until it is closed."""
        info = self.session_open(ttl_ms)
        return Session(self, info, keepalive)

    # ---- locks and semaphores ----

    def lock(
        self,
        keys: Union[str, Iterable[str]],
        *,
        mode: str = "exclusive",
        ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        lock_delay_ms: int = 0,
        read: bool = False,
        idempotency_key: Optional[str] = None,
    ) -> "Lock":
        """Acquires ``keys`` (one key or several, all or nothing).

        With ``wait_ms`` the call queues (FIFO) until granted or the wait
        ends (:class:`~baton.errors.ConcurrentModification` with
        ``retry_after_ms`` and the holders). Without ``ttl_ms`` the lock
        lives as long as the session. ``read=True`` brings the keys' values
        as of the grant (:attr:`Lock.values`). Use the lock in a ``with``
        block to release it however the block ends.
        """
        keys = [keys] if isinstance(keys, str) else list(keys)
        body: Dict[str, Any] = {"keys": keys, "mode": mode}
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        if wait_ms:
            body["wait_ms"] = wait_ms
        if lock_delay_ms:
            body["lock_delay_ms"] = lock_delay_ms
        if read:
            body["read"] = True
        info = self.call("POST", "/v1/locks", body, wait_ms=wait_ms, idempotency_key=idempotency_key)
        return Lock(self, info)

    def semaphore(
        self,
        key: str,
        permits: int,
        capacity: int,
        *,
        ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        idempotency_key: Optional[str] = None,
    ) -> "Lock":
        """Takes ``permits`` of the ``capacity`` permits on ``key``; release
        and renew it like a lock."""
        body: Dict[str, Any] = {"key": key, "permits": permits, "capacity": capacity}
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        if wait_ms:
            body["wait_ms"] = wait_ms
        info = self.call("POST", "/v1/semaphores", body, wait_ms=wait_ms, idempotency_key=idempotency_key)
        return Lock(self, info)

    def lock_release(self, lock_id: int) -> Json:
        """Idempotent: an ended lock answers ``released: false`` and how it ended."""
        return self.call("DELETE", f"/v1/locks/{int(lock_id)}")

    def lock_renew(self, lock_id: int, ttl_ms: Optional[int] = None) -> Json:
        body = {} if ttl_ms is None else {"ttl_ms": ttl_ms}
        return self.call("POST", f"/v1/locks/{int(lock_id)}/renew", body)

    def lock_state(self, lock_id: int) -> Json:
        return self.call("GET", f"/v1/locks/{int(lock_id)}")

    def key_locks(self, key: str) -> Json:
        """Holders and waiters of ``key``."""
        return self.call("GET", "/v1/locks", query={"key": key})

    def lock_list(self, prefix: str = "", limit: Optional[int] = None) -> List[Json]:
        return self.call("GET", "/v1/locks", query={"prefix": prefix or None, "limit": limit})["keys"]

    def fence_check(self, key: str, token: int) -> Json:
        """Whether ``token`` is still a current fence of ``key`` (for systems
        outside Baton that take fenced writes)."""
        return self.call("GET", "/v1/fence", query={"key": key, "token": token})

    # ---- state ----

    def get(self, key: str) -> Json:
        """``{key, value, version, created_revision, expires_at?, revision}``;
        :class:`~baton.errors.NotFound` if the key does not exist."""
        return self.call("GET", f"/v1/kv/{encode_key(key)}")

    def put(
        self,
        key: str,
        value: Json,
        *,
        if_version: Optional[int] = None,
        if_absent: bool = False,
        ttl_ms: Optional[int] = None,
        fence: FenceArg = None,
        release: ReleaseArg = None,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        """Writes ``value``. ``if_version`` (0: absent) or ``if_absent`` make
        it a compare-and-set: a conflict raises
        :class:`~baton.errors.ConcurrentModification` whose ``details`` carry
        the current version and value. ``release`` releases that lock in the
        same commit, once the write applied."""
        body: Dict[str, Any] = {"value": value}
        if if_version is not None:
            body["if_version"] = if_version
        if if_absent:
            body["if_absent"] = True
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        return self.call(
            "PUT", f"/v1/kv/{encode_key(key)}", body, fence=fence, release=release, idempotency_key=idempotency_key
        )

    def patch(
        self,
        key: str,
        *,
        merge: Optional[Dict[str, Any]] = None,
        json_patch: Optional[List[Dict[str, Any]]] = None,
        if_version: Optional[int] = None,
        fence: FenceArg = None,
        release: ReleaseArg = None,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        """Changes part of a value: an RFC 7396 ``merge`` (``None`` removes a
        member) or an RFC 6902 ``json_patch`` (a failing ``test`` is a
        conflict), applied by the server on the current value."""
        if (merge is None) == (json_patch is None):
            raise InvalidArgument("give exactly one of merge or json_patch", details={"field": "patch"})
        body: Dict[str, Any] = {"merge": merge} if merge is not None else {"json_patch": json_patch}
        if if_version is not None:
            body["if_version"] = if_version
        return self.call(
            "PATCH", f"/v1/kv/{encode_key(key)}", body, fence=fence, release=release, idempotency_key=idempotency_key
        )

    def delete(
        self,
        key: str,
        *,
        if_version: Optional[int] = None,
        fence: FenceArg = None,
        release: ReleaseArg = None,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        body = None if if_version is None else {"if_version": if_version}
        return self.call(
            "DELETE", f"/v1/kv/{encode_key(key)}", body, fence=fence, release=release, idempotency_key=idempotency_key
        )

    def list(self, prefix: str = "", *, after: Optional[str] = None, limit: Optional[int] = None) -> Json:
        """``{entries, next_after?, revision}``: pass ``next_after`` as
        ``after`` for the next page."""
        return self.call("GET", "/v1/kv", query={"prefix": prefix or None, "after": after, "limit": limit})

    def history(self, key: str, limit: Optional[int] = None) -> Json:
        return self.call("GET", f"/v1/history/{encode_key(key)}", query={"limit": limit})

    def txn(
        self,
        compares: List[Dict[str, Any]],
        success: List[Dict[str, Any]],
        failure: Optional[List[Dict[str, Any]]] = None,
        *,
        fence: FenceArg = None,
        release: ReleaseArg = None,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        """All or nothing: if every compare holds, ``success`` applies, else
        ``failure``; ``{succeeded, revision, results}``."""
        body = {"compares": compares, "success": success, "failure": failure or []}
        return self.call("POST", "/v1/txn", body, fence=fence, release=release, idempotency_key=idempotency_key)

    def update(
        self,
        key: str,
        change: Callable[[Json], Json],
        *,
        ttl_ms: Optional[int] = None,
        max_attempts: int = UPDATE_MAX_ATTEMPTS,
    ) -> Json:
        """Read, ``change``, compare-and-set, redone on a conflict until it
        applies: no update is ever lost to a concurrent writer.

        ``change`` gets the current value (``None`` if the key does not
        exist; a copy it may modify) and returns the new one; it may run
        more than once, so it must not have side effects. A conflict brings
        the current value with it, so a retry costs one round trip. Returns
        the write's result with ``value`` set to what was written.

        The write is a put, which replaces the key's lease: a key with a TTL
        keeps one only if ``ttl_ms`` is given again.
        """
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts is {max_attempts}; give at least 1", details={"field": "max_attempts"})
        try:
            current = self.get(key)
            value, version = current["value"], current["version"]
        except BatonError as e:
            if e.code != "NOT_FOUND":
                raise
            value, version = None, 0
        conflict: Optional[ConcurrentModification] = None
        for _ in range(max_attempts):
            new = change(copy.deepcopy(value))
            try:
                result = self.put(key, new, if_version=version, ttl_ms=ttl_ms)
            except ConcurrentModification as e:
                if "current_version" not in e.details:
                    raise
                conflict = e
                version = e.details["current_version"] or 0
                value = e.details.get("current_value") if version else None
                continue
            result["value"] = new
            return result
        assert conflict is not None
        raise conflict

    # ---- counters, quotas, rate limits ----

    def counter_add(
        self,
        key: str,
        delta: int,
        *,
        min: Optional[int] = None,
        max: Optional[int] = None,
        fence: FenceArg = None,
        release: ReleaseArg = None,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        """Adds ``delta`` atomically; crossing ``min``/``max`` is refused with
        :class:`~baton.errors.QuotaExceeded` and nothing applied."""
        body: Dict[str, Any] = {"key": key, "delta": delta}
        if min is not None:
            body["min"] = min
        if max is not None:
            body["max"] = max
        return self.call("POST", "/v1/counters/add", body, fence=fence, release=release, idempotency_key=idempotency_key)

    def quota_set(self, quota: str, capacity: int, *, reset_used: bool = False) -> Json:
        body: Dict[str, Any] = {"capacity": capacity}
        if reset_used:
            body["reset_used"] = True
        return self.call("PUT", f"/v1/quotas/{encode_key(quota)}", body)

    def quota_get(self, quota: str) -> Json:
        return self.call("GET", f"/v1/quotas/{encode_key(quota)}")

    def reserve(self, quota: str, amount: int, ttl_ms: int, *, idempotency_key: Optional[str] = None) -> Json:
        """Reserves ``amount`` of ``quota`` for ``ttl_ms``; commit what was
        used, or release. An expired reservation returns to the pool."""
        body = {"quota": quota, "amount": amount, "ttl_ms": ttl_ms}
        return self.call("POST", "/v1/reservations", body, idempotency_key=idempotency_key)

    def reservation_commit(self, reservation_id: int, actual: int, *, idempotency_key: Optional[str] = None) -> Json:
        return self.call(
            "POST", f"/v1/reservations/{int(reservation_id)}/commit", {"actual": actual}, idempotency_key=idempotency_key
        )

    def reservation_release(self, reservation_id: int) -> Json:
        return self.call("DELETE", f"/v1/reservations/{int(reservation_id)}")

    def rate_take(
        self,
        bucket: str,
        rate_per_sec: int,
        burst: int,
        *,
        tokens: int = 1,
        wait_ms: int = 0,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        """Takes ``tokens`` from a shared bucket; refused with
        :class:`~baton.errors.RateLimited` and the exact ``retry_after_ms``,
        or, with ``wait_ms``, queued (FIFO) until they are there."""
        body = {"bucket": bucket, "tokens": tokens, "rate_per_sec": rate_per_sec, "burst": burst}
        if wait_ms:
            body["wait_ms"] = wait_ms
        return self.call("POST", "/v1/rate/take", body, wait_ms=wait_ms, idempotency_key=idempotency_key)

    def bucket(self, bucket: str) -> Json:
        return self.call("GET", f"/v1/buckets/{encode_key(bucket)}")

    # ---- once: single-flight refresh ----

    def once(
        self,
        key: str,
        max_age_ms: int,
        claim_ttl_ms: int,
        *,
        wait_ms: int = 0,
        idempotency_key: Optional[str] = None,
    ) -> Json:
        """``status: "fresh"`` with the value, or ``"claimed"`` with a
        ``claim_id``: refresh, then :meth:`once_fulfil` (or
        :meth:`once_abandon`). Everyone else waits up to ``wait_ms`` for the
        claimant's value."""
        body: Dict[str, Any] = {"key": key, "max_age_ms": max_age_ms, "claim_ttl_ms": claim_ttl_ms}
        if wait_ms:
            body["wait_ms"] = wait_ms
        return self.call("POST", "/v1/once", body, wait_ms=wait_ms, idempotency_key=idempotency_key)

    def once_fulfil(self, key: str, claim_id: int, value: Json) -> Json:
        """Publishes the refreshed value; :class:`~baton.errors.Fenced` if
        the claim is no longer current (then do not use it as the shared one)."""
        return self.call("POST", "/v1/once/fulfil", {"key": key, "claim_id": claim_id, "value": value})

    def once_abandon(self, key: str, claim_id: int) -> Json:
        return self.call("POST", "/v1/once/abandon", {"key": key, "claim_id": claim_id})

    def refresh_once(
        self,
        key: str,
        refresh: Callable[[], Json],
        *,
        max_age_ms: int,
        claim_ttl_ms: int,
        wait_ms: int = 30_000,
    ) -> Json:
        """The value of ``key`` if younger than ``max_age_ms``; otherwise
        exactly one caller across every agent runs ``refresh`` and publishes
        its result while the others wait for it (no refresh storm). If
        ``refresh`` raises, the claim is abandoned, so the next waiter
        refreshes instead, and the exception propagates.

        A wait in a session is the session's: threads sharing one session's
        client on the same key get DEADLOCK (a session does not wait for
        itself). Give each thread its own client, or call it outside the
        session."""
        answer = self.once(key, max_age_ms, claim_ttl_ms, wait_ms=wait_ms)
        if answer["status"] == "fresh":
            return answer["value"]
        if answer["status"] != "claimed":
            raise Internal(f"once answered status {answer['status']!r}; are client and server the same version?")
        claim_id = answer["claim_id"]
        try:
            value = refresh()
            self.once_fulfil(key, claim_id, value)
        except BaseException:
            # A refresh or a publish that failed: the next waiter refreshes
            # now instead of after the claim's TTL. (After a publish that
            # applied, the abandon is FENCED and changes nothing.)
            try:
                self.once_abandon(key, claim_id)
            except BatonError:
                pass  # the claim expires by itself; the first error matters more
            raise
        return value

    # ---- queues ----

    def enqueue(
        self, queue: str, item: Json, *, max_attempts: Optional[int] = None, idempotency_key: Optional[str] = None
    ) -> Json:
        body: Dict[str, Any] = {"queue": queue, "item": item}
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        return self.call("POST", "/v1/queues/enqueue", body, idempotency_key=idempotency_key)

    def claim(self, queue: str, visibility_ms: int) -> Optional[Json]:
        """The oldest ready item (ack it within ``visibility_ms`` or it is
        delivered again), or ``None`` when nothing is ready."""
        answer = self.call("POST", "/v1/queues/claim", {"queue": queue, "visibility_ms": visibility_ms})
        return None if answer.get("empty") else answer

    def ack(self, queue: str, item_id: int, claim_token: int) -> Json:
        """:class:`~baton.errors.Fenced` if the claim expired (the item was
        delivered again)."""
        return self.call("POST", "/v1/queues/ack", {"queue": queue, "item_id": item_id, "claim_token": claim_token})

    def nack(self, queue: str, item_id: int, claim_token: int, *, delay_ms: int = 0) -> Json:
        body: Dict[str, Any] = {"queue": queue, "item_id": item_id, "claim_token": claim_token}
        if delay_ms:
            body["delay_ms"] = delay_ms
        return self.call("POST", "/v1/queues/nack", body)

    def queue_status(self, queue: str) -> Json:
        return self.call("GET", f"/v1/queue-status/{encode_key(queue)}")

    # ---- events ----

    def events(self, prefix: str = "", *, from_revision: Optional[int] = None, limit: Optional[int] = None) -> Json:
        """One page of the audit trail: ``{events, next_revision}``."""
        return self.call(
            "GET", "/v1/events", query={"prefix": prefix or None, "from_revision": from_revision, "limit": limit}
        )

    def watch(self, prefix: str = "", *, from_revision: Optional[int] = None) -> "Watch":
        """The events under ``prefix`` as they happen (from ``from_revision``
        if given): iterate it, close it (or use it in a ``with`` block)."""
        query = {"prefix": prefix or None, "from_revision": from_revision}
        target = "/v1/watch?" + "&".join(
            f"{name}={quote(str(value), safe='')}" for name, value in query.items() if value is not None
        )
        conn, response = self._transport.stream(target.rstrip("?"), self._headers(), WATCH_IDLE_TIMEOUT_S)
        if response.status != 200:
            body = response.read()
            conn.close()
            _decode(response.status, body, f"{self.url}{target}")
            raise Internal(f"{self.url}{target} answered HTTP {response.status} without an error")
        return Watch(conn, response, self.url, from_revision)

    # ---- the server ----

    def status(self) -> Json:
        return self.call("GET", "/v1/status")

    def health(self) -> None:
        """Returns if the server is up; :class:`~baton.errors.Unavailable` if not."""
        status, _ = self._transport.exchange("GET", "/healthz", self._headers(), None, self.timeout_s)
        if status != 200:
            raise Unavailable(f"Baton at {self.url} is not healthy (HTTP {status}); check its log", status=status)


def _path_target(path: str) -> str:
    """A raw path as it goes on the wire: characters a URI cannot carry
    percent-encoded (existing %XX escapes kept), and a ``.`` or ``..``
    segment refused, since every client and proxy on the way may resolve
    it away and the request would then name another key."""
    path, sep, query = path.partition("?")
    if not path.startswith("/"):
        raise InvalidArgument(f"path {path!r} must start with /", details={"field": "path"})
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidArgument(
            f"{path!r} has a '.' or '..' segment, which a URL path cannot carry; rename the key",
            details={"field": "key"},
        )
    reserved = "/%:@!$&'()*+,;=-._~"
    return quote(path, safe=reserved) + sep + quote(query, safe=reserved + "?")


def _fence_of(fence: FenceArg) -> Tuple[str, int]:
    if isinstance(fence, Lock):
        return fence.fence()
    if isinstance(fence, tuple) and len(fence) == 2:
        return str(fence[0]), int(fence[1])
    raise InvalidArgument(f"fence must be (key, token) or a Lock, not {fence!r}", details={"field": "fence"})


def _decode(status: int, body: bytes, url: str) -> Json:
    """The envelope's ``result``, or its error raised."""
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict) or "ok" not in envelope:
        text = body[:200].decode("utf-8", "replace")
        if status in (502, 503, 504):
            # A proxy in front of a server that is down or restarting.
            raise Unavailable(f"{url} answered HTTP {status} ({text!r}); {START_HINT}", status=status)
        raise Internal(
            f"{url} answered HTTP {status} with something that is not Baton's envelope ({text!r}); "
            "is BATON_URL pointing at a Baton server?",
            status=status,
        )
    if envelope["ok"]:
        return envelope.get("result")
    error = envelope.get("error")
    if not isinstance(error, dict):
        raise Internal(f"{url} answered an error envelope without an error: {envelope!r}", status=status)
    raise from_envelope(error, status)


class Lock:
    """A granted lock or semaphore. ``with client.lock(...) as lock:``
    releases it however the block ends, unless a write already released it
    (``release=lock``)."""

    def __init__(self, client: Client, info: Dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.lock_id: int = info["lock_id"]
        self.fence_token: Optional[int] = info.get("fence_token")
        self.keys: List[str] = info.get("keys", [])
        #: With ``read=True``: each locked key that exists, as of the grant.
        self.values: Dict[str, Dict[str, Any]] = {entry["key"]: entry for entry in info.get("values") or []}
        self.released = False

    def fence(self, key: Optional[str] = None) -> Tuple[str, int]:
        """``(key, token)`` for a fenced write; name the key of a multi-key lock."""
        if key is None:
            if len(self.keys) != 1:
                raise InvalidArgument(
                    f"lock {self.lock_id} holds {len(self.keys)} keys: name the one to fence, lock.fence(key)",
                    details={"field": "fence"},
                )
            key = self.keys[0]
        elif key not in self.keys:
            raise InvalidArgument(f"lock {self.lock_id} does not hold {key!r}", details={"field": "fence"})
        if self.fence_token is None:
            raise InvalidArgument(f"lock {self.lock_id} has no fencing token", details={"field": "fence"})
        return key, self.fence_token

    def release(self) -> Json:
        """Idempotent: an ended lock answers ``released: false``, also when
        it ended with the session it was taken in (the release is made
        outside the session, which may be gone)."""
        result = self._client.with_session(None).lock_release(self.lock_id)
        self.released = True
        return result

    def renew(self, ttl_ms: Optional[int] = None) -> Json:
        """Extends the lease; :class:`~baton.errors.Fenced` if it already ended."""
        self.info = self._client.lock_renew(self.lock_id, ttl_ms)
        return self.info

    def state(self) -> Json:
        return self._client.lock_state(self.lock_id)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.released:
            self.release()

    def __repr__(self) -> str:
        return f"Lock(lock_id={self.lock_id}, keys={self.keys!r}, fence_token={self.fence_token})"


class Session:
    """An open session: :attr:`client` calls in it, and, with keepalive, a
    daemon thread renews it every third of its TTL until :meth:`close`.

    If the session ends anyway (killed, or expired while this process
    stalled), :attr:`lost` holds the error the keepalive got and every
    mutation in the session is refused with FENCED.
    """

    def __init__(self, client: Client, info: Dict[str, Any], keepalive: bool) -> None:
        self.info = info
        self.session_id: int = info["session_id"]
        self.client = client.with_session(self.session_id)
        self.lost: Optional[BatonError] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if keepalive:
            interval = max(info.get("ttl_ms", 30_000) / 3000.0, 0.05)
            self._thread = threading.Thread(
                target=self._keep_alive, args=(interval,), name=f"baton-session-{self.session_id}", daemon=True
            )
            self._thread.start()

    def _keep_alive(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.info = self.client.session_keepalive(self.session_id)
            except Unavailable:
                continue  # the server may be back before the TTL runs out
            except BatonError as e:
                self.lost = e
                return

    def close(self) -> Json:
        """Ends the session: its locks are released, its waits fail.
        :class:`~baton.errors.Fenced` if it had already ended (killed,
        expired, closed), saying how."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.client.session_close(self.session_id)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        # A session that already ended is what leaving the block wants; how
        # it ended is in `lost`, and every write in it was refused already.
        try:
            self.close()
        except Fenced:
            pass


class Watch:
    """Events as they happen (Server-Sent Events). Ends by raising the
    error that ended it: :class:`~baton.errors.Compacted` if the server cut
    this watcher off for falling behind, :class:`~baton.errors.Unavailable`
    if the stream broke; ``last_event_id`` says where to resume, and the
    message says how."""

    def __init__(self, conn: Any, response: Any, url: str, from_revision: Optional[int] = None) -> None:
        self._conn = conn
        self._response = response
        self._url = url
        self._from_revision = from_revision
        self.last_event_id: Optional[str] = None

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self

    def __next__(self) -> Dict[str, Any]:
        event, data = "message", []
        while True:
            try:
                line = self._response.readline()
                text = line.decode("utf-8")
            except (OSError, ValueError, http.client.HTTPException) as e:
                # ValueError covers a closed stream and bytes that are not UTF-8.
                self.close()
                raise Unavailable(f"the watch stream from {self._url} broke ({e!r}); {self._resume_hint()}") from None
            if not text.endswith("\n"):
                # End of stream (a last line without its newline is cut short).
                self.close()
                raise Unavailable(f"{self._url} ended the watch stream (server stopped?); {self._resume_hint()}")
            text = text.rstrip("\r\n")
            if text == "":
                if not data:
                    event = "message"
                    continue
                payload = "\n".join(data)
                if event in ("baton", "message"):
                    try:
                        return json.loads(payload)
                    except ValueError as e:
                        self.close()
                        raise Internal(
                            f"{self._url} sent an event this SDK cannot read ({e}); are client and server the same version?"
                        ) from None
                if event == "cut_off":
                    self.close()
                    try:
                        error = json.loads(payload)
                    except ValueError:
                        error = None
                    if not isinstance(error, dict):
                        error = {"code": "COMPACTED", "message": f"the server cut this watcher off: {payload}"}
                    if "last_event_id" in error and "details" not in error:
                        error["details"] = {"last_event_id": error["last_event_id"]}
                    error["message"] = f"{error.get('message', '')}; {self._resume_hint()}"
                    raise from_envelope(error, 0)
                event, data = "message", []
                continue
            if text.startswith(":"):
                continue  # a keep-alive comment
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                self.last_event_id = value

    def _resume_hint(self) -> str:
        if self.last_event_id is not None:
            revision = self.last_event_id.split(".")[0]
            return f"watch again with from_revision={revision} to miss nothing (events of revision {revision} may come again)"
        if self._from_revision is not None:
            return f"watch again with from_revision={self._from_revision} to miss nothing"
        return "watch again to go on"

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
