//! The node's startup sequence (DESIGN.md §8): lock the data dir → open the store →
//! writer-registry glue → applier → state machine with encryption → Raft log and
//! driver → listeners (Raft peers, Redis protocol, admin HTTP). Each step is logged;
//! a failure names its step, and dropping what was built releases it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sealkv_encryption::applier::Applier;
use sealkv_kv::KvFsm;
use sealkv_store::{KvStore, RaftLog, RocksStore, RocksStoreOptions, RocksWriterRegistry};
use tokio::net::TcpListener;

use crate::admin::{self, Addresses, AdminState};
use crate::backend::NodeBackend;
pub use crate::consensus::RaftTuning;
use crate::consensus::{self, DriverConfig, PeerBook, RaftHandle, transport};
use crate::encryption::{self, Control, EncryptionConfig, OpenedKeyring};
use crate::metrics::Metrics;

/// What the node is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The node's id.
    pub id: u64,
    /// Where Raft peers connect.
    pub raft_addr: String,
    /// Where Redis clients connect.
    pub redis_addr: String,
    /// Where the admin HTTP endpoint listens.
    pub admin_addr: String,
    /// The initial cluster, `id=raft_addr` for every member; empty means a single
    /// node cluster of this node alone.
    pub peers: PeerBook,
    /// Join an existing cluster instead of forming one: start with no membership
    /// and wait for the leader (after `sealkv cluster add-node`).
    pub join: bool,
    /// The Raft driver's timing and compaction.
    pub raft: RaftTuning,
    /// The largest value and entry a write may carry (`--max-value-bytes`,
    /// `--max-entry-bytes`).
    pub sizes: sealkv_kv::SizeLimits,
    /// Encryption: whether it is enabled, and the KEK.
    pub encryption: EncryptionConfig,
    /// The Redis `default` user's password (`--redis-password-file`); `None`: no
    /// authentication.
    pub redis_password: Option<Arc<crate::resp::Password>>,
    /// `--insecure`: bind non-loopback addresses without TLS ([`check_exposure`]).
    pub insecure: bool,
    /// `--certs-dir`: mutual TLS between peers, TLS on the Redis port and HTTPS
    /// with client certificates on the admin port; `None`: plain TCP everywhere.
    pub tls: Option<crate::tls::NodeTls>,
    /// MVCC garbage collection (`--mvcc-retention`).
    pub maintenance: crate::maintenance::MaintenanceConfig,
}

/// The first steps, up to the state machine: what exists before Raft starts.
pub struct Opened {
    _lock: File,
    store: Arc<RocksStore>,
    fsm: KvFsm,
    keyring: Option<OpenedKeyring>,
}

/// Takes the data directory's lock file, so a second process is refused before it
/// touches anything.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("lock data dir: open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "lock data dir {}: another sealkv process is using it",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("lock data dir {}", data_dir.display()))
        }
    }
}

impl Opened {
    /// Runs the steps up to the state machine with encryption.
    ///
    /// # Errors
    /// The failing step, named.
    pub fn open(config: &Config) -> anyhow::Result<Opened> {
        let db_dir = config.data_dir.join("db");
        tracing::info!(node = config.id, data_dir = %config.data_dir.display(), "starting");
        check_exposure(config)?;

        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;

        let store = Arc::new(
            RocksStore::open(&db_dir, RocksStoreOptions::default())
                .with_context(|| format!("open store at {}", db_dir.display()))?,
        );
        tracing::info!(step = 1, path = %db_dir.display(), "opened store");

        let registry =
            RocksWriterRegistry::from_store(&store).context("build writer-registry glue")?;
        tracing::info!(step = 2, "built writer-registry glue");

        let key_state = store
            .get_meta(sealkv_kv::ENCRYPTION_META_KEY)
            .context("read the store's encryption state")?
            .is_some();
        let keyring = encryption::open_keyring(
            &config.encryption,
            &config.data_dir,
            config.id,
            &registry,
            key_state,
        )
        .context("build encryption applier")?;
        let applier = match &keyring {
            Some(opened) => {
                tracing::info!(
                    step = 3,
                    kek = config.encryption.kek.as_ref().map_or("none", |k| k.kind()),
                    bootstrapped = opened.keyring.is_bootstrapped(),
                    sidecar_index = opened.keyring.sidecar_applied_index(),
                    local_epochs = ?opened.keyring.local_epochs(),
                    "built encryption applier with keyring"
                );
                Applier::with_keyring(Arc::new(registry), Arc::clone(&opened.keyring))
            }
            None => {
                tracing::info!(
                    step = 3,
                    encryption = "disabled",
                    "built encryption applier"
                );
                Applier::new(Arc::new(registry))
            }
        };

        let fsm = KvFsm::new(Arc::clone(&store) as Arc<dyn KvStore>)
            .context("build state machine")?
            .with_encryption(applier);

        tracing::info!(
            step = 4,
            applied_index = fsm.applied_index(),
            "built state machine with encryption"
        );
        Ok(Opened {
            _lock: lock,
            store,
            fsm,
            keyring,
        })
    }
}

