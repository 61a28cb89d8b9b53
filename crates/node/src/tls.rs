//! TLS for the node's three ports and for the CLI (`--certs-dir`): the files of a
//! certs dir, the certificates `sealkv certs` makes (rcgen), the node id a
//! certificate names, and the rustls configurations a node and the CLI use.
//!
//! ## A certs dir
//!
//! | file | what | made by |
//! |------|------|---------|
//! | `ca.crt`, `ca.key` | the cluster's CA, self-signed; the key signs the others | `sealkv certs init` |
//! | `node-N.crt`, `node-N.key` | node N's certificate, for its three ports and as a client of its peers' | `sealkv certs node --id N` |
//! | `client-NAME.crt`, `client-NAME.key` | a client certificate, for the CLI and admin tools | `sealkv certs client --name NAME` |
//!
//! Keys are ECDSA P-256 (PKCS#8 PEM), written with mode 0600; a node and the CLI
//! refuse a key file that its group or others may read. `sealkv certs` never
//! overwrites a file. The CA is valid for 10 years, the other certificates for 2.
//!
//! ## Identity
//!
//! A node certificate binds its node id in one DNS subject alternative name,
//! `node-N.sealkv.invalid` ([`node_name`]): `.invalid` is reserved (RFC 2606) and
//! never resolves, so no real host name can be mistaken for it, and `sealkv certs`
//! refuses a `--hosts` entry under `sealkv.invalid`. Its other names are the
//! `--hosts` (DNS names or IP addresses) clients connect to. A node certificate has
//! both the TLS server and client extended key usages; a client certificate has the
//! client usage only and no node name, so it cannot serve a port nor speak for a
//! node on a Raft port.
//!
//! - A dialing node verifies the listener's chain to `ca.crt` and that it names
//!   the node it dials (`node-N.sealkv.invalid` as the server name).
//! - A listening node requires a client certificate that chains to `ca.crt`, reads
//!   the id it names ([`node_id_of`]) and hands it to `Transport::identify`, which
//!   refuses a hello that claims another id.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The CA certificate's file name in a certs dir.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name in a certs dir.
pub const CA_KEY: &str = "ca.key";
/// The domain under which node names live: `node-N.` + this.
pub const NODE_DOMAIN: &str = "sealkv.invalid";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// How long a TLS handshake may take on any port.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The DNS name that binds node `id` in a certificate: `node-N.sealkv.invalid`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.{NODE_DOMAIN}")
}

/// The node id `name` binds, if it is a node name.
fn parse_node_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix("node-")?
        .strip_suffix(NODE_DOMAIN)?
        .strip_suffix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The node id a certificate names: its one `node-N.sealkv.invalid` name. `None`
/// when it has none (a client certificate), more than one, or does not parse.
/// Call it only on a certificate whose chain was verified.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = cert.valid_dns_names().filter_map(parse_node_name);
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

/// Node `id`'s certificate file in `dir`.
pub fn node_cert_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.crt"))
}

/// Node `id`'s key file in `dir`.
pub fn node_key_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.key"))
}

/// Client `name`'s certificate file in `dir`.
pub fn client_cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}.crt"))
}

/// Client `name`'s key file in `dir`.
pub fn client_key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}.key"))
}

// ---------------------------------------------------------------------------------
// Making certificates (`sealkv certs`).

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = std::time::SystemTime::now();
    params.not_before = time::OffsetDateTime::from(now - BACKDATE);
    params.not_after = time::OffsetDateTime::from(now + length);
}

/// The CA's parameters. `init` self-signs them; `node` and `client` rebuild them to
/// name the CA as issuer (the same name, and the key identifier of the same key).
/// The CA's name is `sealkv CA` and a fingerprint of its key, so two clusters' CAs
/// have different names and a certificate of one is refused by the other as from
/// an unknown issuer.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_raw());
    let fingerprint: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("sealkv CA {fingerprint}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Refuses before anything is written if any of `paths` exists.
fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            bail!(
                "{} exists: sealkv certs never overwrites a file (remove it first to replace it)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a new file with `mode`; fails if it exists.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

fn write_pair(cert: &Path, key: &Path, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    // The key first: a certificate without its key is useless, a key alone is
    // harmless and is refused on the next try like any existing file.
    write_new(key, key_pem.as_bytes(), 0o600)?;
    write_new(cert, cert_pem.as_bytes(), 0o644)
}

/// `sealkv certs init`: a new CA in `dir` (created when missing), `ca.crt` and
/// `ca.key` (mode 0600). Refuses if either exists.
///
/// # Errors
/// An existing file, or a failure to generate or write.
pub fn init_ca(dir: &Path) -> anyhow::Result<()> {
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    refuse_existing(&[&cert, &key])?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let pair = KeyPair::generate().context("generate the CA key")?;
    let mut params = ca_params(&pair);
    validity(&mut params, CA_VALIDITY);
    let ca = params
        .self_signed(&pair)
        .context("sign the CA certificate")?;
    write_pair(&cert, &key, &ca.pem(), &pair.serialize_pem())
}

/// The CA of `dir`, to sign with.
fn load_issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let path = dir.join(CA_KEY);
    if !path.exists() {
        bail!(
            "{} does not exist: run `sealkv certs init` first",
            path.display()
        );
    }
    check_key_mode(&path)?;
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?,
    );
    let pair = KeyPair::from_pem(&pem).with_context(|| format!("parse {}", path.display()))?;
    Ok(Issuer::new(ca_params(&pair), pair))
}

