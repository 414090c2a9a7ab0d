"""Baton's one error contract, as Python exceptions.

Every failure the server answers is the envelope
``{"ok": false, "error": {"code", "message", "retry_after_ms"?, "details"?}}``;
the SDK raises it as the subclass of :class:`BatonError` named by its code,
so a caller catches what it can handle (``except ConcurrentModification``)
and lets the rest through. A server that cannot be reached is
:class:`Unavailable`, like a server that says it cannot write.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type


class BatonError(Exception):
    """A refusal or failure, with the fields of the error envelope.

    ``code`` is the contract's code (``"FENCED"``), ``message`` says what to
    do next, ``retry_after_ms`` is set where waiting helps (a busy lock, a
    rate limit), ``details`` carries the current state where the server has
    it (the current version and value of a CAS conflict, a deadlock's
    cycle), and ``status`` is the HTTP status (0 when no answer came).
    """

    code = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        retry_after_ms: Optional[int] = None,
        details: Optional[Dict[str, Any]] = None,
        status: int = 0,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.details: Dict[str, Any] = details or {}
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Internal(BatonError):
    """A bug, on the server or in a shape this SDK did not expect."""

    code = "INTERNAL"


class InvalidArgument(BatonError):
    """Bad input; ``details`` names the field. Nothing was applied."""

    code = "INVALID_ARGUMENT"


class NotFound(BatonError):
    code = "NOT_FOUND"


class Unauthenticated(BatonError):
    code = "UNAUTHENTICATED"


class PermissionDenied(BatonError):
    code = "PERMISSION_DENIED"


class ConcurrentModification(BatonError):
    """A version conflict, or a lock still held when the wait ended.

    For a conditional write, ``details`` has ``current_version`` and
    ``current_value``: redo the change on them, no read needed.
    """

    code = "CONCURRENT_MODIFICATION"


class Fenced(BatonError):
    """The caller's fencing token, lock, claim or session is no longer current.

    Another holder may have written since: do not write on the old view.
    """

    code = "FENCED"


class Deadlock(BatonError):
    """Granting would close a wait-for cycle; ``details`` names it."""

    code = "DEADLOCK"


class RateLimited(BatonError):
    code = "RATE_LIMITED"


class QuotaExceeded(BatonError):
    code = "QUOTA_EXCEEDED"


class IdempotencyMismatch(BatonError):
    """The idempotency key was used before with a different request."""

    code = "IDEMPOTENCY_MISMATCH"


class Compacted(BatonError):
    """History or events from a revision the server no longer keeps."""

    code = "COMPACTED"


class Unavailable(BatonError):
    """No answer (server down, connection broken, timeout), or the server
    cannot write. Whether a mutation applied is then unknown: retry it with
    the same ``idempotency_key`` to apply it at most once."""

    code = "UNAVAILABLE"


ERRORS: Dict[str, Type[BatonError]] = {
    cls.code: cls
    for cls in (
        Internal,
        InvalidArgument,
        NotFound,
        Unauthenticated,
        PermissionDenied,
        ConcurrentModification,
        Fenced,
        Deadlock,
        RateLimited,
        QuotaExceeded,
        IdempotencyMismatch,
        Compacted,
        Unavailable,
    )
}


def from_envelope(error: Dict[str, Any], status: int) -> BatonError:
    """The exception for an envelope's ``error`` object.

    A code this SDK does not know yet (a newer server) is still raised, as
    a plain :class:`BatonError` carrying that code.
    """
    code = str(error.get("code", "INTERNAL"))
    cls = ERRORS.get(code, BatonError)
    retry = error.get("retry_after_ms")
    details = error.get("details")
    return cls(
        str(error.get("message", "")),
        code=code,
        retry_after_ms=int(retry) if isinstance(retry, (int, float)) else None,
        details=details if isinstance(details, dict) else None,
        status=status,
    )
