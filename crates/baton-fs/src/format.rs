//! File formats: how bytes become a document tree and back. JSON keeps key
//! order and the file's indentation; TOML keeps comments and layout; raw
//! files are bytes that only `write` and whole-file `get` touch.

use std::path::Path;

use baton_core::Error;
use serde::{Deserialize, Serialize};
use toml_edit::DocumentMut;

use crate::node::Node;
use crate::toml_doc;

/// How a file's bytes are read. Chosen from the extension (`.json`,
/// `.toml`; anything else is `Raw`) unless the caller says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Toml,
    /// Opaque bytes: `write` and whole-file `get` work, field edits do not.
    Raw,
}

impl Format {
    /// The format an extension implies: `.json` → Json, `.toml` → Toml,
    /// anything else → Raw. Case-insensitive.
    pub fn from_path(path: &Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("json") => Format::Json,
            Some("toml") => Format::Toml,
            _ => Format::Raw,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Toml => "toml",
            Format::Raw => "raw",
        }
    }
}

/// A parsed file, ready to be edited and rendered.
pub(crate) enum Document {
    Json { root: Node, style: JsonStyle },
    Toml(DocumentMut),
}

/// How the JSON file was laid out, so a rewrite looks like the original.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonStyle {
    /// `None`: one line, no indentation.
    indent: Option<String>,
    trailing_newline: bool,
}

impl JsonStyle {
    /// A new (or empty) file: two spaces, final newline.
    fn new_file() -> JsonStyle {
        JsonStyle {
            indent: Some("  ".to_owned()),
            trailing_newline: true,
        }
    }

    fn detect(text: &str) -> JsonStyle {
        let body = text.trim();
        let indent = if body.contains('\n') {
            let unit = body
                .lines()
                .skip(1)
                .map(|line| &line[..line.len() - line.trim_start_matches([' ', '\t']).len()])
                .find(|lead| !lead.is_empty())
                .unwrap_or("  ");
            Some(unit.to_owned())
        } else {
            None
        };
        JsonStyle {
            indent,
            trailing_newline: text.ends_with('\n'),
        }
    }
}

fn describe(path: &Path) -> String {
    path.display().to_string()
}

impl Document {
    /// Parses `bytes` (`None`: the file does not exist yet, an empty
    /// document). A JSON file holding only whitespace reads as `{}`.
    pub(crate) fn parse(
        format: Format,
        path: &Path,
        bytes: Option<&[u8]>,
    ) -> Result<Document, Error> {
        let bytes = bytes.unwrap_or_default();
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Error::invalid(
                "path",
                format!(
                    "{} is not UTF-8 text ({e}); fix or restore the file, nothing was changed",
                    describe(path)
                ),
            )
        })?;
        match format {
            Format::Json => {
                if text.trim().is_empty() {
                    return Ok(Document::Json {
                        root: Node::empty_object(),
                        style: JsonStyle::new_file(),
                    });
                }
                let root = serde_json::from_str::<Node>(text).map_err(|e| {
                    Error::invalid(
                        "path",
                        format!(
                            "{} is not valid JSON ({e}); fix or restore the file, nothing was changed",
                            describe(path)
                        ),
                    )
                    .with_details(serde_json::json!({
                        "field": "path",
                        "path": describe(path),
                        "line": e.line(),
                        "column": e.column(),
                    }))
                })?;
                Ok(Document::Json {
                    root,
                    style: JsonStyle::detect(text),
                })
            }
            Format::Toml => text
                .parse::<DocumentMut>()
                .map(Document::Toml)
                .map_err(|e| {
                    Error::invalid(
                    "path",
                    format!(
                        "{} is not valid TOML: {}; fix or restore the file, nothing was changed",
                        describe(path),
                        e.to_string().trim()
                    ),
                )
                .with_details(serde_json::json!({ "field": "path", "path": describe(path) }))
                }),
            Format::Raw => Err(Error::invalid(
                "format",
                format!(
                    "{} is not a .json or .toml file, so its fields cannot be edited; pass --format json or --format toml",
                    describe(path)
                ),
            )),
        }
    }

    pub(crate) fn root(&self) -> Node {
        match self {
            Document::Json { root, .. } => root.clone(),
            Document::Toml(doc) => toml_doc::document_to_node(doc),
        }
    }

    /// Replaces the content with `root`, keeping what did not change.
    pub(crate) fn replace_root(&mut self, new_root: Node) -> Result<(), Error> {
        match self {
            Document::Json { root, .. } => {
                *root = new_root;
                Ok(())
            }
            Document::Toml(doc) => toml_doc::reconcile_document(doc, &new_root),
        }
    }

    pub(crate) fn render(&self) -> Vec<u8> {
        match self {
            Document::Json { root, style } => {
                let mut out = match &style.indent {
                    None => serde_json::to_vec(root),
                    Some(indent) => {
                        let mut buf = Vec::new();
                        let formatter =
                            serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
                        let mut serializer =
                            serde_json::Serializer::with_formatter(&mut buf, formatter);
                        root.serialize(&mut serializer).map(|()| buf)
                    }
                }
                .expect("a Node always serializes: its numbers are finite and keys are strings");
                if style.trailing_newline {
                    out.push(b'\n');
                }
                out
            }
            Document::Toml(doc) => doc.to_string().into_bytes(),
        }
    }
}

