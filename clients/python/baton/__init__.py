"""Baton's Python SDK: locks with leases and fencing tokens, versioned
state with compare-and-set, bounded counters, quotas, shared rate limits,
single-flight refresh, work queues and the event stream, over Baton's
HTTP/JSON API. Standard library only.

    from baton import Client

    client = Client("http://127.0.0.1:7700", agent="order-bot")
    with client.lock("inventory/sku-1", ttl_ms=30_000, wait_ms=5_000, read=True) as lock:
        stock = lock.values.get("inventory/sku-1", {}).get("value", 0)
        client.put("inventory/sku-1", stock - 1, fence=lock, release=lock)
"""

from .client import (
    DEFAULT_URL,
    UPDATE_MAX_ATTEMPTS,
    WATCH_IDLE_TIMEOUT_S,
    Client,
    Lock,
    Session,
    Watch,
    default_agent,
    encode_key,
)
from .errors import (
    BatonError,
    Compacted,
    ConcurrentModification,
    Deadlock,
    Fenced,
    IdempotencyMismatch,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "UPDATE_MAX_ATTEMPTS",
    "WATCH_IDLE_TIMEOUT_S",
    "BatonError",
    "Client",
    "Compacted",
    "ConcurrentModification",
    "Deadlock",
    "Fenced",
    "IdempotencyMismatch",
    "Internal",
    "InvalidArgument",
    "Lock",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "Session",
    "Unauthenticated",
    "Unavailable",
    "Watch",
    "default_agent",
    "encode_key",
]
