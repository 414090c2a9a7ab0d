//! `baton mcp`: the arguments and the entry point the `baton` binary calls.

use std::time::Duration;

use clap::Args;

use crate::{McpConfig, serve_stdio};

/// Serve Baton's tools to an MCP client over stdio
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    /// URL of the Baton server the tools call
    #[arg(long, env = "BATON_URL", value_name = "URL", default_value = baton_client::DEFAULT_URL)]
    pub url: String,

    /// Agent id of this connection
    /// [default: the MCP client's name plus a short unique suffix]
    #[arg(long, env = "BATON_AGENT", value_name = "ID")]
    pub agent: Option<String>,

    /// TTL of the connection's Baton session (kept alive every ttl/3); a
    /// crashed agent's locks are released this long after it died
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub session_ttl: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration like 30s or 500ms"))?;
    if duration < Duration::from_millis(100) {
        return Err("the session TTL must be at least 100ms".to_string());
    }
    Ok(duration)
}

/// Runs `baton mcp` to the end and returns the process exit code.
pub fn run(args: McpArgs) -> i32 {
    init_logging();
    if let Err(e) = baton_client::Client::new(&args.url, "baton-mcp") {
        eprintln!("baton mcp: {e}");
        return e.code.exit_code();
    }
    let mut config = McpConfig::new(args.url);
    config.agent = args.agent.filter(|a| !a.is_empty());
    config.session_ttl_ms = u64::try_from(args.session_ttl.as_millis()).unwrap_or(u64::MAX);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("baton mcp: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let outcome = runtime.block_on(serve_stdio(config));
    // A read of stdin may still be pending; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("baton mcp: {e}");
            1
        }
    }
}

/// Logs to stderr only: stdout carries the protocol. `BATON_LOG` filters
/// (e.g. `debug`); default: info from Baton, warnings from the rest.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,baton_mcp=info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}