async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for {what} on {addr} (--{what}-addr)"))
}

/// A running node: what the listeners and the shutdown path need.
pub struct Running {
    /// The Raft driver.
    pub raft: RaftHandle,
    driver: std::thread::JoinHandle<Result<(), consensus::DriverError>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Where it listens (the bound addresses, ports resolved).
    pub addresses: Addresses,
    _opened_lock: File,
}

fn slog_logger() -> slog::Logger {
    use slog::Drain;
    let drain = tracing_slog::TracingSlogDrain.fuse();
    slog::Logger::root(drain, slog::o!())
}

/// Runs the Raft and listener steps over what [`Opened::open`] built.
///
/// # Errors
/// The failing step, named.
pub async fn run(config: &Config, opened: Opened) -> anyhow::Result<Running> {
    let Opened {
        _lock,
        store,
        mut fsm,
        keyring,
    } = opened;
    // Every listener is bound before the key epochs are committed, so a taken port
    // fails the start without using up an epoch; Redis and admin serve later.
    let raft_listener = bind("raft", &config.raft_addr).await?;
    let redis_listener = bind("redis", &config.redis_addr).await?;
    let admin_listener = bind("admin", &config.admin_addr).await?;
    let log = RaftLog::open(&store).context("open raft log")?;
    if consensus::recover_pending_snapshot(&config.data_dir, &mut fsm, &log, &store)
        .context("finish installing a snapshot received before a crash")?
    {
        tracing::info!("finished installing a snapshot received before a crash");
    }
    if let Some(opened) = &keyring {
        encryption::check_sidecar_against_log(&opened.keyring, &log, fsm.applied_index())
            .context("open raft log")?;
        // A snapshot installed just before a crash may carry keys the sidecar does
        // not have yet; the log no longer holds the entries that installed them.
        if fsm
            .adopt_snapshot_keys()
            .context("adopt the encryption keys of the installed snapshot")?
        {
            tracing::info!("adopted the encryption keys of the installed snapshot");
        }
    }
    let mut peers =
        PeerBook::load(&PeerBook::path_in(&config.data_dir)).context("load peers file")?;
    let mut flag_peers = config.peers.clone();
    if flag_peers.is_empty() {
        flag_peers.set(config.id, Some(config.raft_addr.clone()));
    }
    peers.merge(&flag_peers);
    let initial_voters = if config.join {
        Vec::new()
    } else {
        flag_peers.ids()
    };
    if config.encryption.enabled
        && flag_peers.ids().len() > 1
        && is_loopback(&config.admin_addr)
        && !is_loopback(&config.raft_addr)
    {
        tracing::warn!(
            admin = %config.admin_addr,
            raft = %config.raft_addr,
            "--admin-addr is a loopback address but --raft-addr is not: on an encrypted \
             cluster the other nodes reach this node's admin endpoint (forwarded \
             operations, key-epoch checks), so give it an address they can reach"
        );
    }
    if config.encryption.enabled
        && let Some((a, b)) = encryption::low16_collision(&flag_peers.ids())
    {
        bail!(
            "--peers: node ids {a} and {b} share their low 16 bits; on an encrypted cluster \
             they would build the same nonces: give every node an id with different low 16 bits"
        );
    }
    if !config.join && !initial_voters.contains(&config.id) {
        bail!(
            "start raft: --peers does not list this node's id {} (use --join to join an existing cluster)",
            config.id
        );
    }
    let metrics = Arc::new(Metrics::new().context("register metrics")?);
    let max_entry_bytes = config.sizes.max_entry_bytes + sealkv_kv::WRAP_OVERHEAD;
    let election_timeout = config
        .raft
        .tick
        .saturating_mul(u32::try_from(config.raft.election_ticks).unwrap_or(u32::MAX));
    let mut transport_config = transport::TransportConfig::new(max_entry_bytes, election_timeout);
    transport_config.snapshots = Some(transport::SnapshotFiles {
        out_dir: log.snapshot_out_dir().to_path_buf(),
        data_dir: config.data_dir.clone(),
        chunk_bytes: config.raft.snapshot_chunk_bytes,
    });
    transport_config.tls = config.tls.as_ref().map(|tls| transport::PeerTls {
        acceptor: tls.raft_acceptor.clone(),
        connector: tls.raft_connector.clone(),
    });
    let transport = transport::Transport::new(
        config.id,
        transport::Announce {
            redis: config.redis_addr.clone(),
            admin: config.admin_addr.clone(),
        },
        transport_config,
        Arc::clone(&metrics),
        tokio::runtime::Handle::current(),
    );
    let fsm_reader = fsm.reader();
    // An encrypted node applies nothing until its epochs passed the check against
    // the cluster's record (`encryption::maintain`).
    let apply_gate = (keyring.is_some() && config.encryption.kek.is_some())
        .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    if let Some(opened) = &keyring {
        // The last startup step before anything can seal: this load's raised
        // epochs, durable in the sidecar.
        opened
            .keyring
            .commit_epochs()
            .context("write this load's key epochs to the sidecar")?;
    }
    let (raft, driver) = consensus::spawn(
        DriverConfig {
            id: config.id,
            data_dir: config.data_dir.clone(),
            tuning: config.raft.clone(),
            max_entry_bytes,
            apply_gate: apply_gate.clone(),
        },
        log,
        fsm,
        Arc::new(Arc::clone(&transport)),
        peers,
        &initial_voters,
        Arc::clone(&metrics),
        &slog_logger(),
    )
    .context("start raft")?;
    transport.attach(raft.clone());
    let status = raft.status();
    tracing::info!(
        step = 5,
        first_index = status.first_index,
        last_index = status.last_index,
        "opened raft log and started raft driver"
    );

    let local = |l: &TcpListener| l.local_addr().map(|a: SocketAddr| a.to_string());
    let addresses = Addresses {
        raft_addr: local(&raft_listener).context("raft listener address")?,
        redis_addr: local(&redis_listener).context("redis listener address")?,
        admin_addr: local(&admin_listener).context("admin listener address")?,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    {
        let inbox: Arc<dyn transport::Inbox> = Arc::new(raft.clone());
        let transport = Arc::clone(&transport);
        let stop = until_stop(stopped.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = transport::serve(raft_listener, transport, inbox, stop).await {
                tracing::error!("raft listener failed: {e}");
            }
        }));
    }
    let backend = Arc::new(NodeBackend::new(
        raft.clone(),
        fsm_reader.clone(),
        Arc::clone(&transport),
        keyring
            .as_ref()
            .map(|k| (Arc::clone(&k.keyring), Arc::clone(&k.registered))),
        Arc::clone(&metrics),
    ));
    let maintainer = Arc::new(crate::maintenance::Maintainer::new(
        Arc::clone(&store),
        fsm_reader,
        raft.clone(),
        Arc::clone(&backend) as Arc<dyn crate::maintenance::ProposeMaintenance>,
        config.maintenance,
        crate::maintenance::StoreMetrics::new(metrics.registry())
            .context("register store metrics")?,
    ));
    tasks.push(tokio::spawn(
        Arc::clone(&maintainer).run(until_stop(stopped.clone())),
    ));
    let rewrite_keyring = keyring.as_ref().map(|k| Arc::clone(&k.keyring));
    let rewrite_allowed = Arc::new(move || match &rewrite_keyring {
        None => Err(
            "encryption is not enabled on this node: there is no key to rewrite under".to_string(),
        ),
        Some(k) if !k.storage_envelope_active() => Err(
            "the storage envelope is not on yet: values would be rewritten in cleartext"
                .to_string(),
        ),
        Some(_) => Ok(()),
    });
    {
        let stop = until_stop(stopped.clone());
        let resp_config = crate::resp::Config {
            sizes: config.sizes,
            password: config.redis_password.clone(),
            auth_failures: Some(metrics.auth_failures.clone()),
            tls: config.tls.as_ref().map(|tls| Arc::clone(&tls.redis_server)),
            ..crate::resp::Config::default()
        };
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                crate::resp::serve_with(redis_listener, backend, resp_config, stop).await
            {
                tracing::error!("redis listener failed: {e}");
            }
        }));
    }
    let control = match (&keyring, &config.encryption.kek) {
        (Some(opened), Some(kek)) => {
            let registry = RocksWriterRegistry::from_store(&store)
                .context("build writer-registry glue for the admin endpoint")?;
            let kv_store: Arc<dyn KvStore> = Arc::clone(&store) as Arc<dyn KvStore>;
            let store = Arc::clone(&store);
            Some(Control {
                raft: raft.clone(),
                keyring: Arc::clone(&opened.keyring),
                kek: Arc::clone(kek),
                registry: Arc::new(registry),
                has_user_data: Arc::new(move || has_user_data(store.as_ref())),
                store: kv_store,
                transport: Arc::clone(&transport),
                serial: Arc::new(tokio::sync::Mutex::new(())),
                apply_gate: apply_gate
                    .clone()
                    .unwrap_or_else(|| Arc::new(std::sync::atomic::AtomicBool::new(true))),
            })
        }
        _ => None,
    };
    if let (Some(control), Some(opened)) = (&control, keyring) {
        let stop = until_stop(stopped.clone());
        tasks.push(tokio::spawn(encryption::maintain(
            control.clone(),
            opened.to_register,
            opened.registered,
            stop,
        )));
    }
    {
        let app = admin::router(AdminState {
            raft: raft.clone(),
            metrics,
            addresses: addresses.clone(),
            encryption: control,
        })
        .merge(crate::maintenance::routes(maintainer, rewrite_allowed));
        let stop = until_stop(stopped.clone());
        let admin_tls = config.tls.as_ref().map(|tls| tls.admin_acceptor.clone());
        tasks.push(tokio::spawn(async move {
            let served = match admin_tls {
                None => {
                    axum::serve(admin_listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                }
                Some(acceptor) => {
                    match crate::tls::TlsListener::new(admin_listener, acceptor, "admin") {
                        Ok(listener) => {
                            axum::serve(listener, app)
                                .with_graceful_shutdown(stop)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = served {
                tracing::error!("admin listener failed: {e}");
            }
        }));
    }
    tracing::info!(
        step = 6,
        raft = %addresses.raft_addr,
        redis = %addresses.redis_addr,
        admin = %addresses.admin_addr,
        "listening"
    );
    Ok(Running {
        raft,
        driver,
        tasks,
        stop,
        addresses,
        _opened_lock: _lock,
    })
}

/// Refuses a `--raft-addr`, `--redis-addr` or `--admin-addr` that is not a loopback
/// address unless the node has TLS (`--certs-dir`) or `--insecure` is given, naming
/// the first such flag in one line: without TLS nothing that reaches those ports is
/// authenticated (DESIGN.md §11, "Trust"). With `--insecure` it warns once, naming
/// every exposed address; with TLS it warns when the Redis port is exposed without a
/// password (a Redis client needs no certificate).
///
/// # Errors
/// A non-loopback address without TLS or `--insecure`.
pub fn check_exposure(config: &Config) -> anyhow::Result<()> {
    let exposed: Vec<(&str, &str)> = [
        ("--raft-addr", config.raft_addr.as_str()),
        ("--redis-addr", config.redis_addr.as_str()),
        ("--admin-addr", config.admin_addr.as_str()),
    ]
    .into_iter()
    .filter(|(_, addr)| !is_loopback(addr))
    .collect();
    let Some((flag, addr)) = exposed.first() else {
        return Ok(());
    };
    if config.tls.is_some() {
        if config.redis_password.is_none() && !is_loopback(&config.redis_addr) {
            tracing::warn!(
                redis = %config.redis_addr,
                "the redis port is exposed and asks no password: a redis client needs no \
                 certificate, so any process that reaches it can read and write data; give \
                 --redis-password-file"
            );
        }
        return Ok(());
    }
    if !config.insecure {
        bail!(
            "{flag} {addr} is not a loopback address, and without TLS any process that reaches \
             it can read and write data or disrupt the cluster: bind to 127.0.0.1, give \
             --certs-dir to turn TLS on, or pass --insecure to accept that"
        );
    }
    let exposed: Vec<String> = exposed.iter().map(|(f, a)| format!("{f} {a}")).collect();
    tracing::warn!(
        exposed = %exposed.join(", "),
        "--insecure: serving on non-loopback addresses without TLS; any process that reaches \
         them can read and write data, change membership, and claim a peer's id on the raft port"
    );
    Ok(())
}

/// Whether `addr` (`host:port`) names a loopback host.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the store holds any user key (live or not): the scan stops at the first.
fn has_user_data(store: &dyn KvStore) -> bool {
    let mut found = false;
    let scanned = store.scan_latest(&mut |_, _| {
        found = true;
        false
    });
    // When the store cannot be read, act as if it held data: never bootstrap blind.
    found || scanned.is_err()
}

impl Running {
    /// Stops the listeners, then the Raft driver, and waits for both.
    ///
    /// # Errors
    /// When the driver had stopped on a fatal error.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.raft.shutdown();
        let driver = self.driver;
        let result = tokio::task::spawn_blocking(move || driver.join())
            .await
            .context("join raft driver")?;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("raft driver")),
            Err(_) => bail!("raft driver panicked"),
        }
    }

    /// Whether the Raft driver thread has ended (a fatal storage error).
    pub fn driver_finished(&self) -> bool {
        self.driver.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(raft: &str, redis: &str, admin: &str, insecure: bool) -> Config {
        Config {
            data_dir: PathBuf::from("unused"),
            id: 1,
            raft_addr: raft.to_string(),
            redis_addr: redis.to_string(),
            admin_addr: admin.to_string(),
            peers: PeerBook::default(),
            join: false,
            raft: RaftTuning {
                tick: Duration::from_millis(100),
                election_ticks: 10,
                heartbeat_ticks: 2,
                compact_threshold: 10,
                compact_keep: 1,
                request_timeout: Duration::from_secs(1),
                snapshot_chunk_bytes: 1 << 20,
            },
            sizes: sealkv_kv::SizeLimits::default(),
            encryption: EncryptionConfig {
                enabled: false,
                kek: None,
            },
            redis_password: None,
            insecure,
            tls: None,
            maintenance: crate::maintenance::MaintenanceConfig::default(),
        }
    }

    /// Loopback everywhere starts; any other address needs --insecure, and the
    /// refusal is one line naming the first exposed flag and --insecure.
    #[test]
    fn exposure_needs_insecure() {
        let lo = "127.0.0.1:1";
        assert!(check_exposure(&config(lo, "localhost:2", "[::1]:3", false)).is_ok());
        for (raft, redis, admin, flag) in [
            ("0.0.0.0:1", lo, lo, "--raft-addr 0.0.0.0:1"),
            (lo, "10.1.2.3:2", lo, "--redis-addr 10.1.2.3:2"),
            (lo, lo, "[::]:3", "--admin-addr [::]:3"),
            ("node1:1", "node1:2", lo, "--raft-addr node1:1"),
        ] {
            let err = check_exposure(&config(raft, redis, admin, false))
                .expect_err("refused")
                .to_string();
            assert!(err.starts_with(flag), "{err}");
            assert!(err.contains("--insecure") && !err.contains('\n'), "{err}");
            assert!(check_exposure(&config(raft, redis, admin, true)).is_ok());
        }
    }

    /// With TLS (`--certs-dir`) a non-loopback address starts without --insecure.
    #[test]
    fn exposure_with_tls_needs_no_insecure() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::tls::init_ca(dir.path()).expect("ca");
        crate::tls::make_node(dir.path(), 1, &[]).expect("node 1");
        let mut tls = config("0.0.0.0:1", "10.1.2.3:2", "[::]:3", false);
        assert!(check_exposure(&tls).is_err());
        tls.tls = Some(crate::tls::NodeTls::load(dir.path(), 1).expect("load"));
        assert!(check_exposure(&tls).is_ok());
    }

    #[test]
    fn loopback_addresses() {
        for addr in ["127.0.0.1:8379", "localhost:1", "[::1]:80", "127.5.0.1:2"] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in ["10.0.0.5:8379", "0.0.0.0:1", "node1.example:80", "[::]:80"] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }
}
