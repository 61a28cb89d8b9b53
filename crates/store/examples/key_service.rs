//! A key service outside the sealkv node, built from the libraries alone: it reads
//! encryption control-plane entries as a Raft log would carry them (decoded with
//! `sealkv-fsmwire`), applies them with the `sealkv-encryption` applier over the
//! writer registry in RocksDB (`sealkv-store`), then seals and opens values with
//! the keys they installed. Run it with
//! `cargo test --workspace` (which builds it into `target/debug/examples/`); CI runs
//! it on every change.

use std::error::Error;
use std::io::Write as _;
use std::sync::Arc;

use sealkv_encryption::WriterRegistryStore;
use sealkv_encryption::applier::Applier;
use sealkv_encryption::envelope::Dek;
use sealkv_encryption::kek::{FileKekProvider, KekProvider, generate_kek_file, wrap_dek};
use sealkv_encryption::keyring::{Keyring, VALUE_HEADER_LEN};
use sealkv_fsmwire::{BootstrapPayload, OP_BOOTSTRAP, OP_REGISTRATION, RegistrationPayload};
use sealkv_store::{RocksStore, RocksStoreOptions, RocksWriterRegistry};

/// This service's node id, and a peer it learns about from the log.
const ME: u64 = 0x0000_0001_0000_0007;
const PEER: u64 = 0x0000_0002_0000_0009;

fn main() -> Result<(), Box<dyn Error>> {
    let mut out = std::io::stdout().lock();
    let dir = tempfile::tempdir()?;
    let kek_path = dir.path().join("kek");
    generate_kek_file(&kek_path)?;
    let kek: Arc<dyn KekProvider> = Arc::new(FileKekProvider::new(&kek_path));
    let data = dir.path().join("data");

    // The log this service follows: a bootstrap installing two keys with this
    // service registered at epoch 1, then a peer registering under both.
    let wrapped = || -> Result<Vec<u8>, Box<dyn Error>> {
        Ok(wrap_dek(&kek.load()?, Dek::generate()?.as_bytes())?.to_vec())
    };
    let row = |dek_id, full_node_id| RegistrationPayload {
        dek_id,
        full_node_id,
        local_epoch: 1,
    };
    let log: Vec<Vec<u8>> = vec![
        BootstrapPayload {
            storage_dek_id: 1,
            wrapped_storage: wrapped()?,
            raft_dek_id: 2,
            wrapped_raft: wrapped()?,
            batch_registry: vec![row(1, ME), row(2, ME)],
        }
        .to_entry()?,
        row(1, PEER).to_entry(),
        row(2, PEER).to_entry(),
    ];

    {
        let store = RocksStore::open(data.join("db"), RocksStoreOptions::default())?;
        let registry = Arc::new(RocksWriterRegistry::from_store(&store)?);
        let keyring = Arc::new(Keyring::open(&data, ME, Arc::clone(&kek))?);
        let applier = Applier::with_keyring(Arc::clone(&registry) as _, Arc::clone(&keyring));
        for (i, entry) in log.iter().enumerate() {
            let index = i as u64 + 1;
            let (&opcode, payload) = entry.split_first().ok_or("empty entry")?;
            let what = match opcode {
                OP_BOOTSTRAP => {
                    let boot = BootstrapPayload::decode(payload)?;
                    format!(
                        "bootstrap of keys {} and {} with {} registry rows",
                        boot.storage_dek_id,
                        boot.raft_dek_id,
                        boot.batch_registry.len()
                    )
                }
                OP_REGISTRATION => {
                    let reg = RegistrationPayload::decode(payload)?;
                    format!(
                        "registration of node {:#x} under key {} at epoch {}",
                        reg.full_node_id, reg.dek_id, reg.local_epoch
                    )
                }
                other => return Err(format!("unexpected opcode {other:#04x}").into()),
            };
            let applied = applier.apply(index, opcode, payload)?;
            writeln!(out, "entry {index}: {what}: {applied:?}")?;
        }
        for (slot, row) in registry.list_writers()? {
            writeln!(
                out,
                "registry: key {} node16 {:#06x} -> node {:#x}, epochs {}..{}",
                slot.dek_id,
                slot.node_id16,
                row.full_node_id,
                row.first_seen_local_epoch,
                row.last_seen_local_epoch
            )?;
        }
        let header = [0u8; VALUE_HEADER_LEN];
        let sealed = keyring.seal_storage(b"a value", &header, b"user-key")?;
        let opened = keyring.open_storage(&sealed, &header, b"user-key")?;
        writeln!(
            out,
            "sealed {} bytes into {}; opened: {:?}",
            opened.len(),
            sealed.len(),
            String::from_utf8_lossy(&opened)
        )?;
        if opened != b"a value" {
            return Err("a sealed value did not open to itself".into());
        }
    }

    // A restart: the rows are durable in RocksDB, and the keyring comes back with
    // the keys, its epoch raised above the one it sealed under.
    let store = RocksStore::open(data.join("db"), RocksStoreOptions::default())?;
    let registry = RocksWriterRegistry::from_store(&store)?;
    let rows = registry.list_writers()?.len();
    let keyring = Keyring::open(&data, ME, kek)?;
    let epochs = keyring.local_epochs();
    writeln!(
        out,
        "after a restart: {rows} registry rows, local epochs {epochs:?}"
    )?;
    if rows != 4 || !keyring.is_bootstrapped() {
        return Err("the registry rows or the keys did not survive the restart".into());
    }
    Ok(())
}
