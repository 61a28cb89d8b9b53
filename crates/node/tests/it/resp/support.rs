//! The test harness for the RESP server: a [`Backend`] over a real `KvFsm` on
//! RocksDB, a server running on its own thread, a fake clock, and a raw TCP client
//! that decodes replies with redis-protocol.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use redis_protocol::resp3::types::OwnedFrame as Resp3Frame;
use sealkv_kv::{Command, Entry, KvFsm, KvRequest, Outcome, Reply};
use sealkv_node::resp::{
    ApiError, Backend, Clock, Config, InfoSnapshot, Limits, Password, RaftRole, ReadConsistency,
    ValueRead,
};
use sealkv_store::mvcc::EncryptionState;
use sealkv_store::{KvStore, RocksStore, RocksStoreOptions};
use zeroize::Zeroizing;

/// The fake clock's start: 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

/// How long any test waits for a reply before failing instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How the backend behaves, set by a test between commands.
#[derive(Debug, Clone, Default)]
pub struct Mode {
    /// Every write, read and dbsize fails with this.
    pub fail: Option<ApiError>,
    /// Linearizable reads fail with `NotLeader` (stale reads still work), as on a
    /// follower.
    pub follower: bool,
    /// Every call sleeps this long first.
    pub delay: Option<Duration>,
}

struct State {
    fsm: KvFsm,
    /// Every key ever put, so `dbsize` can count the live ones.
    keys: BTreeSet<Vec<u8>>,
}