fn leaf(
    dir: &Path,
    cert: &Path,
    key: &Path,
    mut params: CertificateParams,
    common_name: &str,
) -> anyhow::Result<()> {
    refuse_existing(&[cert, key])?;
    let issuer = load_issuer(dir)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_VALIDITY);
    let pair = KeyPair::generate().context("generate a key")?;
    let signed = params
        .signed_by(&pair, &issuer)
        .context("sign the certificate")?;
    write_pair(cert, key, &signed.pem(), &pair.serialize_pem())
}

/// `sealkv certs node`: node `id`'s certificate and key in `dir`, signed by its CA,
/// naming `node-N.sealkv.invalid` and every one of `hosts` (DNS names or IP
/// addresses). Refuses if either file exists.
///
/// # Errors
/// Id 0, a host under `sealkv.invalid` or not a valid name, an existing file, no
/// CA, or a failure to generate or write.
pub fn make_node(dir: &Path, id: u64, hosts: &[String]) -> anyhow::Result<()> {
    if id == 0 {
        bail!("--id 0 is not a valid node id");
    }
    let mut names = vec![node_name(id)];
    for host in hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        if host.ends_with(NODE_DOMAIN) {
            bail!("--hosts {host}: names under {NODE_DOMAIN} are reserved for node ids");
        }
        names.push(host.to_string());
    }
    let mut params = CertificateParams::new(names).context("--hosts: not a valid host name")?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf(
        dir,
        &node_cert_path(dir, id),
        &node_key_path(dir, id),
        params,
        &format!("sealkv node {id}"),
    )
}

/// `sealkv certs client`: client `name`'s certificate and key in `dir`, signed by
/// its CA, for TLS clients only (no node name). Refuses if either file exists.
///
/// # Errors
/// A name that is empty or has characters other than ASCII letters, digits, `-` and
/// `_`, an existing file, no CA, or a failure to generate or write.
pub fn make_client(dir: &Path, name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("--name {name:?}: use ASCII letters, digits, '-' and '_'");
    }
    let mut params = CertificateParams::default();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(
        dir,
        &client_cert_path(dir, name),
        &client_key_path(dir, name),
        params,
        &format!("sealkv client {name}"),
    )
}

// ---------------------------------------------------------------------------------
// Loading them (`sealkv start --certs-dir`, the CLI's `--certs-dir`).

/// The one crypto provider: aws-lc-rs, the crate the encryption already uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A private key file must be readable by its owner only.
fn check_key_mode(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} may be read by its group or others: chmod 600 it",
            path.display()
        );
    }
    Ok(())
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("read certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    check_key_mode(path)?;
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("read the key {}", path.display()))
}

