//! How every `baton` command answers, the same for all subcommands: in JSON
//! mode one envelope object on stdout (`{"ok":true,"result":…}` or
//! `{"ok":false,"error":…}`), in text mode the result on stdout or the error
//! on stderr; the exit code comes from the error code in both.

use std::io::{IsTerminal, Write};

use baton_core::{Error, envelope};
use serde_json::Value;

/// `--output` / `BATON_OUTPUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    Json,
    Text,
}

impl OutputMode {
    /// The flag or env var if given; else JSON for programs (stdout is a
    /// pipe or file) and text for people (stdout is a terminal).
    pub fn resolve(requested: Option<OutputMode>) -> OutputMode {
        requested.unwrap_or_else(|| {
            if std::io::stdout().is_terminal() {
                OutputMode::Text
            } else {
                OutputMode::Json
            }
        })
    }
}

/// A command line clap refused, under the same contract as every other
/// failure: INVALID_ARGUMENT, exit 2. In JSON mode one envelope on stdout
/// naming the argument and the usage line, so a program parsing the answer
/// is not handed clap's prose; in text mode clap's own text on stderr. Help
/// and version are not failures: clap prints them. `baton mcp` keeps its
/// stdout for the protocol, so its usage errors stay on stderr.
pub fn usage_error(refused: clap::Error) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let (mode, subcommand) = command_line();
    if matches!(
        refused.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) || OutputMode::resolve(mode) == OutputMode::Text
        || subcommand.as_deref() == Some("mcp")
    {
        refused.exit();
    }
    let rendered = refused.render().to_string();
    // The first paragraph says what is wrong, over one or more lines (a
    // list of missing arguments); the usage line follows, when clap has one.
    let what = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let what = what.strip_prefix("error: ").unwrap_or(&what);
    // `baton` or `baton lock` alone: clap's answer is the help, whose first
    // paragraph describes the command rather than what is wrong.
    let what = if refused.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "a subcommand is required (they are listed by --help)"
    } else {
        what
    };
    let usage = rendered
        .lines()
        .find_map(|line| line.strip_prefix("Usage: "));
    let argument = match refused.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(name)) => Some(name.clone()),
        Some(ContextValue::Strings(names)) => Some(names.join(", ")),
        _ => None,
    };
    let error = Error::new(
        baton_core::ErrorCode::InvalidArgument,
        format!("{what}; see the command's --help"),
    )
    .with_details(serde_json::json!({ "argument": argument, "usage": usage }));
    let error = match error.details {
        // Only what clap knows: no nulls for a program to trip over.
        Some(serde_json::Value::Object(mut details)) => {
            details.retain(|_, value| !value.is_null());
            Error {
                details: Some(serde_json::Value::Object(details)),
                ..error
            }
        }
        _ => error,
    };
    emit(OutputMode::Json, &Err(error), |_| String::new())
}

/// From a command line clap refused, read by hand: `--output`/`-o` as
/// written (before any `--`), else `BATON_OUTPUT`; and the first word that
/// is not an option, the subcommand.
fn command_line() -> (Option<OutputMode>, Option<String>) {
    use clap::ValueEnum;
    let parse = |value: &str| OutputMode::from_str(value, true).ok();
    let mut args = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .take_while(|arg| arg != "--");
    let (mut mode, mut subcommand) = (None, None);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--output" | "-o" => args.next(),
            _ if !arg.starts_with('-') => {
                subcommand.get_or_insert(arg);
                continue;
            }
            _ => arg
                .strip_prefix("--output=")
                .or_else(|| arg.strip_prefix("-o"))
                .map(str::to_string),
        };
        if let Some(parsed) = value.as_deref().and_then(parse) {
            mode = Some(parsed);
        }
    }
    let mode = mode.or_else(|| {
        std::env::var("BATON_OUTPUT")
            .ok()
            .as_deref()
            .and_then(parse)
    });
    (mode, subcommand)
}

/// Prints `reply` and returns the process exit code: 0, or the error code's
/// `exit_code()`. `text` renders a success for people.
pub fn emit(
    mode: OutputMode,
    reply: &Result<Value, Error>,
    text: impl FnOnce(&Value) -> String,
) -> i32 {
    match mode {
        OutputMode::Json => print_stdout(&envelope(reply).to_string()),
        OutputMode::Text => match reply {
            Ok(result) => print_stdout(&text(result)),
            Err(error) => eprint_text(error),
        },
    }
    exit_code(reply)
}

/// 0 for success, else the error code's exit code.
pub fn exit_code<T>(reply: &Result<T, Error>) -> i32 {
    match reply {
        Ok(_) => 0,
        Err(error) => error.code.exit_code(),
    }
}

/// An error for people: what happened (the message says what to do next),
/// when to retry, and the code to search for.
pub fn error_text(error: &Error) -> String {
    let mut out = format!("error: {}", error.message);
    if let Some(ms) = error.retry_after_ms {
        out.push_str(&format!("\n  retry after: {ms} ms"));
    }
    out.push_str(&format!(
        "\n  code: {} (exit {})",
        error.code,
        error.code.exit_code()
    ));
    out
}

fn eprint_text(error: &Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{}", error_text(error));
}

/// Prints `text` with exactly one final newline (none if empty). A closed
/// stdout (`| head`) is not an error worth a panic.
fn print_stdout(text: &str) {
    if text.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

/// Text for a JSON value: strings bare (for `$(baton file get …)`), the rest
/// as indented JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::ErrorCode;

    #[test]
    fn exit_codes_follow_the_error_code() {
        assert_eq!(exit_code(&Ok::<_, Error>(())), 0);
        let err = Err::<(), _>(Error::new(ErrorCode::ConcurrentModification, "x"));
        assert_eq!(exit_code(&err), 6);
    }

    #[test]
    fn error_text_names_the_code_and_the_retry() {
        let err =
            Error::new(ErrorCode::ConcurrentModification, "c.json is locked").with_retry_after(100);
        let text = error_text(&err);
        assert!(text.starts_with("error: c.json is locked"));
        assert!(text.contains("retry after: 100 ms"));
        assert!(text.contains("CONCURRENT_MODIFICATION (exit 6)"));
    }

    #[test]
    fn values_render_bare_strings_and_indented_json() {
        assert_eq!(value_text(&serde_json::json!("dark")), "dark");
        assert_eq!(value_text(&serde_json::json!(8)), "8");
        assert_eq!(value_text(&serde_json::json!({"a":1})), "{\n  \"a\": 1\n}");
    }
}
