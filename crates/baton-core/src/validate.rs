//! Input checks shared by every op. Each failure names the field and says
//! what a valid value looks like.

use crate::error::Error;
use crate::limits::Limits;
use serde_json::Value;

/// A key is `namespace/name`: a non-empty namespace, a slash, a non-empty
/// rest, at most `max_key_bytes`, no control characters.
pub fn key(field: &str, key: &str, limits: &Limits) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid(
            field,
            "a key must not be empty; write it as 'namespace/name'",
        ));
    }
    if key.len() > limits.max_key_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "key is {} bytes; the limit is {} (max_key_bytes)",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("key {key:?} contains a control character"),
        ));
    }
    match key.split_once('/') {
        Some((namespace, rest)) if !namespace.is_empty() && !rest.is_empty() => Ok(()),
        _ => Err(Error::invalid(
            field,
            format!(
                "key {key:?} has no namespace: write it as 'namespace/name', e.g. 'app/{}'",
                key.trim_matches('/')
            ),
        )),
    }
}

/// The namespace of a valid key: everything before the first slash.
pub fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(namespace, _)| namespace)
}

pub fn ttl(field: &str, ttl_ms: u64, limits: &Limits) -> Result<(), Error> {
    if ttl_ms < limits.min_ttl_ms || ttl_ms > limits.max_ttl_ms {
        return Err(Error::invalid(
            field,
            format!(
                "{ttl_ms} ms is out of range: a lease must be between {} ms and {} ms",
                limits.min_ttl_ms, limits.max_ttl_ms
            ),
        ));
    }
    Ok(())
}

pub fn agent(agent: &str, limits: &Limits) -> Result<(), Error> {
    if agent.is_empty() {
        return Err(Error::invalid(
            "agent",
            "every request names its agent (header Baton-Agent, flag --agent)",
        ));
    }
    if agent.len() > limits.max_agent_bytes || agent.chars().any(char::is_control) {
        return Err(Error::invalid(
            "agent",
            format!(
                "agent ids are at most {} bytes without control characters",
                limits.max_agent_bytes
            ),
        ));
    }
    Ok(())
}

/// Compact JSON size of a value, counted without building the string.
pub fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and a Value always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Refuses a value over `max_value_bytes`; answers its size.
pub fn value(field: &str, value: &Value, limits: &Limits) -> Result<usize, Error> {
    let size = json_size(value);
    if size > limits.max_value_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "value is {size} bytes; the limit is {} (max_value_bytes)",
                limits.max_value_bytes
            ),
        ));
    }
    Ok(size)
}

/// RFC 3339 UTC for a time in ms since the Unix epoch, for messages people read.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_need_a_namespace() {
        let limits = Limits::default();
        assert!(key("key", "app/x", &limits).is_ok());
        assert!(key("key", "app/x/y", &limits).is_ok());
        for bad in ["", "x", "/x", "app/", "a\u{0}/b"] {
            let err = key("key", bad, &limits).unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::InvalidArgument, "{bad:?}");
            assert!(err.message.starts_with("key: "), "{}", err.message);
        }
        let long = format!("a/{}", "b".repeat(limits.max_key_bytes));
        assert!(
            key("key", &long, &limits)
                .unwrap_err()
                .message
                .contains("max_key_bytes")
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn json_size_matches_serialization() {
        let v = serde_json::json!({"a": [1, "two", null], "b": {"c": 1.5}});
        assert_eq!(json_size(&v), serde_json::to_string(&v).unwrap().len());
    }
}
