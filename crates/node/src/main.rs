//! The `sealkv` binary: the operator's entry point to a sealkv node.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sealkv_encryption::kek::{
    EnvKekProvider, FileKekProvider, KEK_ENV_VAR, KekError, KekProvider, generate_kek_file,
};
use sealkv_kv::SizeLimits;
use sealkv_node::consensus::PeerBook;
use sealkv_node::consensus::snapstream::{DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES};
use sealkv_node::encryption::EncryptionConfig;
use sealkv_node::resp::Password;
use sealkv_node::startup::{self, Config, RaftTuning};
use sealkv_node::{admin_client, startup::Opened};
use zeroize::Zeroizing;

/// sealkv: a Raft-replicated key-value store spoken to with the Redis protocol.
///
/// `sealkv start` runs a node: it replicates through Raft (tikv raft-rs) with its
/// log in RocksDB, serves Redis clients, and exposes status, metrics and membership
/// operations over HTTP. With no flags it runs a single-node cluster in
/// ./sealkv-data with Redis on 127.0.0.1:6379. With --encryption-enabled and a KEK
/// (--kek-file, or SEALKV_KEK_BASE64) every stored value and Raft payload is
/// encrypted; `sealkv kek generate PATH` makes a KEK. With --certs-dir (see `sealkv
/// certs`) peers speak mutual TLS, the Redis port TLS and the admin port HTTPS with
/// client certificates.
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
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Change the cluster's membership through any node's admin endpoint.
    Cluster(ClusterArgs),
    /// Manage the key-encryption key (KEK).
    #[command(subcommand)]
    Kek(KekCmd),
    /// Show and operate a node's encryption through its admin endpoint.
    ///
    /// The mutating verbs are refused (412 Precondition Failed) unless the node runs
    /// with --encryption-enabled and a KEK.
    Encryption(EncryptionArgs),
    /// Make the certificates of `--certs-dir`: a CA, node and client certificates.
    ///
    /// A node certificate binds its node id as the DNS name `node-N.sealkv.invalid`;
    /// peers check it against the id a connection claims. Keys are ECDSA P-256 with
    /// mode 0600; nothing is ever overwritten. Copy `ca.crt` and a node's
    /// `node-N.crt` and `node-N.key` to that node, never `ca.key`.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Show and maintain a node's store: MVCC garbage collection and compaction.
    Store(StoreArgs),
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    #[command(subcommand)]
    cmd: StoreCmd,
    #[command(flatten)]
    tls: ClientTls,
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Show the GC safe point, live keys and bytes, versions, SST size, and the
    /// progress of compaction and rewrite requests on one node.
    Status {
        /// The node's admin address.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
    /// Collect garbage and compact now, on every node: proposes a safe point from
    /// this node's history and a compaction, and answers once this node has
    /// finished (the others follow on their own; see `sealkv store status`).
    Compact {
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
}

/// TLS to the admin endpoint, for every subcommand that talks to it.
#[derive(Debug, clap::Args)]
struct ClientTls {
    /// Speak HTTPS to the admin endpoint, trusting this dir's `ca.crt` and
    /// presenting the client certificate `client-NAME.crt` (see --cert-name). Needed
    /// when the node runs with --certs-dir.
    #[arg(long, global = true, env = "SEALKV_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Which client certificate of --certs-dir to present: `client-NAME.crt` and
    /// `client-NAME.key` (`sealkv certs client --name NAME`).
    #[arg(long, global = true, env = "SEALKV_CERT_NAME", default_value = "admin")]
    cert_name: String,
}

impl ClientTls {
    /// Makes this process's admin requests HTTPS when --certs-dir is given.
    fn apply(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.certs_dir {
            let tls = sealkv_node::tls::cli_tls(dir, &self.cert_name).with_context(|| {
                format!(
                    "load the client certificate from --certs-dir {}",
                    dir.display()
                )
            })?;
            admin_client::use_tls(tls);
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
struct ClusterArgs {
    #[command(subcommand)]
    cmd: ClusterCmd,
    #[command(flatten)]
    tls: ClientTls,
}

#[derive(Debug, clap::Args)]
struct EncryptionArgs {
    #[command(subcommand)]
    cmd: EncryptionCmd,
    #[command(flatten)]
    tls: ClientTls,
}

#[derive(Debug, Subcommand)]
enum CertsCmd {
    /// Make a CA: `ca.crt` and `ca.key` (mode 0600) in --certs-dir, created when
    /// missing. Keep `ca.key` off the nodes: it signs new certificates.
    Init {
        /// Where the certificates live.
        #[arg(long)]
        certs_dir: PathBuf,
    },
    /// Make node N's certificate and key, `node-N.crt` and `node-N.key`, signed by the
    /// CA in --certs-dir. It names `node-N.sealkv.invalid` (the id peers check) and
    /// every host in --hosts.
    Node {
        /// Where the certificates live (the CA's dir).
        #[arg(long)]
        certs_dir: PathBuf,
        /// The node's id.
        #[arg(long)]
        id: u64,
        /// Host names and IP addresses clients and peers reach the node by, comma
        /// separated: Redis clients and admin requests check the name they connect
        /// to against these.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
    },
    /// Make a client certificate, `client-NAME.crt` and `client-NAME.key`, signed by
    /// the CA in --certs-dir: for the CLI and admin tools (`--certs-dir DIR
    /// --cert-name NAME`), and optionally for Redis clients.
    Client {
        /// Where the certificates live (the CA's dir).
        #[arg(long)]
        certs_dir: PathBuf,
        /// The client's name (ASCII letters, digits, '-' and '_').
        #[arg(long, default_value = "admin")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KekCmd {
    /// Write a new random 32-byte KEK to PATH with mode 0600; refuses to overwrite.
    ///
    /// Keep the file outside every data directory and back it up: a lost KEK means
    /// the encrypted data is lost.
    Generate {
        /// Where to write the key.
        path: PathBuf,
    },
}

/// A key purpose or envelope.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Purpose {
    /// User values at rest.
    Storage,
    /// Raft proposals.
    Raft,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Storage => "storage",
            Purpose::Raft => "raft",
        }
    }
}

#[derive(Debug, Subcommand)]
enum EncryptionCmd {
    /// Show whether encryption is on, the KEK source (never the key), active and
    /// loaded key ids, local epochs, the sidecar index, envelopes, the writer
    /// registry, retired key ids, and this node's stored versions per key id
    /// (scanned on request).
    Status {
        /// The node's admin address.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
        /// Print the JSON document instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Bootstrap the DEKs of a cluster (a new encrypted cluster does this by
    /// itself); every member is registered. The envelopes follow automatically.
    Bootstrap {
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
    /// Make a new DEK the active key of a purpose; older keys stay readable.
    RotateDek {
        /// Which key to rotate.
        #[arg(long, value_enum)]
        purpose: Purpose,
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
    /// Propose the node's pending writer registrations now (it also does so by
    /// itself).
    RegisterWriter {
        /// The node's admin address.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
    /// Reseal, on every node, each stored version that is in cleartext or sealed
    /// under a storage key other than the active one (after a migration from
    /// cleartext, or a rotation). Runs in the background in bounded steps; with
    /// --wait, returns once the node asked has finished. Progress: `sealkv store
    /// status`.
    Rewrite {
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
        /// Wait until the node asked has rewritten everything.
        #[arg(long)]
        wait: bool,
    },
    /// Retire a storage key that no stored version needs any more: removed from
    /// every node's keyring and sidecar through the Raft log. Refused (409, with
    /// the node and its count) while any member still holds a version sealed under
    /// it, for the active key, and for raft keys; 503 when a member cannot be
    /// asked. `sealkv encryption status` shows the counts per key.
    RetireDek {
        /// The storage key id to retire.
        #[arg(long)]
        key_id: u32,
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
    /// Turn an envelope on: storage (values at rest) or raft (proposals). One-way.
    EnableEnvelope {
        /// Which envelope.
        #[arg(long, value_enum)]
        envelope: Purpose,
        /// Admin address of any node of the cluster.
        #[arg(long, env = "SEALKV_ADMIN_ADDR", default_value = "127.0.0.1:8379")]
        admin_addr: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Add a voter. Start the new node first with `sealkv start --join`.
    ///
    /// On an encrypted cluster the new id must not share its low 16 bits with a
    /// member or with any node ever registered as a writer (a removed node's id
    /// included): nonces would collide. The node is registered before it joins.
    AddNode(AddArgs),
    /// Add a learner (receives the log, does not vote). Ids are checked as for
    /// add-node.
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
    /// Tuning: the size of the chunks a snapshot is streamed in, in bytes (at most
    /// 16 MiB). Small values are for tests.
    #[arg(long, env = "SEALKV_SNAPSHOT_CHUNK_BYTES", hide = true, default_value_t = DEFAULT_CHUNK_BYTES)]
    snapshot_chunk_bytes: usize,
    /// The largest value a write may carry, in bytes; a larger one is answered
    /// `-ERR value too large` before it is proposed.
    #[arg(long, env = "SEALKV_MAX_VALUE_BYTES", default_value_t = SizeLimits::default().max_value_bytes)]
    max_value_bytes: usize,
    /// The largest Raft entry one write may become, in bytes (TiKV's
    /// raft-entry-max-size): at least --max-value-bytes plus 64 KiB, at most 256 MiB.
    #[arg(long, env = "SEALKV_MAX_ENTRY_BYTES", default_value_t = SizeLimits::default().max_entry_bytes)]
    max_entry_bytes: usize,
    /// Encrypt every stored value and Raft payload. Needs a KEK (--kek-file, or the
    /// base64 key in SEALKV_KEK_BASE64, which is removed from the environment once
    /// read). A new cluster bootstraps its keys by itself; writes wait until the
    /// storage and Raft envelopes are on.
    #[arg(long, env = "SEALKV_ENCRYPTION_ENABLED")]
    encryption_enabled: bool,
    /// The KEK: a regular file of 32 raw bytes with owner-only permissions, outside
    /// the data dir (`sealkv kek generate PATH` writes one).
    #[arg(long, env = "SEALKV_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// Require Redis clients to authenticate (`AUTH password`, `AUTH default
    /// password` or `HELLO 3 AUTH default password`) with the password in this file:
    /// one line, a trailing newline ignored, owner-only permissions (chmod 600). Read
    /// once at startup and never logged. Without it, no password is asked.
    #[arg(long, env = "SEALKV_REDIS_PASSWORD_FILE")]
    redis_password_file: Option<PathBuf>,
    /// Allow --raft-addr, --redis-addr and --admin-addr to be non-loopback addresses
    /// without --certs-dir. Without TLS any process that reaches those ports can read
    /// and write data, change membership, and speak for a peer on the Raft port (peer
    /// messages are still checked, so a crafted one is dropped, not a crash). Without
    /// this flag or --certs-dir a non-loopback address is refused.
    #[arg(long, env = "SEALKV_INSECURE")]
    insecure: bool,
    /// Turn TLS on with the certificates in this dir (`sealkv certs`): `ca.crt`,
    /// `node-N.crt` and `node-N.key` for this node's id. Peers speak mutual TLS and
    /// must present a certificate of the same CA naming the id they claim; the Redis
    /// port speaks TLS (a client certificate optional); the admin port speaks HTTPS
    /// and requires a client certificate of the CA. Non-loopback addresses are then
    /// allowed.
    #[arg(long, env = "SEALKV_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// How long, in seconds, old MVCC versions stay: a version overwritten, a delete
    /// and an expired value are removed once they are this old (0: as soon as
    /// possible). Reads never see the difference.
    #[arg(long, env = "SEALKV_MVCC_RETENTION", default_value_t = 300)]
    mvcc_retention: u64,
}

/// Reads the KEK from `SEALKV_KEK_BASE64`, overwrites its value in the environment
/// block the process started with (so `/proc/<pid>/environ` shows zeros) and removes
/// the variable, so children and later readers of the environment never see it.
#[allow(unsafe_code)]
fn take_env_kek() -> Option<Result<EnvKekProvider, KekError>> {
    let text = Zeroizing::new(std::env::var(KEK_ENV_VAR).ok()?);
    // SAFETY: called first thing in `main`, before any thread is spawned (no
    // runtime, no logger thread yet), so nothing reads or writes the environment
    // concurrently. getenv returns a pointer to the NUL-terminated value inside
    // the environment block the kernel set up (what /proc/<pid>/environ shows),
    // and strlen bytes from it are that value's own: overwriting them in place
    // keeps the block's length and terminator. remove_var then drops the entry.
    unsafe {
        let name = std::ffi::CString::new(KEK_ENV_VAR).ok();
        let value = name
            .as_ref()
            .map_or(std::ptr::null_mut(), |n| libc::getenv(n.as_ptr()));
        if !value.is_null() {
            let len = libc::strlen(value);
            for i in 0..len {
                std::ptr::write_volatile(value.add(i), b'0' as libc::c_char);
            }
        }
        std::env::remove_var(KEK_ENV_VAR);
    }
    Some(EnvKekProvider::from_base64(&text))
}

fn main() -> ExitCode {
    let env_kek = take_env_kek();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEALKV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Cmd::Start(args) => start(&args, env_kek),
        Cmd::Status {
            admin_addr,
            json,
            tls,
        } => tls.apply().and_then(|()| status(&admin_addr, json)),
        Cmd::Cluster(args) => args.tls.apply().and_then(|()| cluster(args.cmd)),
        Cmd::Kek(KekCmd::Generate { path }) => kek_generate(&path),
        Cmd::Encryption(args) => args.tls.apply().and_then(|()| encryption(args.cmd)),
        Cmd::Certs(cmd) => certs(cmd),
        Cmd::Store(args) => args.tls.apply().and_then(|()| store(args.cmd)),
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

/// The KEK source of `sealkv start`: `--kek-file` or `SEALKV_KEK_BASE64`, not both,
/// and never a file inside the data dir.
fn kek_provider(
    args: &StartArgs,
    env_kek: Option<Result<EnvKekProvider, KekError>>,
) -> anyhow::Result<Option<Arc<dyn KekProvider>>> {
    match (&args.kek_file, env_kek) {
        (Some(_), Some(_)) => {
            bail!("both --kek-file and {KEK_ENV_VAR} are set: give the KEK one way only")
        }
        (Some(path), None) => {
            refuse_kek_in_data_dir(path, &args.data_dir)?;
            Ok(Some(Arc::new(FileKekProvider::new(path))))
        }
        (None, Some(env)) => {
            let provider = env.with_context(|| format!("read the KEK from {KEK_ENV_VAR}"))?;
            Ok(Some(Arc::new(provider)))
        }
        (None, None) => Ok(None),
    }
}

/// The KEK must never live in the data dir: a copy of the data dir would carry the
/// key that opens it.
fn refuse_kek_in_data_dir(kek: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let (Ok(kek), Ok(data)) = (kek.canonicalize(), data_dir.canonicalize()) else {
        // A missing file is reported when the key is loaded; a missing data dir
        // cannot contain it.
        return Ok(());
    };
    if kek.starts_with(&data) {
        bail!(
            "--kek-file {} is inside --data-dir {}: keep the KEK outside the data dir",
            kek.display(),
            data.display()
        );
    }
    Ok(())
}

fn certs(cmd: CertsCmd) -> anyhow::Result<()> {
    use sealkv_node::tls;
    let mut out = std::io::stdout().lock();
    match cmd {
        CertsCmd::Init { certs_dir } => {
            tls::init_ca(&certs_dir).context("make a CA")?;
            writeln!(
                out,
                "wrote {} and {} (mode 0600); keep the CA key off the nodes",
                certs_dir.join(tls::CA_CERT).display(),
                certs_dir.join(tls::CA_KEY).display()
            )?;
        }
        CertsCmd::Node {
            certs_dir,
            id,
            hosts,
        } => {
            tls::make_node(&certs_dir, id, &hosts)
                .with_context(|| format!("make node {id}'s certificate"))?;
            writeln!(
                out,
                "wrote {} and {} (mode 0600) for node {id}, names {} and {}",
                tls::node_cert_path(&certs_dir, id).display(),
                tls::node_key_path(&certs_dir, id).display(),
                tls::node_name(id),
                hosts.join(",")
            )?;
        }
        CertsCmd::Client { certs_dir, name } => {
            tls::make_client(&certs_dir, &name)
                .with_context(|| format!("make client {name}'s certificate"))?;
            writeln!(
                out,
                "wrote {} and {} (mode 0600)",
                tls::client_cert_path(&certs_dir, &name).display(),
                tls::client_key_path(&certs_dir, &name).display()
            )?;
        }
    }
    Ok(())
}

fn kek_generate(path: &Path) -> anyhow::Result<()> {
    generate_kek_file(path).with_context(|| format!("generate a KEK at {}", path.display()))?;
    writeln!(
        std::io::stdout().lock(),
        "wrote a new 32-byte KEK to {} (mode 0600); keep it outside every data dir and back it up: without it the encrypted data cannot be read",
        path.display()
    )?;
    Ok(())
}

fn encryption(cmd: EncryptionCmd) -> anyhow::Result<()> {
    use serde_json::json;
    let (admin, path, what, body) = match cmd {
        EncryptionCmd::Status { admin_addr, json } => {
            let status = admin_client::get_json(&admin_addr, "/v1/encryption/status")?;
            let text = if json {
                serde_json::to_string_pretty(&status)?
            } else {
                admin_client::summarize_encryption(&status)
            };
            writeln!(std::io::stdout().lock(), "{text}")?;
            return Ok(());
        }
        EncryptionCmd::Bootstrap { admin_addr } => {
            (admin_addr, "bootstrap", "bootstrap encryption", json!({}))
        }
        EncryptionCmd::Rewrite { admin_addr, wait } => return rewrite(&admin_addr, wait),
        EncryptionCmd::RotateDek {
            purpose,
            admin_addr,
        } => (
            admin_addr,
            "rotate-dek",
            "rotate the DEK",
            json!({ "purpose": purpose.as_str() }),
        ),
        EncryptionCmd::RetireDek { key_id, admin_addr } => (
            admin_addr,
            "retire-dek",
            "retire the DEK",
            json!({ "key_id": key_id }),
        ),
        EncryptionCmd::RegisterWriter { admin_addr } => (
            admin_addr,
            "register-writer",
            "register this writer",
            json!({}),
        ),
        EncryptionCmd::EnableEnvelope {
            envelope,
            admin_addr,
        } => (
            admin_addr,
            "enable-envelope",
            "enable the envelope",
            json!({ "envelope": envelope.as_str() }),
        ),
    };
    let answer = admin_client::post_json(&admin, &format!("/v1/encryption/{path}"), what, &body)?;
    writeln!(std::io::stdout().lock(), "{what}: {answer}")?;
    Ok(())
}

/// `sealkv encryption rewrite`: asks for the rewrite, then with `wait` follows the
/// node's progress until it has finished.
fn rewrite(admin_addr: &str, wait: bool) -> anyhow::Result<()> {
    let answer = admin_client::post_json(
        admin_addr,
        "/v1/encryption/rewrite",
        "rewrite",
        &serde_json::json!({}),
    )?;
    let requested = answer
        .get("requested_index")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    writeln!(out, "rewrite requested at index {requested} on every node")?;
    if !wait {
        writeln!(
            out,
            "follow it with: sealkv store status --admin-addr {admin_addr}"
        )?;
        return Ok(());
    }
    loop {
        let status = admin_client::get_json(admin_addr, "/v1/store/status")?;
        let rewrite = status.get("rewrite").cloned().unwrap_or_default();
        let field = |name: &str| {
            rewrite
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        if field("done_index") >= requested {
            writeln!(
                out,
                "rewrite done on {admin_addr}: {} versions scanned, {} resealed, {} left alone (they do not open)",
                field("scanned"),
                field("rewritten"),
                field("unreadable")
            )?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `sealkv store status|compact`.
fn store(cmd: StoreCmd) -> anyhow::Result<()> {
    let answer = match cmd {
        StoreCmd::Status { admin_addr } => admin_client::get_json(&admin_addr, "/v1/store/status")?,
        StoreCmd::Compact { admin_addr } => admin_client::post_json(
            &admin_addr,
            "/v1/store/compact",
            "compact the store",
            &serde_json::json!({}),
        )?,
    };
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&answer)?
    )?;
    Ok(())
}

fn start(
    args: &StartArgs,
    env_kek: Option<Result<EnvKekProvider, KekError>>,
) -> anyhow::Result<()> {
    let peers = PeerBook::parse(&args.peers).context("parse --peers")?;
    let encryption = EncryptionConfig {
        enabled: args.encryption_enabled,
        kek: kek_provider(args, env_kek)?,
    };
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
            snapshot_chunk_bytes: args.snapshot_chunk_bytes.clamp(1, MAX_CHUNK_BYTES),
        },
        sizes: SizeLimits {
            max_value_bytes: args.max_value_bytes,
            max_entry_bytes: args.max_entry_bytes,
        },
        encryption,
        redis_password: args
            .redis_password_file
            .as_deref()
            .map(|path| Password::from_file(path).map(Arc::new))
            .transpose()
            .context("load --redis-password-file")?,
        insecure: args.insecure,
        tls: args
            .certs_dir
            .as_deref()
            .map(|dir| sealkv_node::tls::NodeTls::load(dir, args.id))
            .transpose()
            .context("load the node's certificates from --certs-dir")?,
        maintenance: sealkv_node::maintenance::MaintenanceConfig {
            retention: Duration::from_secs(args.mvcc_retention),
        },
    };
    if let Some(tls) = &config.tls {
        // Operations forwarded to the leader's admin endpoint speak as this node.
        admin_client::use_tls(tls.admin_client.clone());
    }
    config.sizes.validate().map_err(anyhow::Error::msg)?;
    if config.id == 0 {
        anyhow::bail!("--id 0 is not a valid node id");
    }
    arm_failpoints()?;
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

/// A test build (feature `failpoints`) arms the fail points `FAILPOINTS` names
/// before anything is opened, and says that it has fail points; any other build has
/// none to arm.
#[cfg(feature = "failpoints")]
fn arm_failpoints() -> anyhow::Result<()> {
    let armed = sealkv_node::failpoints::arm_from_env()?;
    tracing::warn!(
        ?armed,
        "this is a test build with fail points (feature failpoints)"
    );
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
#[allow(clippy::unnecessary_wraps)]
fn arm_failpoints() -> anyhow::Result<()> {
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set, but this build has no fail points: ignored");
    }
    Ok(())
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
