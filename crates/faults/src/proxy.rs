//! A TCP proxy per directed Raft link, which a test cuts, delays or heals.
//!
//! sealkv's transport sends node *i*'s messages to node *j* over connections that
//! *i* dials to *j* (DESIGN.md §3; `crates/node/src/consensus/transport.rs`). Give
//! node *i* the address of the proxy for the link *i → j* in its `--peers` instead of
//! *j*'s own, and every message from *i* to *j* passes through that proxy, and only
//! those: cutting the link *i → j* leaves *j → i* alone (a one-way partition).
//!
//! * [`Mode::Pass`] forwards bytes as they come.
//! * [`Mode::Delay`] forwards every chunk that long after it arrived, in order.
//! * [`Mode::Cut`] closes the link's open connections at once, and holds every new
//!   one open without forwarding a byte, reading and discarding what the dialer
//!   sends: to the dialer the peer looks unreachable (its messages go nowhere, no
//!   connection error tells it so), as in a real partition. Healing closes those
//!   held connections, so the dialer redials and starts a clean stream; a stream
//!   never resumes in the middle of a frame.
//!
//! The proxies run on their own small tokio runtime; the methods of [`Network`] are
//! synchronous, for the tests' plain threads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What a link does with the bytes sent over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Forward each chunk this long after it arrived.
    Delay(Duration),
    /// Forward nothing; the peer looks unreachable.
    Cut,
}

/// A directed link: messages from node `.0` to node `.1`.
pub type LinkId = (u64, u64);

struct Link {
    listen: SocketAddr,
    mode: watch::Sender<Mode>,
}

/// The proxies of a cluster's links, and their runtime.
pub struct Network {
    runtime: tokio::runtime::Runtime,
    links: HashMap<LinkId, Link>,
    cuts: usize,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut links: Vec<_> = self
            .links
            .iter()
            .map(|(id, l)| (*id, l.listen, *l.mode.borrow()))
            .collect();
        links.sort_by_key(|(id, _, _)| *id);
        f.debug_struct("Network").field("links", &links).finish()
    }
}

impl Network {
    /// A network with one proxy per ordered pair of distinct nodes in `targets`
    /// (node id → the Raft address it listens on), every link passing.
    ///
    /// # Panics
    /// When the runtime cannot start or a proxy cannot bind a loopback port.
    pub fn new(targets: &[(u64, SocketAddr)]) -> Network {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("link-proxy")
            .enable_all()
            .build()
            .expect("start the proxy runtime");
        let mut links = HashMap::new();
        for &(from, _) in targets {
            for &(to, target) in targets {
                if from == to {
                    continue;
                }
                let listener = runtime
                    .block_on(TcpListener::bind("127.0.0.1:0"))
                    .expect("bind a proxy port");
                let listen = listener.local_addr().expect("proxy address");
                let (mode, watcher) = watch::channel(Mode::Pass);
                runtime.spawn(accept(listener, target, watcher));
                links.insert((from, to), Link { listen, mode });
            }
        }
        Network {
            runtime,
            links,
            cuts: 0,
        }
    }

    /// The `--peers` value for node `id`: its own Raft address for itself, and the
    /// proxy of the link `id → j` for every other node `j`.
    ///
    /// # Panics
    /// When `id` is not one of the nodes.
    pub fn peers_for(&self, id: u64, targets: &[(u64, SocketAddr)]) -> String {
        targets
            .iter()
            .map(|&(j, addr)| {
                if j == id {
                    format!("{j}={addr}")
                } else {
                    format!("{j}={}", self.link(id, j).listen)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn link(&self, from: u64, to: u64) -> &Link {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link {from} -> {to}"))
    }

    /// Sets the mode of the link `from → to`.
    pub fn set(&mut self, from: u64, to: u64, mode: Mode) {
        let link = self.link(from, to);
        let was = *link.mode.borrow();
        link.mode.send_replace(mode);
        if mode == Mode::Cut && was != Mode::Cut {
            self.cuts += 1;
        }
    }

    /// Cuts the link `from → to` only: `to → from` keeps working.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.set(from, to, Mode::Cut);
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        for &i in a {
            for &j in b {
                self.set(i, j, Mode::Cut);
                self.set(j, i, Mode::Cut);
            }
        }
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.nodes().into_iter().filter(|&n| n != id).collect();
        self.partition(&[id], &others);
    }

    /// Delays every link by `by`.
    pub fn delay_all(&mut self, by: Duration) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for (from, to) in ids {
            self.set(from, to, Mode::Delay(by));
        }
    }

    /// Every link back to [`Mode::Pass`].
    pub fn heal(&mut self) {
        for link in self.links.values() {
            link.mode.send_replace(Mode::Pass);
        }
    }

    /// The links not passing, with their modes.
    pub fn faults(&self) -> Vec<(LinkId, Mode)> {
        let mut out: Vec<_> = self
            .links
            .iter()
            .map(|(id, l)| (*id, *l.mode.borrow()))
            .filter(|(_, m)| *m != Mode::Pass)
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// How many times a link went from open to cut.
    pub fn cuts(&self) -> usize {
        self.cuts
    }

    /// The node ids this network links.
    pub fn nodes(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.links.keys().map(|(from, _)| *from).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Opens a connection through the link `from → to` and returns it, for a test of
    /// the proxy itself.
    ///
    /// # Errors
    /// When the proxy cannot be reached.
    pub fn dial(&self, from: u64, to: u64) -> std::io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect(self.link(from, to).listen)
    }

    /// Runs `f` on the proxy runtime (for tests of the proxy itself).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, target, mode.clone()));
    }
}

/// One connection through a link, until either side closes it or the link is cut.
async fn serve(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Cut {
        hold(client, mode).await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, mode.clone()) => {}
        () = pump(server_read, client_write, mode.clone()) => {}
        () = until(&mut mode, |m| m == Mode::Cut) => {}
    }
    // Dropping both halves of both streams closes the connection on both sides.
}

/// A connection made while the link is cut: read and drop what arrives until the
/// link heals, then close it so the dialer starts over.
async fn hold(mut client: TcpStream, mut mode: watch::Receiver<Mode>) {
    let mut sink = vec![0u8; 64 * 1024];
    tokio::select! {
        () = async {
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        } => {}
        () = until(&mut mode, |m| m != Mode::Cut) => {}
    }
}

/// Waits until the link's mode satisfies `pred` (or the network is gone).
async fn until(mode: &mut watch::Receiver<Mode>, pred: impl Fn(Mode) -> bool) {
    loop {
        if pred(*mode.borrow_and_update()) {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies `from` to `to`, each chunk after the link's delay at the time it arrived.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mode: watch::Receiver<Mode>,
) {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let delay = match *mode.borrow() {
                Mode::Delay(d) => d,
                Mode::Pass | Mode::Cut => Duration::ZERO,
            };
            if queue
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