fn load_roots(dir: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let path = dir.join(CA_CERT);
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&path)? {
        roots
            .add(cert)
            .with_context(|| format!("use {} as a CA", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// What a client certificate means to a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// Required: a connection without one from the CA is refused.
    Required,
    /// Optional, but one that is presented must be from the CA.
    Optional,
}

fn server_config(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider());
    let verifier = match auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .context("build the client-certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choose TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .context("use the node's certificate and key")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn client_config(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choose TLS versions")?
        .with_root_certificates(Arc::clone(roots))
        .with_client_auth_cert(chain.to_vec(), key.clone_key())
        .context("use the certificate and key as a TLS client")
}

/// The TLS a node runs with `--certs-dir`: its certificate for its three ports and
/// as a client of its peers' Raft and admin ports, all chained to the dir's CA.
#[derive(Clone)]
pub struct NodeTls {
    /// The Raft port: a peer's node certificate required.
    pub raft_acceptor: TlsAcceptor,
    /// Dialing a peer's Raft port, as this node.
    pub raft_connector: TlsConnector,
    /// The Redis port: a client certificate optional.
    pub redis_server: Arc<rustls::ServerConfig>,
    /// The admin port: a client certificate required.
    pub admin_acceptor: TlsAcceptor,
    /// Calling another node's admin endpoint (forwarded operations), as this node.
    pub admin_client: ureq::tls::TlsConfig,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads node `id`'s TLS from `dir`: `ca.crt`, `node-N.crt` and `node-N.key`.
    /// The certificate must name node `id`.
    ///
    /// # Errors
    /// A missing or unreadable file, a key its group or others may read, or a
    /// certificate that does not name node `id`.
    pub fn load(dir: &Path, id: u64) -> anyhow::Result<NodeTls> {
        let roots = load_roots(dir)?;
        let cert_path = node_cert_path(dir, id);
        let chain = load_certs(&cert_path)
            .with_context(|| format!("(make it with `sealkv certs node --id {id}`)"))?;
        let key = load_key(&node_key_path(dir, id))?;
        match chain.first().and_then(node_id_of) {
            Some(named) if named == id => {}
            named => bail!(
                "{} names node {named:?}, not node {id}",
                cert_path.display()
            ),
        }
        let raft_client = client_config(&roots, &chain, &key)?;
        Ok(NodeTls {
            raft_acceptor: TlsAcceptor::from(server_config(
                &roots,
                &chain,
                &key,
                ClientAuth::Required,
                &[],
            )?),
            raft_connector: TlsConnector::from(Arc::new(raft_client)),
            redis_server: server_config(&roots, &chain, &key, ClientAuth::Optional, &[])?,
            admin_acceptor: TlsAcceptor::from(server_config(
                &roots,
                &chain,
                &key,
                ClientAuth::Required,
                &[b"http/1.1"],
            )?),
            admin_client: ureq_tls(dir, &chain, &node_key_path(dir, id))?,
        })
    }
}

/// The TLS of an admin client: `dir`'s CA as the only root, and `chain` and the key
/// in the file `key` as its client certificate.
fn ureq_tls(
    dir: &Path,
    chain: &[CertificateDer<'static>],
    key: &Path,
) -> anyhow::Result<ureq::tls::TlsConfig> {
    let roots = load_certs(&dir.join(CA_CERT))?;
    let roots: Vec<_> = roots
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let chain: Vec<_> = chain
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    // ureq reads the key from PEM (it names the key's kind from the PEM label).
    check_key_mode(key)?;
    let pem = zeroize::Zeroizing::new(
        std::fs::read(key).with_context(|| format!("read the key {}", key.display()))?,
    );
    let key = ureq::tls::PrivateKey::from_pem(&pem)
        .with_context(|| format!("read the key {}", key.display()))?;
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider())
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)))
        .build())
}

/// The CLI's TLS for `--certs-dir DIR`: `ca.crt`, and the client certificate
/// `client-NAME.crt` (`--cert-name`, default `admin`).
///
/// # Errors
/// A missing or unreadable file, or a key its group or others may read.
pub fn cli_tls(dir: &Path, name: &str) -> anyhow::Result<ureq::tls::TlsConfig> {
    let chain = load_certs(&client_cert_path(dir, name))
        .with_context(|| format!("(make it with `sealkv certs client --name {name}`)"))?;
    ureq_tls(dir, &chain, &client_key_path(dir, name))
}

// ---------------------------------------------------------------------------------
// Serving.

/// A TLS listener for the admin endpoint (axum): accepts TCP connections, runs
/// each handshake in its own task (a slow client holds up no other), and hands
/// over those that complete. A failed handshake is logged at debug level, a
/// refused client certificate at warn.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accepting: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    /// Serves TLS with `acceptor` on `listener`; `what` names the port in logs.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        what: &'static str,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("accept a {what} connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(tls) = handshake(&acceptor, stream, remote, what).await {
                        let _ = tx.send((tls, remote)).await;
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            _accepting: AbortOnDrop(accepting),
        })
    }
}

/// Runs a server handshake within [`HANDSHAKE_TIMEOUT`]; `None` (logged) when it
/// fails.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    what: &str,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            if is_certificate_refusal(&e) {
                tracing::warn!(%remote, "refused a connection to the {what} port: {e}");
            } else {
                tracing::debug!(%remote, "TLS handshake on the {what} port failed: {e}");
            }
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake on the {what} port timed out");
            None
        }
    }
}