/// Checks that `bytes` parse in `format` before they replace a file.
pub(crate) fn validate(format: Format, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    match format {
        Format::Raw => Ok(()),
        Format::Json if bytes.iter().all(u8::is_ascii_whitespace) => Err(Error::invalid(
            "content",
            format!(
                "refusing to write empty content to the JSON file {}",
                describe(path)
            ),
        )),
        _ => Document::parse(format, path, Some(bytes))
            .map(|_| ())
            .map_err(|e| Error {
                message: format!("the new content is not valid: {}", e.message),
                ..e
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str, patch: &str) -> String {
        let path = Path::new("x.json");
        let mut doc = Document::parse(Format::Json, path, Some(text.as_bytes())).unwrap();
        let mut root = doc.root();
        root.merge_patch(&serde_json::from_str(patch).unwrap());
        doc.replace_root(root).unwrap();
        String::from_utf8(doc.render()).unwrap()
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.JSON")), Format::Json);
        assert_eq!(Format::from_path(Path::new("cfg.toml")), Format::Toml);
        assert_eq!(Format::from_path(Path::new("notes.txt")), Format::Raw);
        assert_eq!(Format::from_path(Path::new("noext")), Format::Raw);
    }

    #[test]
    fn json_keeps_indentation_and_newline_style() {
        assert_eq!(
            round_trip("{\n    \"b\": 1,\n    \"a\": 2\n}\n", r#"{"c":3}"#),
            "{\n    \"b\": 1,\n    \"a\": 2,\n    \"c\": 3\n}\n"
        );
        assert_eq!(
            round_trip("{\n\t\"b\": 1\n}", r#"{"b":2}"#),
            "{\n\t\"b\": 2\n}"
        );
        assert_eq!(
            round_trip(r#"{"b":1}"#, r#"{"a":{"x":1}}"#),
            r#"{"b":1,"a":{"x":1}}"#
        );
        assert_eq!(round_trip("", r#"{"a":1}"#), "{\n  \"a\": 1\n}\n");
    }

    #[test]
    fn bad_files_say_where() {
        let err = Document::parse(Format::Json, Path::new("c.json"), Some(b"{\"a\": }"))
            .err()
            .unwrap();
        assert!(
            err.message.contains("c.json is not valid JSON"),
            "{}",
            err.message
        );
        assert_eq!(err.details.unwrap()["line"], 1);
        let err = Document::parse(Format::Toml, Path::new("c.toml"), Some(b"a = = 1"))
            .err()
            .unwrap();
        assert!(
            err.message.contains("c.toml is not valid TOML"),
            "{}",
            err.message
        );
        assert!(Document::parse(Format::Raw, Path::new("c.txt"), Some(b"x")).is_err());
        assert!(validate(Format::Json, Path::new("c.json"), b" ").is_err());
        assert!(validate(Format::Json, Path::new("c.json"), b"[1]").is_ok());
        assert!(validate(Format::Toml, Path::new("c.toml"), b"a = ").is_err());
    }
}
