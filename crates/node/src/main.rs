//! The `sealkv` binary: the operator's entry point to a sealkv node.

mod startup;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sealkv: a Raft-replicated key-value store whose data at rest is encrypted.
///
/// This build runs a node's startup sequence over its data directory and reports the
/// state it finds. Raft replication and the Redis and admin listeners are not part of
/// this build yet: `sealkv start` exits once startup completes.
#[derive(Debug, Parser)]
#[command(name = "sealkv", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the node's startup sequence over its data directory, report, and exit.
    ///
    /// Startup opens the RocksDB store, builds the writer-registry glue, the
    /// encryption applier and the state machine, in that order, logging each step.
    /// A failure at any step releases what earlier steps opened and exits non-zero
    /// with one line naming the step. No Raft driver or listener is started yet.
    Start(StartArgs),
}

/// Flags of `sealkv start`.
#[derive(Debug, clap::Args)]
struct StartArgs {
    /// The node's data directory; created when missing.
    #[arg(long, env = "SEALKV_DATA_DIR", default_value = "./sealkv-data")]
    data_dir: PathBuf,
    /// The node's 64-bit id (nonces and the writer registry use its low 16 bits).
    #[arg(long, env = "SEALKV_ID", default_value_t = 1)]
    id: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEALKV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Cmd::Start(args) => start(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the failed step, then its causes.
            eprintln!("sealkv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &StartArgs) -> anyhow::Result<()> {
    let node = startup::Node::start(&startup::Config {
        data_dir: args.data_dir.clone(),
        id: args.id,
    })?;
    let report = node.report()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}")?;
    writeln!(
        out,
        "startup complete; Raft replication and listeners are not built yet, exiting"
    )?;
    Ok(())
}