/// Whether a handshake failed on the peer's certificate (another CA, none where one
/// is required), as opposed to a client that does not speak TLS.
pub fn is_certificate_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_only_as_made() {
        for (name, id) in [
            ("node-1.sealkv.invalid", Some(1)),
            ("node-18446744073709551615.sealkv.invalid", Some(u64::MAX)),
            ("node-0.sealkv.invalid", None),
            ("node-01.sealkv.invalid", None),
            ("node-.sealkv.invalid", None),
            ("node-1x.sealkv.invalid", None),
            ("node-1sealkv.invalid", None),
            ("node-18446744073709551616.sealkv.invalid", None),
            ("node-1.sealkv.invalid.example", None),
            ("xnode-1.sealkv.invalid", None),
            ("a.node-1.sealkv.invalid", None),
            ("localhost", None),
        ] {
            assert_eq!(parse_node_name(name), id, "{name}");
        }
        assert_eq!(parse_node_name(&node_name(42)), Some(42));
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn certs_are_made_once_with_private_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("certs");
        assert!(make_node(&d, 1, &[]).is_err(), "no CA yet");
        init_ca(&d).expect("init");
        assert_eq!(mode(&d.join(CA_KEY)), 0o600);
        let again = init_ca(&d).expect_err("a second init");
        assert!(again.to_string().contains("never overwrites"), "{again}");

        make_node(&d, 2, &["localhost".into(), "127.0.0.1".into()]).expect("node");
        assert_eq!(mode(&node_key_path(&d, 2)), 0o600);
        assert!(make_node(&d, 2, &[]).is_err(), "node 2 again");
        assert!(make_node(&d, 0, &[]).is_err(), "id 0");
        let reserved = make_node(&d, 3, &["node-4.sealkv.invalid".into()]).expect_err("reserved");
        assert!(reserved.to_string().contains("reserved"), "{reserved}");
        assert!(!node_cert_path(&d, 3).exists());

        make_client(&d, "admin").expect("client");
        assert_eq!(mode(&client_key_path(&d, "admin")), 0o600);
        assert!(make_client(&d, "../x").is_err());

        let node = load_certs(&node_cert_path(&d, 2)).expect("node cert");
        assert_eq!(node_id_of(&node[0]), Some(2));
        let client = load_certs(&client_cert_path(&d, "admin")).expect("client cert");
        assert_eq!(node_id_of(&client[0]), None);

        let tls = NodeTls::load(&d, 2).expect("load node 2");
        drop(tls);
        assert!(NodeTls::load(&d, 5).is_err(), "no certificate for node 5");
        cli_tls(&d, "admin").expect("cli tls");

        std::fs::set_permissions(node_key_path(&d, 2), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let open = NodeTls::load(&d, 2).expect_err("a readable key");
        assert!(format!("{open:#}").contains("chmod 600"), "{open:#}");
    }

    /// A full handshake over TCP: node 2 dials node 1 and each learns who the
    /// other is; a node of another CA is refused.
    #[tokio::test]
    async fn peers_verify_each_other_and_refuse_another_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            init_ca(d).expect("init");
            make_node(d, 1, &[]).expect("node 1");
            make_node(d, 2, &[]).expect("node 2");
        }
        let one = NodeTls::load(&a, 1).expect("node 1");
        let two = NodeTls::load(&a, 2).expect("node 2");
        let stranger = NodeTls::load(&b, 2).expect("stranger");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = one.raft_acceptor.clone();
        let server = tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.expect("accept");
                // The stranger refuses this node's certificate first: the
                // listener hears its alert.
                let id = acceptor.accept(stream).await.ok().and_then(|tls| {
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(node_id_of)
                });
                ids.push(id);
            }
            ids
        });
        let name = rustls::pki_types::ServerName::try_from(node_name(1)).expect("name");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut tls = two
            .raft_connector
            .connect(name.clone(), stream)
            .await
            .expect("node 2 → node 1");
        tokio::io::AsyncWriteExt::shutdown(&mut tls)
            .await
            .expect("close");

        let stream = TcpStream::connect(addr).await.expect("connect");
        // The stranger refuses node 1's certificate (another CA) itself.
        assert!(
            stranger
                .raft_connector
                .connect(name.clone(), stream)
                .await
                .is_err()
        );
        assert_eq!(server.await.expect("server"), vec![Some(2), None]);

        // Dialing node 1 as if it were node 3: node 1's certificate names node 1.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = one.raft_acceptor.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = acceptor.accept(stream).await;
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let wrong = rustls::pki_types::ServerName::try_from(node_name(3)).expect("name");
        assert!(two.raft_connector.connect(wrong, stream).await.is_err());
    }
}
