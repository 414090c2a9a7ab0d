//! `baton serve`: runs `baton_server` with a `ServeConfig` built from
//! defaults, then the TOML file (`--config`), then flags and environment
//! variables, each overriding the one before.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_core::{Error, ErrorCode};
use baton_server::ServeConfig;
use clap::Args;

use crate::client_cmds::parse_duration_ms;
use crate::output::{OutputMode, emit};

#[derive(Debug, Args)]
#[command(after_help = "\
Precedence: flags and BATON_* variables, then the --config file, then the
defaults. `--print-config` prints the result as TOML, a starting point for a
config file (the [limits] table bounds keys, values, locks and sessions, and
bytes: max_kv_bytes for the store with its history and max_queue_bytes for
queued items and dead letters, 1 GiB each by default).
Changed limits are logged at startup and apply from then on: what was
accepted under the old ones stays, and replays as it was accepted.

Examples:
  baton serve
  baton serve --listen 0.0.0.0:7700 --data-dir /var/lib/baton
  baton serve --postgres postgres://baton@db.internal:5432/baton
  baton serve --print-config > baton.toml && baton serve --config baton.toml")]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7700]
    #[arg(long, env = "BATON_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Where the log and snapshots live [default: ./baton-data]
    #[arg(long, env = "BATON_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the log and snapshots in PostgreSQL instead of --data-dir:
    /// postgres://user@host:port/db (or host=... dbname=...); one server
    /// per schema at a time
    #[arg(long, env = "BATON_POSTGRES", value_name = "URL")]
    postgres: Option<String>,
    /// The schema of that database the log lives in, created if missing [default: baton]
    #[arg(long, env = "BATON_POSTGRES_SCHEMA", value_name = "NAME")]
    postgres_schema: Option<String>,
    /// A TOML file with any ServeConfig field (see --print-config)
    #[arg(long, env = "BATON_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
    /// Longest lock wait one request may ask for, e.g. 5m
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    max_wait: Option<u64>,
    /// Take a snapshot after this many commands, once the log since the
    /// last snapshot is at least that snapshot's size
    #[arg(long, value_name = "N")]
    snapshot_every_commands: Option<u64>,
    /// ... or after this many seconds with at least one new command
    #[arg(long, value_name = "SECONDS")]
    snapshot_every_secs: Option<u64>,
    /// Most commands made durable in one batch (one fsync)
    #[arg(long, value_name = "N")]
    max_batch: Option<usize>,
    /// Commands queued for the writer at most; beyond, requests get UNAVAILABLE
    #[arg(long, value_name = "N")]
    max_queued_commands: Option<usize>,
    /// How long the writer polls for the next command before it sleeps,
    /// while it has one caller at a time (faster commits for a lone
    /// client, up to this much CPU per idle gap; 0: never polls; at most
    /// 10000)
    #[arg(long, value_name = "MICROSECONDS")]
    writer_spin_us: Option<u64>,
    /// Largest request body, in bytes
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Events kept in memory for watch and events from a past revision (each costs about its JSON: ~0.6 KB for a put of 256 bytes)
    #[arg(long, value_name = "N")]
    event_buffer: Option<usize>,
    /// ... and fewer when they cost more than this many bytes in all (the newest is always kept)
    #[arg(long, value_name = "BYTES")]
    event_buffer_bytes: Option<usize>,
    /// Events a watcher may fall behind before it is cut off
    #[arg(long, value_name = "N")]
    watcher_lag: Option<usize>,
    /// Concurrent watch streams at most
    #[arg(long, value_name = "N")]
    max_watchers: Option<usize>,
}

pub fn run(args: ServeArgs, mode: OutputMode) -> i32 {
    let config = match config(&args) {
        Ok(config) => config,
        Err(error) => return emit(mode, &Err(error), |_| String::new()),
    };
    if args.print_config {
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => emit(
                mode,
                &Err(Error::new(
                    ErrorCode::Internal,
                    format!("cannot print the configuration: {e}"),
                )),
                |_| String::new(),
            ),
        };
    }
    init_logging();
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(baton_server::run(config)));
    match served {
        Ok(()) => 0,
        Err(e) => emit(
            mode,
            &Err(Error::new(ErrorCode::Unavailable, format!("{e:#}"))),
            |_| String::new(),
        ),
    }
}

