//! [`PeerBook`]: the Raft addresses of the cluster's members, from `--peers` and from
//! applied membership changes, kept in `<data-dir>/peers` so a node that restarts
//! after a membership change still knows where the new members are.
//!
//! The file is text, one `id=host:port` per line, written with the one durable-replace
//! helper.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sealkv_encryption::durable::durable_replace;

/// Largest peers file read; a larger one is refused as corrupt.
const MAX_FILE: u64 = 1 << 20;

/// Node ids and their Raft addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBook {
    peers: BTreeMap<u64, String>,
}

impl PeerBook {
    /// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002` (the `--peers` flag).
    ///
    /// # Errors
    /// When an item is not `id=host:port` with a non-zero id, or an id repeats.
    pub fn parse(list: &str) -> anyhow::Result<PeerBook> {
        let mut peers = BTreeMap::new();
        for item in list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some((id, addr)) = item.split_once('=') else {
                bail!("peer {item:?} is not id=host:port");
            };
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("peer {item:?}: id is not a number"))?;
            let addr = addr.trim();
            if id == 0 {
                bail!("peer {item:?}: id 0 is not a valid node id");
            }
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                bail!("peer {item:?}: address is not host:port");
            }
            if peers.insert(id, addr.to_string()).is_some() {
                bail!("peer id {id} appears twice");
            }
        }
        Ok(PeerBook { peers })
    }

    /// Loads the book kept in `path`; a missing file is an empty book.
    ///
    /// # Errors
    /// When the file cannot be read or does not parse.
    pub fn load(path: &Path) -> anyhow::Result<PeerBook> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PeerBook::default()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        if meta.len() > MAX_FILE {
            bail!(
                "{} is {} bytes, larger than a peers file can be",
                path.display(),
                meta.len()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        PeerBook::parse(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Writes the book to `path` crash-durably.
    ///
    /// # Errors
    /// When the durable replace fails.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text: String = self
            .peers
            .iter()
            .map(|(id, addr)| format!("{id}={addr}\n"))
            .collect();
        durable_replace(path, text.as_bytes(), 0o600)
            .with_context(|| format!("write {}", path.display()))
    }

    /// The file a node keeps its book in.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("peers")
    }

    /// Adds every peer of `other`, its addresses winning.
    pub fn merge(&mut self, other: &PeerBook) {
        for (id, addr) in &other.peers {
            self.peers.insert(*id, addr.clone());
        }
    }

    /// Sets or removes one peer.
    pub fn set(&mut self, id: u64, addr: Option<String>) {
        match addr {
            Some(a) => self.peers.insert(id, a),
            None => self.peers.remove(&id),
        };
    }

    /// The address of `id`.
    pub fn get(&self, id: u64) -> Option<&str> {
        self.peers.get(&id).map(String::as_str)
    }

    /// Every (id, address).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.peers.iter().map(|(id, a)| (*id, a.as_str()))
    }

    /// The ids.
    pub fn ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let book = PeerBook::parse("1=127.0.0.1:7001, 2=localhost:7002").expect("parse");
        assert_eq!(book.get(1), Some("127.0.0.1:7001"));
        assert_eq!(book.get(2), Some("localhost:7002"));
        assert_eq!(book.ids(), vec![1, 2]);
        for bad in [
            "1",
            "x=a:1",
            "0=a:1",
            "1=a",
            "1=a:99999",
            "1=a:1,1=b:2",
            "1=:80",
        ] {
            assert!(PeerBook::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = PeerBook::path_in(dir.path());
        assert!(PeerBook::load(&path).expect("missing is empty").is_empty());
        let mut book = PeerBook::parse("1=h:1,3=h:3").expect("parse");
        book.set(4, Some("h:4".into()));
        book.set(3, None);
        book.save(&path).expect("save");
        assert_eq!(PeerBook::load(&path).expect("load"), book);
        std::fs::write(&path, "garbage").expect("write");
        assert!(PeerBook::load(&path).is_err());
    }
}
