//! `baton file …`: safe edits of config and state files with no server. The
//! arguments map one to one onto `baton_fs` calls; this module only parses,
//! picks the path (`--instance-id`) and renders.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{Error, ErrorCode};
use baton_fs::{Assignment, Format, KeyPath, Options};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::output::{OutputMode, emit, value_text};

#[derive(Debug, Args)]
#[command(after_help = "\
Every write takes the lock <file>.lock, re-reads the file, applies the change,
and replaces the file atomically (temp file, fsync, rename, fsync folder).
Versions are \"sha256:<hex>\" of the file's bytes, or \"absent\".

Examples:
  baton file set ~/.tool/config.json server.port=8080 theme=dark
  baton file get ~/.tool/config.json server.port
  baton file merge cfg.toml '{\"server\": {\"host\": null}}'
  baton file set cfg.json n=2 --if-version sha256:…   # exit 6 if it changed
  echo '{}' | baton file write state.json --if-version absent
  baton file exec --lock ~/.tool/config.json -- legacy-tool --save")]
pub struct FileArgs {
    /// Use this agent's own copy: PATH becomes <dir>/instances/<ID>/<name>
    #[arg(long, global = true, env = "BATON_INSTANCE_ID", value_name = "ID")]
    instance_id: Option<String>,

    /// How long to wait for the file's lock, e.g. 5s, 250ms; 0 = don't wait;
    /// a bare number is seconds
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_lock_timeout)]
    lock_timeout: Duration,

    /// File format [default: from the extension: .json, .toml, else raw]
    #[arg(long, global = true, value_enum)]
    format: Option<FormatArg>,

    #[command(subcommand)]
    command: FileCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Toml,
    /// Bytes: only `get` (whole file) and `write`
    Raw,
}

impl From<FormatArg> for Format {
    fn from(format: FormatArg) -> Format {
        match format {
            FormatArg::Json => Format::Json,
            FormatArg::Toml => Format::Toml,
            FormatArg::Raw => Format::Raw,
        }
    }
}

#[derive(Debug, Args)]
struct IfVersion {
    /// Apply only if the file is still at this version (from `get`);
    /// `absent` = only if it does not exist. Otherwise exit 6
    #[arg(long, value_name = "VERSION")]
    if_version: Option<String>,
}

#[derive(Debug, Subcommand)]
enum FileCommand {
    /// Print the file, or one key, with its version. Takes no lock
    Get {
        path: PathBuf,
        /// A key path like server.port (escape a literal dot as \.)
        key: Option<String>,
    },
    /// Set keys; VALUE is JSON if it parses (8080, true, null, '"8080"',
    /// '{"a":1}'), else a string. Other keys keep their values
    Set {
        path: PathBuf,
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        #[command(flatten)]
        if_version: IfVersion,
    },
    /// Remove keys (a key that is not there is fine)
    Unset {
        path: PathBuf,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[command(flatten)]
        if_version: IfVersion,
    },
    /// Apply a JSON merge patch (RFC 7396; null removes a key); `-` reads it
    /// from stdin
    Merge {
        path: PathBuf,
        patch: String,
        #[command(flatten)]
        if_version: IfVersion,
    },
    /// Replace the whole file with stdin, atomically (JSON/TOML must parse)
    Write {
        path: PathBuf,
        #[command(flatten)]
        if_version: IfVersion,
    },
    /// Run a command while holding the file's lock; exits with its status
    Exec {
        /// The file whose lock to hold
        #[arg(long = "lock", value_name = "PATH")]
        lock: PathBuf,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
}

/// `5s`, `250ms`, `1m`, `0`; a bare number (`2`, `0.5`) is seconds.
fn parse_lock_timeout(text: &str) -> Result<Duration, String> {
    let parsed = match text.trim().parse::<f64>() {
        // Past u64 seconds (1e20) there is no Duration: as "too long" as any.
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
        }
        Ok(_) => Err("must be a duration of 0 or more".to_owned()),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("{e} (try 5s, 250ms or 0)")),
    }?;
    if parsed > baton_fs::MAX_LOCK_TIMEOUT {
        return Err(format!(
            "at most {} s",
            baton_fs::MAX_LOCK_TIMEOUT.as_secs()
        ));
    }
    Ok(parsed)
}

/// Runs one `baton file` command and returns the exit code.
pub fn run(args: FileArgs, mode: OutputMode) -> i32 {
    if let FileCommand::Exec { lock, command } = &args.command {
        return exec(&args, lock, command, mode);
    }
    let reply = answer(&args);
    match &args.command {
        FileCommand::Get { .. } => emit(mode, &reply, |result| value_text(&result["value"])),
        _ => emit(mode, &reply, written_text),
    }
}

fn written_text(result: &Value) -> String {
    let path = result["path"].as_str().unwrap_or_default();
    let version = result["version"].as_str().unwrap_or_default();
    if result["changed"] == true {
        format!("{path}: written (version {version})")
    } else {
        format!("{path}: already up to date, not rewritten (version {version})")
    }
}

/// The file this command works on: PATH, or its per-instance copy.
fn target_path(args: &FileArgs, path: &Path) -> Result<PathBuf, Error> {
    match &args.instance_id {
        Some(id) => baton_fs::instance_path(path, id),
        None => Ok(path.to_path_buf()),
    }
}