/// Defaults, then the file, then the flags.
fn config(args: &ServeArgs) -> Result<ServeConfig, Error> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid("config", format!("cannot read {}: {e}", path.display()))
            })?;
            toml::from_str::<ServeConfig>(&text).map_err(|e| {
                Error::invalid(
                    "config",
                    format!(
                        "{}: {e}; `baton serve --print-config` shows every field",
                        path.display()
                    ),
                )
            })?
        }
        None => ServeConfig::default(),
    };
    fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
        if let Some(value) = flag {
            *field = value.clone();
        }
    }
    set(&mut config.listen, &args.listen);
    set(&mut config.data_dir, &args.data_dir);
    if args.postgres.is_some() {
        config.postgres = args.postgres.clone();
    }
    set(&mut config.postgres_schema, &args.postgres_schema);
    // A schema without a database would be silently ignored, and the
    // server would run on the embedded log the user meant to leave.
    if args.postgres_schema.is_some() && config.postgres.is_none() {
        return Err(Error::invalid(
            "postgres_schema",
            "--postgres-schema names a schema of the --postgres database; give --postgres URL too (or BATON_POSTGRES)",
        ));
    }
    set(&mut config.max_wait_ms, &args.max_wait);
    set(
        &mut config.snapshot_every_commands,
        &args.snapshot_every_commands,
    );
    set(&mut config.snapshot_every_secs, &args.snapshot_every_secs);
    set(&mut config.max_batch, &args.max_batch);
    set(&mut config.max_queued_commands, &args.max_queued_commands);
    set(&mut config.writer_spin_us, &args.writer_spin_us);
    set(&mut config.max_body_bytes, &args.max_body_bytes);
    set(&mut config.event_buffer, &args.event_buffer);
    set(&mut config.event_buffer_bytes, &args.event_buffer_bytes);
    set(&mut config.watcher_lag, &args.watcher_lag);
    set(&mut config.max_watchers, &args.max_watchers);
    if config.writer_spin_us > baton_server::MAX_WRITER_SPIN_US {
        return Err(Error::invalid(
            "writer_spin_us",
            format!(
                "{} µs; at most {} µs (MAX_WRITER_SPIN_US): the writer holds a whole core while it polls. 0 turns polling off",
                config.writer_spin_us,
                baton_server::MAX_WRITER_SPIN_US
            ),
        ));
    }
    Ok(config)
}

/// Server logs on stderr; RUST_LOG filters (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        Wrapper::parse_from(std::iter::once("serve").chain(args.iter().copied())).serve
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nmax_batch = 7\n").unwrap();
        let file = file.to_str().unwrap();
        let config = config(&parse(&["--config", file, "--listen", "127.0.0.1:9001"])).unwrap();
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.max_batch, 7);
        assert_eq!(config.data_dir, ServeConfig::default().data_dir);
        let config = config_of(&["--config", file, "--max-wait", "2s"]);
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_wait_ms, 2000);
        assert_eq!(config.writer_spin_us, ServeConfig::default().writer_spin_us);
        assert_eq!(config_of(&["--writer-spin-us", "0"]).writer_spin_us, 0);
        assert_eq!(
            config_of(&["--event-buffer-bytes", "1048576"]).event_buffer_bytes,
            1_048_576
        );
        assert_eq!(
            config_of(&[]).event_buffer_bytes,
            ServeConfig::default().event_buffer_bytes
        );
        // Not a number of bytes, from a flag or from the file: refused before
        // anything starts.
        assert!(Wrapper::try_parse_from(["serve", "--event-buffer-bytes", "64MiB"]).is_err());
        assert!(Wrapper::try_parse_from(["serve", "--event-buffer-bytes", "-1"]).is_err());
        let bad_file = dir.path().join("bad.toml");
        std::fs::write(&bad_file, "event_buffer_bytes = \"lots\"\n").unwrap();
        let error = super::config(&parse(&["--config", bad_file.to_str().unwrap()])).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.contains("bad.toml"), "{}", error.message);
        let most = baton_server::MAX_WRITER_SPIN_US.to_string();
        assert_eq!(
            config_of(&["--writer-spin-us", &most]).writer_spin_us,
            baton_server::MAX_WRITER_SPIN_US
        );
        // Beyond the limit, from a flag or from the file: refused, naming it.
        let too_long = (baton_server::MAX_WRITER_SPIN_US + 1).to_string();
        let error = super::config(&parse(&["--writer-spin-us", &too_long])).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(
            error.message.contains("writer_spin_us"),
            "{}",
            error.message
        );
        std::fs::write(file, format!("writer_spin_us = {too_long}\n")).unwrap();
        assert!(super::config(&parse(&["--config", file])).is_err());
    }

    #[test]
    fn a_postgres_schema_needs_a_postgres_database() {
        let error = super::config(&parse(&["--postgres-schema", "team"])).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(
            error.message.contains("--postgres URL"),
            "{}",
            error.message
        );
        let config = config_of(&[
            "--postgres",
            "postgres://baton@db:5432/baton",
            "--postgres-schema",
            "team",
        ]);
        assert_eq!(
            config.postgres.as_deref(),
            Some("postgres://baton@db:5432/baton")
        );
        assert_eq!(config.postgres_schema, "team");
        assert_eq!(config_of(&[]).postgres, None, "the embedded log by default");
        assert_eq!(config_of(&[]).postgres_schema, "baton");
    }

    fn config_of(args: &[&str]) -> ServeConfig {
        config(&parse(args)).unwrap()
    }

    #[test]
    fn unknown_fields_in_the_file_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let error = config(&parse(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.contains("bad.toml"), "{}", error.message);
    }

    #[test]
    fn the_printed_config_reads_back() {
        let text = toml::to_string_pretty(&ServeConfig::default()).unwrap();
        assert_eq!(
            toml::from_str::<ServeConfig>(&text).unwrap(),
            ServeConfig::default()
        );
    }
}