/// A [`Backend`] that applies each write as the next entry of a real `KvFsm` over
/// RocksDB (without fsync, to keep a thousand writes fast), judging expiry with the
/// same fake clock the server uses.
pub struct FsmBackend {
    state: Arc<Mutex<State>>,
    mode: Mutex<Mode>,
    clock: Arc<AtomicU64>,
    /// The consistency of every read and dbsize, in order.
    pub seen: Mutex<Vec<ReadConsistency>>,
    _dir: tempfile::TempDir,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FsmBackend {
    pub fn new(clock: Arc<AtomicU64>) -> FsmBackend {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = RocksStoreOptions {
            sync_writes: false,
            ..RocksStoreOptions::default()
        };
        let store: Arc<dyn KvStore> =
            Arc::new(RocksStore::open(dir.path(), options).expect("open store"));
        let fsm = KvFsm::new(store).expect("fsm");
        FsmBackend {
            state: Arc::new(Mutex::new(State {
                fsm,
                keys: BTreeSet::new(),
            })),
            mode: Mutex::new(Mode::default()),
            clock,
            seen: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    /// The expiry the state machine holds for `key` (0 for none), or `None`.
    pub fn stored_expiry(&self, key: &[u8]) -> Option<u64> {
        let state = lock(&self.state);
        let version = state.fsm.store().get_at(key, u64::MAX).expect("read")?;
        (!version.value.header.tombstone).then_some(version.value.header.expire_at_ms)
    }

    /// The fail/delay part of the mode, applied before every call.
    async fn gate(&self) -> Result<Mode, ApiError> {
        let mode = lock(&self.mode).clone();
        if let Some(delay) = mode.delay {
            tokio::time::sleep(delay).await;
        }
        match &mode.fail {
            Some(e) => Err(e.clone()),
            None => Ok(mode),
        }
    }

    fn check_read(&self, mode: &Mode, consistency: ReadConsistency) -> Result<(), ApiError> {
        lock(&self.seen).push(consistency);
        if mode.follower && consistency == ReadConsistency::Linearizable {
            return Err(ApiError::NotLeader {
                leader: Some("127.0.0.1:7001".into()),
            });
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
}

fn live(state: &State, key: &[u8], now: u64) -> Result<Option<ValueRead>, ApiError> {
    let version = state
        .fsm
        .store()
        .get_at(key, u64::MAX)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(version) = version else {
        return Ok(None);
    };
    let header = version.value.header;
    if header.tombstone || header.is_expired_at(now) {
        return Ok(None);
    }
    if header.encryption == EncryptionState::Encrypted {
        return Err(ApiError::Integrity("no storage key loaded".into()));
    }
    Ok(Some(ValueRead {
        value: version.value.body,
        expire_at_ms: header.expire_at_ms,
    }))
}

impl Backend for FsmBackend {
    async fn write(&self, request: KvRequest) -> Result<Vec<Reply>, ApiError> {
        self.gate().await?;
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || {
            let data = request
                .to_entry()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut state = lock(&state);
            let index = state.fsm.applied_index() + 1;
            let outcomes = state
                .fsm
                .apply(&[Entry { index, data: &data }])
                .map_err(|h| ApiError::Halted(h.to_string()))?;
            for command in &request.commands {
                if let Command::Put { key, .. } = command {
                    state.keys.insert(key.clone());
                }
            }
            match outcomes.into_iter().next().map(|o| o.outcome) {
                Some(Outcome::Kv(replies)) => Ok(replies),
                other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    async fn read(
        &self,
        keys: Vec<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> Result<Vec<Option<ValueRead>>, ApiError> {
        let mode = self.gate().await?;
        self.check_read(&mode, consistency)?;
        let now = self.now();
        let state = lock(&self.state);
        keys.iter().map(|k| live(&state, k, now)).collect()
    }

    async fn dbsize(&self, consistency: ReadConsistency) -> Result<u64, ApiError> {
        let mode = self.gate().await?;
        self.check_read(&mode, consistency)?;
        let now = self.now();
        let state = lock(&self.state);
        let mut count = 0;
        for key in &state.keys {
            if live(&state, key, now)?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }

    async fn info(&self) -> InfoSnapshot {
        let follower = lock(&self.mode).follower;
        let applied_index = lock(&self.state).fsm.applied_index();
        InfoSnapshot {
            node_id: 7,
            role: if follower {
                RaftRole::Follower
            } else {
                RaftRole::Leader
            },
            leader_id: Some(if follower { 1 } else { 7 }),
            leader_addr: follower.then(|| "127.0.0.1:7001".to_string()),
            term: 3,
            commit_index: applied_index,
            applied_index,
            halted: None,
        }
    }
}

/// A RESP server on 127.0.0.1:0, running on its own thread and runtime so tests
/// can use blocking clients. Dropping it shuts the server down and waits for it.
pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<FsmBackend>,
    clock: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(|_| {})
    }

    /// Starts a server whose config `tune` may adjust (the clock is always the
    /// fake one).
    pub fn start_with(tune: impl FnOnce(&mut Config)) -> Server {
        let clock = Arc::new(AtomicU64::new(T0));
        let backend = Arc::new(FsmBackend::new(Arc::clone(&clock)));
        let mut config = Config::default();
        tune(&mut config);
        let ticks = Arc::clone(&clock);
        config.clock = Clock::from_fn(move || ticks.load(Ordering::SeqCst));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, addr) = std::sync::mpsc::channel();
        let served = Arc::clone(&backend);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                ready.send(listener.local_addr()?).expect("test is waiting");
                let shutdown = async move {
                    let _ = stopped.await;
                };
                sealkv_node::resp::serve_with(listener, served, config, shutdown).await
            })
        });
        let addr = addr.recv_timeout(PATIENCE).expect("server started");
        Server {
            addr,
            backend,
            clock,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A server whose `default` user has `password`, and the counter of its failed
    /// authentications.
    pub fn with_password(password: &str) -> (Server, prometheus::IntCounter) {
        let failures = prometheus::IntCounter::new("auth_failures", "failed authentications")
            .expect("counter");
        let counted = failures.clone();
        let server = Server::start_with(|config| {
            let password = Password::new(Zeroizing::new(password.as_bytes().to_vec()));
            config.password = Some(Arc::new(password.expect("a non-empty password")));
            config.auth_failures = Some(counted);
        });
        (server, failures)
    }

    /// Moves the fake clock forward.
    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    /// A redis-rs connection.
    pub fn redis(&self) -> redis::Connection {
        self.redis_url("", "").expect("connect")
    }

    /// A redis-rs connection with `credentials` (`user:password@` or
    /// `:password@`, or empty) and `query` (`?protocol=resp3`, or empty) in its URL.
    pub fn redis_url(
        &self,
        credentials: &str,
        query: &str,
    ) -> redis::RedisResult<redis::Connection> {
        let url = format!("redis://{credentials}{}/{query}", self.addr);
        let client = redis::Client::open(url)?;
        let con = client.get_connection_with_timeout(PATIENCE)?;
        con.set_read_timeout(Some(PATIENCE))?;
        Ok(con)
    }

    /// A raw TCP connection.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    /// Shuts the server down and returns what `serve_with` returned.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The limits small enough to test by sending a few bytes.
pub fn small_limits() -> Limits {
    Limits {
        max_bulk_len: 64,
        max_args: 8,
        max_command_len: 256,
    }
}

/// A blocking TCP client that writes raw bytes and decodes replies with
/// redis-protocol.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one command and returns its reply.
    pub fn call(&mut self, args: &[&str]) -> OwnedFrame {
        self.send(args);
        self.reply().expect("a reply")
    }

    /// Sends one command.
    pub fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_bytes(&encode(&args));
    }

    /// Sends one command on a connection that speaks RESP3 and returns its reply.
    pub fn call3(&mut self, args: &[&str]) -> Resp3Frame {
        self.send(args);
        let bytes = self.reply_bytes(3);
        let (frame, _) = redis_protocol::resp3::decode::complete::decode(&bytes)
            .expect("valid RESP3")
            .expect("a whole reply");
        frame
    }

    /// Sends one command and returns the bytes of its reply, read as RESP
    /// `version` (2 or 3), so a test can check the exact wire form.
    pub fn call_bytes(&mut self, version: u8, args: &[&str]) -> String {
        self.send(args);
        String::from_utf8_lossy(&self.reply_bytes(version)).into_owned()
    }

    /// The bytes of the next reply, framed as RESP `version`.
    fn reply_bytes(&mut self, version: u8) -> Vec<u8> {
        loop {
            let used = if version == 3 {
                redis_protocol::resp3::decode::complete::decode(&self.buf)
                    .expect("server sent valid RESP3")
                    .map(|(_, used)| used)
            } else {
                redis_protocol::resp2::decode::decode(&self.buf)
                    .expect("server sent valid RESP2")
                    .map(|(_, used)| used)
            };
            if let Some(used) = used {
                return self.buf.drain(..used).collect();
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).expect("read a reply in time");
            assert!(
                n > 0,
                "connection closed before a whole reply: {:?}",
                self.buf
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next reply, or `None` when the server closed the connection first.
    pub fn reply(&mut self) -> Option<OwnedFrame> {
        loop {
            if let Some((frame, used)) =
                redis_protocol::resp2::decode::decode(&self.buf).expect("server sent valid RESP")
            {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).expect("read a reply in time");
            if n == 0 {
                assert!(self.buf.is_empty(), "partial reply {:?}", self.buf);
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server has closed the connection (reads end), after any replies
    /// already sent. A reset also counts: the server is gone either way.
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// An error frame's text.
pub fn error_text(frame: &OwnedFrame) -> &str {
    match frame {
        OwnedFrame::Error(text) => text,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A redis-rs server error as the line the server sent (`CODE detail`).
pub fn redis_error(e: &redis::RedisError) -> String {
    format!(
        "{} {}",
        e.code().unwrap_or("<no code>"),
        e.detail().unwrap_or("<no detail>")
    )
}
