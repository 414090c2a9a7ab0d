//! `baton`: parses arguments, calls the library crates, prints the answer.
//! Logic lives in the libraries; each subcommand has one module here that
//! maps its arguments to library calls and its reply to `output::emit`.

mod client_cmds;
mod file;
mod output;
mod serve;

use clap::{Parser, Subcommand};

use crate::output::OutputMode;

/// glibc's malloc was ~17% of `baton serve`'s CPU under load (many small,
/// short-lived allocations across threads, bench/README.md); mimalloc's
/// thread-local free lists suit that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Coordination for many agents: locks, versioned state, safe files"
)]
struct Cli {
    /// Answer format: `json` (one envelope on stdout) or `text` for people.
    /// Default: json when stdout is not a terminal, text when it is.
    #[arg(long, short = 'o', global = true, env = "BATON_OUTPUT", value_enum)]
    output: Option<OutputMode>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Safe edits of config and state files on this host, no server needed
    File(file::FileArgs),
    #[command(flatten)]
    Client(client_cmds::ClientCommand),
    /// Run the Baton server (HTTP/JSON API, SSE watch, metrics)
    Serve(serve::ServeArgs),
    /// Serve Baton's tools to an MCP client (agent) over stdio
    Mcp(baton_mcp::cli::McpArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(refused) => std::process::exit(output::usage_error(refused)),
    };
    let mode = OutputMode::resolve(cli.output);
    let code = match cli.command {
        Command::File(args) => file::run(args, mode),
        Command::Client(command) => client_cmds::run(command, mode),
        Command::Serve(args) => serve::run(args, mode),
        Command::Mcp(args) => baton_mcp::cli::run(args),
    };
    std::process::exit(code);
}