fn options(args: &FileArgs, if_version: &IfVersion) -> Options {
    Options {
        lock_timeout: args.lock_timeout,
        if_version: if_version.if_version.clone(),
        format: args.format.map(Format::from),
        create_dirs: args.instance_id.is_some(),
    }
}

fn to_json<T: serde::Serialize>(result: T) -> Result<Value, Error> {
    serde_json::to_value(result).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot encode the result: {e}"),
        )
    })
}

fn answer(args: &FileArgs) -> Result<Value, Error> {
    match &args.command {
        FileCommand::Get { path, key } => {
            let key = key.as_deref().map(KeyPath::parse).transpose()?;
            let path = target_path(args, path)?;
            to_json(baton_fs::get(
                &path,
                key.as_ref(),
                args.format.map(Format::from),
            )?)
        }
        FileCommand::Set {
            path,
            assignments,
            if_version,
        } => {
            let assignments = assignments
                .iter()
                .map(|a| Assignment::parse(a))
                .collect::<Result<Vec<_>, _>>()?;
            let path = target_path(args, path)?;
            to_json(baton_fs::set(
                &path,
                &assignments,
                &options(args, if_version),
            )?)
        }
        FileCommand::Unset {
            path,
            keys,
            if_version,
        } => {
            let keys = keys
                .iter()
                .map(|k| KeyPath::parse(k))
                .collect::<Result<Vec<_>, _>>()?;
            let path = target_path(args, path)?;
            to_json(baton_fs::unset(&path, &keys, &options(args, if_version))?)
        }
        FileCommand::Merge {
            path,
            patch,
            if_version,
        } => {
            let patch = if patch == "-" {
                String::from_utf8(read_stdin()?)
                    .map_err(|_| Error::invalid("patch", "the merge patch on stdin is not UTF-8"))?
            } else {
                patch.clone()
            };
            let path = target_path(args, path)?;
            to_json(baton_fs::merge(&path, &patch, &options(args, if_version))?)
        }
        FileCommand::Write { path, if_version } => {
            let content = read_stdin()?;
            let path = target_path(args, path)?;
            to_json(baton_fs::write(
                &path,
                &content,
                &options(args, if_version),
            )?)
        }
        FileCommand::Exec { .. } => unreachable!("exec is run by `exec`"),
    }
}

/// All of stdin, up to the file size limit.
fn read_stdin() -> Result<Vec<u8>, Error> {
    let mut content = Vec::new();
    std::io::stdin()
        .lock()
        .take(baton_fs::MAX_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("cannot read stdin: {e}"),
            )
        })?;
    if content.len() as u64 > baton_fs::MAX_FILE_BYTES {
        return Err(Error::invalid(
            "stdin",
            format!("more than the {}-byte file limit", baton_fs::MAX_FILE_BYTES),
        ));
    }
    Ok(content)
}

/// Holds the lock while COMMAND runs, with stdio passed through, and exits
/// with its status (128 + signal if it was killed). Baton's own failures
/// (lock timeout, command not found) answer with the usual envelope.
///
/// COMMAND inherits the open lock file, as with `flock(1)`: if `baton` is
/// killed (a supervisor's SIGTERM, `timeout`, Ctrl-C) while COMMAND goes on,
/// the lock stays held until COMMAND (and anything it started that kept
/// the file open) has exited.
fn exec(args: &FileArgs, lock: &Path, command: &[OsString], mode: OutputMode) -> i32 {
    let acquired = target_path(args, lock).and_then(|path| {
        if args.instance_id.is_some() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::new(
                        ErrorCode::Unavailable,
                        format!("cannot create the folder {}: {e}", dir.display()),
                    )
                })?;
            }
        }
        baton_fs::FileLock::acquire(&path, args.lock_timeout, "exec")
    });
    let held = match acquired {
        Ok(held) => held,
        Err(error) => return emit(mode, &Err(error), |_| String::new()),
    };
    let (program, rest) = command.split_first().expect("clap requires a command");
    // Let COMMAND inherit the lock file (it is opened close-on-exec).
    let shared = nix::fcntl::fcntl(
        held.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    );
    if let Err(e) = shared {
        let error = Error::new(
            ErrorCode::Unavailable,
            format!("cannot hand the lock to the command ({e}); nothing was run"),
        );
        return emit(mode, &Err(error), |_| String::new());
    }
    let status = std::process::Command::new(program)
        .args(rest)
        .env("BATON_FILE_LOCK", held.lock_path())
        .status();
    drop(held);
    match status {
        Ok(status) => status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }),
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::NotFound
            } else {
                ErrorCode::InvalidArgument
            };
            let error = Error::new(
                code,
                format!(
                    "cannot run {}: {e}; check the command name and PATH",
                    Path::new(program).display()
                ),
            );
            emit(mode, &Err(error), |_| String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_timeouts_parse_as_durations_or_seconds() {
        assert_eq!(parse_lock_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_lock_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_lock_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_lock_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_lock_timeout("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_lock_timeout("-1").is_err());
        assert!(parse_lock_timeout("soon").is_err());
        assert!(parse_lock_timeout("2h").is_err());
        assert!(parse_lock_timeout("1e20").is_err(), "refused, not a panic");
    }
}
