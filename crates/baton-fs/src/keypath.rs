//! Key paths (`server.port`) and assignments (`server.port=8080`): how a
//! field-level change is named, parsed and applied to a document tree.

use std::fmt;

use baton_core::Error;
use serde_json::Value;

use crate::node::Node;

/// Deepest key path accepted (`a.b.c…`): far more than any config needs, and
/// it keeps recursion bounded.
pub const MAX_KEY_DEPTH: usize = 64;

/// A path of object keys, written `a.b.c`. A key that contains `.`, `=`,
/// `[`, `]` or `\` escapes it with a backslash: `"a\.b"` is the single key
/// `a.b`. Paths only walk objects (tables in TOML); there is no array
/// indexing, and an unescaped `[` or `]` is refused rather than taken as
/// part of a key (`a.b[0]=9` would otherwise add a key named `b[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    segments: Vec<String>,
}

impl KeyPath {
    /// Parses `a.b.c`; an empty path or an empty segment (`a..b`) is
    /// INVALID_ARGUMENT.
    pub fn parse(text: &str) -> Result<KeyPath, Error> {
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('.' | '=' | '[' | ']' | '\\')) => current.push(escaped),
                    _ => {
                        return Err(Error::invalid(
                            "key",
                            format!(
                                "{text:?}: a backslash must be followed by '.', '=', '[', ']' or '\\'"
                            ),
                        ));
                    }
                },
                '[' | ']' => {
                    return Err(Error::invalid(
                        "key",
                        format!(
                            "{text:?}: key paths have no array indexing; change an array with `baton file merge` or `write`, or escape a bracket that is part of a key as \\[ or \\]"
                        ),
                    ));
                }
                '.' => segments.push(std::mem::take(&mut current)),
                other => current.push(other),
            }
        }
        segments.push(current);
        if segments.iter().any(String::is_empty) {
            return Err(Error::invalid(
                "key",
                format!("{text:?} has an empty key; write keys as a.b.c"),
            ));
        }
        if segments.len() > MAX_KEY_DEPTH {
            return Err(Error::invalid(
                "key",
                format!("{text:?} is deeper than {MAX_KEY_DEPTH} keys"),
            ));
        }
        Ok(KeyPath { segments })
    }

    /// Builds a path from raw keys (no escaping needed).
    pub fn from_segments<I, S>(segments: I) -> Result<KeyPath, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segments.is_empty() || segments.iter().any(String::is_empty) {
            return Err(Error::invalid("key", "a key path needs non-empty keys"));
        }
        if segments.len() > MAX_KEY_DEPTH {
            return Err(Error::invalid(
                "key",
                format!("key path is deeper than {MAX_KEY_DEPTH} keys"),
            ));
        }
        Ok(KeyPath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for c in segment.chars() {
                if matches!(c, '.' | '=' | '[' | ']' | '\\') {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One `key.sub=value` change. The value is JSON if it parses as JSON
/// (`8080`, `true`, `null`, `{"a":1}`, `"quoted"`), otherwise the text itself
/// as a string (`dark`, `hello world`, empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub(crate) key: KeyPath,
    pub(crate) value: Node,
}

impl Assignment {
    /// Parses `key.sub=value`: the key ends at the first `=` that is not
    /// escaped; the value is read by [`parse_value`]'s rule.
    pub fn parse(text: &str) -> Result<Assignment, Error> {
        let mut escaped = false;
        let split = text.char_indices().find_map(|(i, c)| {
            if escaped {
                escaped = false;
                None
            } else if c == '\\' {
                escaped = true;
                None
            } else if c == '=' {
                Some(i)
            } else {
                None
            }
        });
        let Some(at) = split else {
            return Err(Error::invalid(
                "assignment",
                format!("{text:?} is not KEY=VALUE (e.g. server.port=8080)"),
            ));
        };
        Ok(Assignment {
            key: KeyPath::parse(&text[..at])?,
            value: parse_value_node(&text[at + 1..]),
        })
    }

    /// An assignment from an already-typed value.
    pub fn new(key: KeyPath, value: &Value) -> Assignment {
        Assignment {
            key,
            value: Node::from_value(value),
        }
    }

    pub fn key(&self) -> &KeyPath {
        &self.key
    }

    pub fn value(&self) -> Value {
        self.value.to_value()
    }
}

/// The value rule of `key=value`: JSON if the text parses as JSON, else the
/// text as a string. So `8080` is a number, `"8080"` a string, `dark` a
/// string, `null` JSON null.
pub fn parse_value(text: &str) -> Value {
    parse_value_node(text).to_value()
}

fn parse_value_node(text: &str) -> Node {
    serde_json::from_str::<Node>(text).unwrap_or_else(|_| Node::String(text.to_owned()))
}

/// Why a key path cannot be walked: `at` is the prefix that holds a non-object.
fn not_an_object(key: &KeyPath, depth: usize, found: &Node) -> Error {
    let at = if depth == 0 {
        "the document root".to_owned()
    } else {
        format!(
            "{:?}",
            KeyPath {
                segments: key.segments[..depth].to_vec()
            }
            .to_string()
        )
    };
    Error::invalid(
        "key",
        format!(
            "cannot use key {:?}: {at} is {} {}, not an object; nothing was changed",
            key.to_string(),
            article(found.type_name()),
            found.type_name()
        ),
    )
    .with_details(serde_json::json!({
        "field": "key",
        "key": key.to_string(),
        "non_object_at": key.segments[..depth].join("."),
        "found": found.type_name(),
    }))
}

fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'o']) {
        "an"
    } else {
        "a"
    }
}

