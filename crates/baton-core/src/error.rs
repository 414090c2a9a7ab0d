//! The one error contract shared by the core, HTTP, CLI and MCP (DESIGN.md,
//! "One error contract"). Every failure is a code, a message that tells the
//! person what to do next, and optional machine-readable facts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A failure class. Each maps to exactly one HTTP status and one CLI exit code.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A bug in Baton; logged with a request id.
    Internal,
    /// Bad input; the message names the field.
    InvalidArgument,
    /// The key, lock, session or reservation does not exist.
    NotFound,
    /// No or bad credentials.
    Unauthenticated,
    /// Credentials valid but not allowed, or not the owner of the lock/session.
    PermissionDenied,
    /// Version conflict, or the lock was still held when the wait ended.
    ConcurrentModification,
    /// The caller's fencing token, lock or session is no longer current.
    Fenced,
    /// Granting the wait would close a wait-for cycle.
    Deadlock,
    /// A shared rate limit refused the request.
    RateLimited,
    /// A bound (counter, quota, capacity limit) would be crossed.
    QuotaExceeded,
    /// Same idempotency key, different request.
    IdempotencyMismatch,
    /// The requested revision is no longer kept.
    Compacted,
    /// Storage failed or the node is read-only; nothing was applied.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation tables.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::Internal,
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::ConcurrentModification,
        ErrorCode::Fenced,
        ErrorCode::Deadlock,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::Compacted,
        ErrorCode::Unavailable,
    ];

    /// The wire name, e.g. `CONCURRENT_MODIFICATION`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::ConcurrentModification => "CONCURRENT_MODIFICATION",
            ErrorCode::Fenced => "FENCED",
            ErrorCode::Deadlock => "DEADLOCK",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            ErrorCode::Compacted => "COMPACTED",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Internal => 500,
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::ConcurrentModification | ErrorCode::Fenced | ErrorCode::Deadlock => 409,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::IdempotencyMismatch => 422,
            ErrorCode::Compacted => 410,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Process exit code for the `baton` CLI.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Internal => 1,
            ErrorCode::InvalidArgument | ErrorCode::IdempotencyMismatch => 2,
            ErrorCode::NotFound | ErrorCode::Compacted => 3,
            ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => 4,
            ErrorCode::ConcurrentModification => 6,
            ErrorCode::Fenced => 7,
            ErrorCode::Deadlock => 8,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 9,
            ErrorCode::Unavailable => 10,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as it travels on every transport:
/// `{"code": "...", "message": "...", "retry_after_ms": N?, "details": {...}?}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after_ms: None,
            details: None,
        }
    }

    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Error::new(ErrorCode::InvalidArgument, format!("{field}: {message}"))
            .with_details(serde_json::json!({ "field": field }))
    }

    pub fn with_retry_after(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry after {ms} ms)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// The success/failure envelope every transport speaks:
/// `{"ok": true, "result": ...}` or `{"ok": false, "error": {...}}`,
/// borrowed from a reply so that it serializes straight to bytes.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, T> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Error>,
}

impl<'a, T: Serialize> Envelope<'a, T> {
    pub fn of(reply: &'a Result<T, Error>) -> Envelope<'a, T> {
        match reply {
            Ok(result) => Envelope {
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(error) => Envelope {
                ok: false,
                result: None,
                error: Some(error),
            },
        }
    }
}

/// The envelope of `reply` as a JSON value.
pub fn envelope<T: Serialize>(reply: &Result<T, Error>) -> Value {
    serde_json::to_value(Envelope::of(reply)).unwrap_or_else(|e| {
        let error = Error::new(ErrorCode::Internal, format!("cannot encode the reply: {e}"));
        serde_json::json!({ "ok": false, "error": error })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, Value::String(code.as_str().to_string()));
            let back: ErrorCode = serde_json::from_value(json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn exit_codes_follow_the_design_table() {
        assert_eq!(ErrorCode::ConcurrentModification.exit_code(), 6);
        assert_eq!(ErrorCode::Fenced.exit_code(), 7);
        assert_eq!(ErrorCode::Deadlock.exit_code(), 8);
        assert_eq!(ErrorCode::QuotaExceeded.exit_code(), 9);
        assert_eq!(ErrorCode::Unavailable.exit_code(), 10);
        assert_eq!(ErrorCode::IdempotencyMismatch.http_status(), 422);
        assert_eq!(ErrorCode::Compacted.http_status(), 410);
    }

    #[test]
    fn the_envelope_is_the_same_as_bytes_and_as_a_value() {
        let ok: Result<Value, Error> = Ok(serde_json::json!({"lock_id": 7, "keys": ["a"]}));
        let unit: Result<(), Error> = Ok(());
        let err: Result<Value, Error> =
            Err(Error::new(ErrorCode::Fenced, "stale").with_details(serde_json::json!({"x": 1})));
        for (bytes, value) in [
            (serde_json::to_vec(&Envelope::of(&ok)), envelope(&ok)),
            (serde_json::to_vec(&Envelope::of(&unit)), envelope(&unit)),
            (serde_json::to_vec(&Envelope::of(&err)), envelope(&err)),
        ] {
            let decoded: Value = serde_json::from_slice(&bytes.unwrap()).unwrap();
            assert_eq!(decoded, value);
        }
        assert_eq!(
            envelope(&ok),
            serde_json::json!({"ok": true, "result": {"lock_id": 7, "keys": ["a"]}})
        );
        assert_eq!(
            envelope(&unit),
            serde_json::json!({"ok": true, "result": null})
        );
        assert_eq!(
            envelope(&err)["error"]["details"],
            serde_json::json!({"x": 1})
        );
    }

    #[test]
    fn envelope_shape() {
        let err: Result<(), Error> =
            Err(Error::new(ErrorCode::Fenced, "stale").with_retry_after(5));
        let v = envelope(&err);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "FENCED");
        assert_eq!(v["error"]["retry_after_ms"], 5);
        assert!(v["error"].get("details").is_none());
    }
}
