//! The node's startup sequence (DESIGN.md §8): store → writer-registry glue →
//! applier → state machine with encryption. Each step is logged; a failure names its
//! step, and dropping the partly built node releases what the earlier steps opened.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sealkv_encryption::applier::Applier;
use sealkv_kv::KvFsm;
use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, RocksWriterRegistry};

/// What the node is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The node's id.
    pub id: u64,
}

/// A started node: today, its state machine.
pub struct Node {
    config: Config,
    fsm: KvFsm,
}

impl Node {
    /// Runs the startup sequence.
    pub fn start(config: &Config) -> anyhow::Result<Node> {
        let db_dir = config.data_dir.join("db");
        tracing::info!(node = config.id, data_dir = %config.data_dir.display(), "starting");

        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data dir {}", config.data_dir.display()))?;

        let store: Arc<dyn KvStore> = Arc::new(
            RocksStore::open(&db_dir, RocksStoreOptions::default())
                .with_context(|| format!("open store at {}", db_dir.display()))?,
        );
        tracing::info!(step = 1, path = %db_dir.display(), "opened store");

        let registry = RocksWriterRegistry::from_store(store.as_ref())
            .context("build writer-registry glue")?;
        tracing::info!(step = 2, "built writer-registry glue");

        let applier = Applier::new(Arc::new(registry));
        tracing::info!(step = 3, kek = "not configured", "built encryption applier");

        let fsm = KvFsm::new(store)
            .context("build state machine")?
            .with_encryption(applier);
        tracing::info!(
            step = 4,
            applied_index = fsm.applied_index(),
            "built state machine with encryption"
        );

        Ok(Node {
            config: config.clone(),
            fsm,
        })
    }

    /// What the node found on disk.
    pub fn report(&self) -> anyhow::Result<Report> {
        let registry_rows = self
            .fsm
            .encryption()
            .map(|a| a.registry().list_writers())
            .transpose()
            .context("list writer registry")?
            .map_or(0, |rows| rows.len());
        Ok(Report {
            id: self.config.id,
            data_dir: self.config.data_dir.clone(),
            applied_index: self.fsm.applied_index(),
            registry_rows,
        })
    }
}

/// The state a started node reports.
pub struct Report {
    id: u64,
    data_dir: PathBuf,
    applied_index: u64,
    registry_rows: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} data_dir={} applied_index={} writer_registry_rows={}",
            self.id,
            self.data_dir.display(),
            self.applied_index,
            self.registry_rows
        )
    }
}