/// The value at `key`, `None` if a key on the way is missing.
pub(crate) fn lookup<'a>(root: &'a Node, key: &KeyPath) -> Result<Option<&'a Node>, Error> {
    let mut current = root;
    for (depth, segment) in key.segments.iter().enumerate() {
        let Node::Object(map) = current else {
            return Err(not_an_object(key, depth, current));
        };
        match map.get(segment) {
            Some(next) => current = next,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

/// Sets `key` to `value`, creating missing objects on the way. An existing
/// key keeps its position.
pub(crate) fn assign(root: &mut Node, key: &KeyPath, value: Node) -> Result<(), Error> {
    let (last, parents) = key.segments.split_last().expect("a KeyPath is never empty");
    let mut current = root;
    for (depth, segment) in parents.iter().enumerate() {
        let Node::Object(map) = current else {
            return Err(not_an_object(key, depth, current));
        };
        current = map
            .entry(segment.clone())
            .or_insert_with(Node::empty_object);
    }
    match current {
        Node::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        other => Err(not_an_object(key, parents.len(), other)),
    }
}

/// Removes `key`; `false` if it was not there (not an error: unset is
/// idempotent).
pub(crate) fn remove(root: &mut Node, key: &KeyPath) -> Result<bool, Error> {
    let (last, parents) = key.segments.split_last().expect("a KeyPath is never empty");
    let mut current = root;
    for (depth, segment) in parents.iter().enumerate() {
        let Node::Object(map) = current else {
            return Err(not_an_object(key, depth, current));
        };
        match map.get_mut(segment) {
            Some(next) => current = next,
            None => return Ok(false),
        }
    }
    match current {
        Node::Object(map) => Ok(map.shift_remove(last).is_some()),
        other => Err(not_an_object(key, parents.len(), other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::ErrorCode;

    fn node(text: &str) -> Node {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn key_paths_split_on_unescaped_dots() {
        let key = KeyPath::parse(r"a.b\.c.d\=e\\.f\[0\]").unwrap();
        assert_eq!(key.segments(), ["a", "b.c", r"d=e\", "f[0]"]);
        assert_eq!(KeyPath::parse(&key.to_string()).unwrap(), key);
        for bad in ["", "a..b", ".a", "a.", r"a\x", "a.b[0]", "a]"] {
            let err = KeyPath::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{bad:?}");
        }
        let index = KeyPath::parse("a.b[0]").unwrap_err();
        assert!(
            index.message.contains("no array indexing"),
            "{}",
            index.message
        );
        let deep = vec!["k"; MAX_KEY_DEPTH + 1].join(".");
        assert!(KeyPath::parse(&deep).is_err());
    }

    #[test]
    fn values_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_value("8080"), serde_json::json!(8080));
        assert_eq!(parse_value("true"), serde_json::json!(true));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(parse_value(r#""8080""#), serde_json::json!("8080"));
        assert_eq!(parse_value(r#"{"a":[1]}"#), serde_json::json!({"a":[1]}));
        assert_eq!(parse_value("dark"), serde_json::json!("dark"));
        assert_eq!(parse_value(""), serde_json::json!(""));
        assert_eq!(parse_value("a=b"), serde_json::json!("a=b"));
    }

    #[test]
    fn assignments_split_at_the_first_unescaped_equals() {
        let a = Assignment::parse("server.url=http://x/?a=b").unwrap();
        assert_eq!(a.key().to_string(), "server.url");
        assert_eq!(a.value(), serde_json::json!("http://x/?a=b"));
        let a = Assignment::parse(r"odd\=key=1").unwrap();
        assert_eq!(a.key().segments(), ["odd=key"]);
        assert_eq!(a.value(), serde_json::json!(1));
        assert!(Assignment::parse("no-equals").is_err());
        assert!(Assignment::parse("=1").is_err());
    }

    #[test]
    fn assign_creates_objects_and_keeps_positions() {
        let mut root = node(r#"{"z":1,"a":2}"#);
        assign(&mut root, &KeyPath::parse("z").unwrap(), node("3")).unwrap();
        assign(&mut root, &KeyPath::parse("new.deep").unwrap(), node("4")).unwrap();
        assert_eq!(
            serde_json::to_string(&root).unwrap(),
            r#"{"z":3,"a":2,"new":{"deep":4}}"#
        );
    }

    #[test]
    fn walking_into_a_non_object_is_refused_and_changes_nothing() {
        let mut root = node(r#"{"a":5,"l":[1]}"#);
        let before = root.clone();
        let err = assign(&mut root, &KeyPath::parse("a.b").unwrap(), node("1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("\"a\" is a number"), "{}", err.message);
        assert_eq!(err.details.unwrap()["non_object_at"], "a");
        assert!(assign(&mut root, &KeyPath::parse("l.0").unwrap(), node("1")).is_err());
        assert!(remove(&mut root, &KeyPath::parse("a.b").unwrap()).is_err());
        assert!(lookup(&root, &KeyPath::parse("a.b").unwrap()).is_err());
        assert_eq!(root, before);
        let mut array_root = node("[1]");
        let err = assign(&mut array_root, &KeyPath::parse("x").unwrap(), node("1")).unwrap_err();
        assert!(
            err.message.contains("the document root is an array"),
            "{}",
            err.message
        );
    }

    #[test]
    fn remove_is_idempotent() {
        let mut root = node(r#"{"a":{"b":1,"c":2}}"#);
        assert!(remove(&mut root, &KeyPath::parse("a.b").unwrap()).unwrap());
        assert!(!remove(&mut root, &KeyPath::parse("a.b").unwrap()).unwrap());
        assert!(!remove(&mut root, &KeyPath::parse("x.y").unwrap()).unwrap());
        assert_eq!(root, node(r#"{"a":{"c":2}}"#));
    }
}
