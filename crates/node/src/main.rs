//! The `sealkv` binary: the operator's entry point to a sealkv node.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sealkv_node::consensus::PeerBook;
use sealkv_node::startup::{self, Config, RaftTuning};
use sealkv_node::{admin_client, startup::Opened};

/// sealkv: a Raft-replicated key-value store spoken to with the Redis protocol.
///
/// `sealkv start` runs a node: it replicates through Raft (tikv raft-rs) with its
/// log in RocksDB, serves Redis clients, and exposes status, metrics and membership
/// operations over HTTP. With no flags it runs a single-node cluster in
/// ./sealkv-data with Redis on 127.0.0.1:6379. Encryption of stored values is not part
/// of this build yet: values are stored in cleartext.
#[derive(Debug, Parser)]
#[command(name = "sealkv", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node until SIGINT or SIGTERM.
    ///
    /// Startup locks the data dir, opens the RocksDB store, builds the writer-registry
    /// glue, the encryption applier and the state machine, opens the Raft log and
    /// starts the Raft driver, then the listeners, in that order, logging each step. A
    /// failure at any step releases what earlier steps opened and exits non-zero with
    /// one line naming the step.
    Start(Box<StartArgs>),
    /// Show a node's status (role, leader, term, indexes, halt) from its admin endpoint.
    Status {
        /// The node's admin address.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
        /// Print the JSON document instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Change the cluster's membership through any node's admin endpoint.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Add a voter. Start the new node first with `sealkv start --join`.
    AddNode(AddArgs),
    /// Add a learner (receives the log, does not vote).
    AddLearner(AddArgs),
    /// Remove a node (voter or learner).
    RemoveNode {
        /// The node to remove.
        #[arg(long)]
        id: u64,
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The new node's id.
    #[arg(long)]
    id: u64,
    /// The new node's Raft address.
    #[arg(long)]
    raft_addr: String,
    /// Admin address of any node of the cluster.
    #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
    admin_addr: String,
}

/// Flags of `sealkv start`.
#[derive(Debug, clap::Args)]
struct StartArgs {
    /// The node's 64-bit id (nonces and the writer registry use its low 16 bits).
    #[arg(long, env = "SEALKV_ID", default_value_t = 1)]
    id: u64,
    /// The node's data directory; created when missing.
    #[arg(long, env = "SEALKV_DATA_DIR", default_value = "./sealkv-data")]
    data_dir: PathBuf,
    /// Address for Raft traffic from peers.
    #[arg(long, env = "SEALKV_RAFT_ADDR", default_value = "127.0.0.1:7379")]
    raft_addr: String,
    /// Address for Redis clients.
    #[arg(long, env = "SEALKV_REDIS_ADDR", default_value = "127.0.0.1:6379")]
    redis_addr: String,
    /// Address for the admin HTTP endpoint (status, metrics, membership).
    #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
    admin_addr: String,
    /// The initial cluster: `1=host:port,2=host:port,...` (Raft addresses, this node
    /// included). Without it the node forms a single-node cluster.
    #[arg(long, env = "SEALKV_PEERS", default_value = "")]
    peers: String,
    /// Join an existing cluster: start with no membership and wait for the leader
    /// (after `sealkv cluster add-node` or `add-learner`).
    #[arg(long, env = "SEALKV_JOIN")]
    join: bool,
    /// Length of a Raft tick, in milliseconds.
    #[arg(long, env = "SEALKV_TICK_MS", default_value_t = 100)]
    tick_ms: u64,
    /// Ticks without a leader before a follower campaigns.
    #[arg(long, env = "SEALKV_ELECTION_TICKS", default_value_t = 10)]
    election_ticks: usize,
    /// Ticks between leader heartbeats.
    #[arg(long, env = "SEALKV_HEARTBEAT_TICKS", default_value_t = 2)]
    heartbeat_ticks: usize,
    /// Applied entries in the Raft log that trigger a log compaction (a follower
    /// behind the compacted log catches up by snapshot).
    #[arg(long, env = "SEALKV_COMPACT_THRESHOLD", default_value_t = 10_000)]
    compact_threshold: u64,
    /// Applied entries kept in the log after a compaction.
    #[arg(long, env = "SEALKV_COMPACT_KEEP", default_value_t = 1_000)]
    compact_keep: u64,
    /// How long a client waits for a write or a linearizable read, in milliseconds.
    #[arg(long, env = "SEALKV_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    request_timeout_ms: u64,
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
        Cmd::Status { admin_addr, json } => status(&admin_addr, json),
        Cmd::Cluster(cmd) => cluster(cmd),
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
    let peers = PeerBook::parse(&args.peers).context("parse --peers")?;
    let config = Config {
        data_dir: args.data_dir.clone(),
        id: args.id,
        raft_addr: args.raft_addr.clone(),
        redis_addr: args.redis_addr.clone(),
        admin_addr: args.admin_addr.clone(),
        peers,
        join: args.join,
        raft: RaftTuning {
            tick: Duration::from_millis(args.tick_ms.max(1)),
            election_ticks: args.election_ticks,
            heartbeat_ticks: args.heartbeat_ticks,
            compact_threshold: args.compact_threshold,
            compact_keep: args.compact_keep,
            request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        },
    };
    if config.id == 0 {
        anyhow::bail!("--id 0 is not a valid node id");
    }
    let opened = Opened::open(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sealkv-io")
        .build()
        .context("start async runtime")?;
    runtime.block_on(async move {
        let running = startup::run(&config, opened).await?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "node {} serving: redis {} admin {} raft {}",
            config.id,
            running.addresses.redis_addr,
            running.addresses.admin_addr,
            running.addresses.raft_addr
        )?;
        drop(out);
        wait_for_signal(&running).await?;
        tracing::info!("shutting down");
        running.shutdown().await
    })
}

/// Waits for SIGINT or SIGTERM, or for the Raft driver to stop on its own.
async fn wait_for_signal(running: &startup::Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = check.tick() => {
                if running.driver_finished() {
                    return Ok(());
                }
            }
        }
    }
}

fn status(admin_addr: &str, json: bool) -> anyhow::Result<()> {
    let status = admin_client::get_json(admin_addr, "/status")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        writeln!(out, "{}", admin_client::summarize(&status))?;
    }
    Ok(())
}

fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    let result = match cmd {
        ClusterCmd::AddNode(a) => admin_client::add_node(&a.admin_addr, a.id, &a.raft_addr, false)?,
        ClusterCmd::AddLearner(a) => {
            admin_client::add_node(&a.admin_addr, a.id, &a.raft_addr, true)?
        }
        ClusterCmd::RemoveNode { id, admin_addr } => admin_client::remove_node(&admin_addr, id)?,
    };
    writeln!(std::io::stdout().lock(), "{result}")?;
    Ok(())
}
