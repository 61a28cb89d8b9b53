//! TLS through real processes (`--certs-dir`, DESIGN.md §11 "Trust"): `sealkv certs`,
//! then a three-node cluster with certificates that replicates, serves redis-cli
//! `--tls` and redis-py `ssl=True`, and refuses a plain-TCP hello, a peer of
//! another CA, a certificate of node 2 claiming node 3, and admin requests without
//! a client certificate, without crashing.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

fn certs(args: &[&str], dir: &Path) -> (bool, String, String) {
    run(sealkv().arg("certs").args(args).arg("--certs-dir").arg(dir))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// A CA, nodes 1..=n and the client `admin` in `dir`.
fn make_certs(dir: &Path, n: u64) {
    let (ok, out, err) = certs(&["init"], dir);
    assert!(ok, "{out}{err}");
    for id in 1..=n {
        let (ok, out, err) = certs(&["node", "--id", &id.to_string()], dir);
        assert!(ok, "{out}{err}");
    }
    let (ok, out, err) = certs(&["client", "--name", "admin"], dir);
    assert!(ok, "{out}{err}");
}

#[test]
fn certs_cli_makes_each_file_once_with_private_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("certs");
    let (ok, _, err) = certs(&["node", "--id", "1"], &dir);
    assert!(!ok && err.contains("certs init"), "{err}");
    make_certs(&dir, 1);
    for key in ["ca.key", "node-1.key", "client-admin.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
    for again in [
        &["init"][..],
        &["node", "--id", "1"][..],
        &["client", "--name", "admin"][..],
    ] {
        let (ok, _, err) = certs(again, &dir);
        assert!(!ok && err.contains("never overwrites"), "{again:?}: {err}");
    }
    assert_eq!(std::fs::read(dir.join("ca.crt")).expect("ca.crt"), ca);
    let (ok, _, err) = certs(
        &["node", "--id", "2", "--hosts", "node-3.sealkv.invalid"],
        &dir,
    );
    assert!(!ok && err.contains("reserved"), "{err}");
    // Private keys are never printed.
    let (ok, out, err) = certs(
        &["node", "--id", "4", "--hosts", "db.example,10.0.0.4"],
        &dir,
    );
    assert!(ok, "{err}");
    assert!(
        !out.contains("PRIVATE") && !err.contains("PRIVATE"),
        "{out}{err}"
    );
}

/// A started node refuses a certificate that names another node, and a readable key.
#[test]
fn start_refuses_a_certificate_of_another_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("certs");
    make_certs(&dir, 2);
    std::fs::copy(dir.join("node-2.crt"), dir.join("node-3.crt")).expect("copy");
    std::fs::copy(dir.join("node-2.key"), dir.join("node-3.key")).expect("copy");
    let mut node = Node::new(
        tmp.path(),
        3,
        &["--certs-dir", dir.to_str().expect("utf-8")],
    );
    node.spawn("");
    let status = eventually("node 3 to refuse", LONG, || node.exited());
    let log = node.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("names node Some(2), not node 3"), "{log}");
}

/// HTTPS to `admin` with `tls` (the CLI's client of a certs dir): (code, body).
fn https(
    tls: Option<ureq::tls::TlsConfig>,
    admin: &str,
    path: &str,
) -> Result<(u16, String), ureq::Error> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)));
    if let Some(tls) = tls {
        config = config.tls_config(tls);
    }
    let agent: ureq::Agent = config.build().into();
    let mut response = agent.get(format!("https://{admin}{path}")).call()?;
    let code = response.status().as_u16();
    Ok((code, response.body_mut().read_to_string()?))
}

struct TlsCluster {
    tmp: tempfile::TempDir,
    certs: std::path::PathBuf,
    nodes: Vec<Node>,
    client: ureq::tls::TlsConfig,
}

impl TlsCluster {
    fn start(n: u64) -> TlsCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let certs = tmp.path().join("certs");
        make_certs(&certs, n);
        let flags = ["--certs-dir", certs.to_str().expect("utf-8")];
        let mut nodes: Vec<Node> = (1..=n)
            .map(|id| Node::new(tmp.path(), id, &flags))
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.raft))
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut nodes {
            node.spawn(&peers);
        }
        let client = sealkv_node::tls::cli_tls(&certs, "admin").expect("client tls");
        let cluster = TlsCluster {
            tmp,
            certs,
            nodes,
            client,
        };
        eventually("a leader all nodes follow", LONG, || {
            let statuses: Vec<Value> = (0..cluster.nodes.len())
                .map(|i| cluster.status(i))
                .collect::<Option<_>>()?;
            let leader = statuses.iter().find(|s| s["role"] == "leader")?["id"].as_u64()?;
            statuses
                .iter()
                .all(|s| s["leader_id"].as_u64() == Some(leader))
                .then_some(())
        });
        cluster
    }

    fn status(&self, i: usize) -> Option<Value> {
        let (code, body) =
            https(Some(self.client.clone()), &self.nodes[i].admin, "/status").ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn closed(&self, i: usize, reason: &str) -> u64 {
        let series = format!("sealkv_peer_connections_closed_total{{reason=\"{reason}\"}}");
        https(Some(self.client.clone()), &self.nodes[i].admin, "/metrics")
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
            })
            .map_or(0, |v| v as u64)
    }

    fn redis_cli(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let (host, port) = self.nodes[i].redis.rsplit_once(':').expect("host:port");
        run(Command::new("redis-cli")
            .args(["-h", host, "-p", port, "--tls", "--cacert"])
            .arg(self.certs.join("ca.crt"))
            .args(args))
    }
}

/// A TLS client of a Raft port that trusts `ca_dir`'s CA and presents
/// `cert_dir`'s `node-N` certificate; it sends a hello claiming `claim` and
/// returns whether the node closed the connection (it never writes data).
fn tls_peer(raft: &str, ca_dir: &Path, cert_dir: &Path, cert_id: u64, claim: u64) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_dir.join("ca.crt")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert_dir.join(format!("node-{cert_id}.crt")))
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("certs");
    let key =
        PrivateKeyDer::from_pem_file(cert_dir.join(format!("node-{cert_id}.key"))).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    let name = ServerName::try_from("node-1.sealkv.invalid").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = std::net::TcpStream::connect(raft).expect("connect");
    tcp.set_read_timeout(Some(LONG)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut hello = b"SKVR\x05".to_vec();
    hello.extend(claim.to_be_bytes());
    hello.extend([0, 0, 0]);
    // The handshake ends on the client's side before the node checks its
    // certificate: a refusal shows as a failed read or write, or an end of stream.
    if tls.write_all(&hello).and_then(|()| tls.flush()).is_err() {
        return true;
    }
    let mut buf = [0u8; 16];
    match tls.read(&mut buf) {
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    }
}

#[test]
fn three_nodes_with_certificates_replicate_and_refuse_strangers() {
    let _serial = serial();
    let cluster = TlsCluster::start(3);

    // Writes replicate; redis-cli over TLS reads them on every node.
    eventually("SET over TLS", LONG, || {
        let (ok, out, _) = cluster.redis_cli(0, &["SET", "k", "v"]);
        (ok && out.trim() == "OK").then_some(())
    });
    for i in 0..3 {
        eventually(&format!("GET on node {}", i + 1), LONG, || {
            let (ok, out, _) = cluster.redis_cli(i, &["GET", "k"]);
            (ok && out.trim() == "v").then_some(())
        });
    }

    // redis-py with ssl=True and the CA, no client certificate.
    let (host, port) = cluster.nodes[1].redis.rsplit_once(':').expect("host:port");
    let script = "import sys, redis\n\
        r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), ssl=True, ssl_ca_certs=sys.argv[3])\n\
        r.set('py', 'tls')\n\
        print(r.get('py').decode())\n";
    let (ok, out, err) = run(Command::new(crate::clients::python())
        .args(["-c", script, host, port])
        .arg(cluster.certs.join("ca.crt")));
    assert!(ok && out.trim() == "tls", "redis-py: {out}{err}");

    // A plain-TCP hello to a TLS Raft port: closed, counted, the node serves on.
    let node1 = &cluster.nodes[0];
    let before = cluster.closed(0, "tls_handshake");
    let mut plain = std::net::TcpStream::connect(&node1.raft).expect("connect");
    plain.set_read_timeout(Some(LONG)).expect("timeout");
    let mut hello = b"SKVR\x05".to_vec();
    hello.extend(2u64.to_be_bytes());
    hello.extend([0, 0, 0]);
    plain.write_all(&hello).expect("write hello");
    let mut buf = [0u8; 64];
    // The node answers with a TLS alert at most, then closes.
    while matches!(plain.read(&mut buf), Ok(n) if n > 0) {}
    eventually("tls_handshake counted", LONG, || {
        (cluster.closed(0, "tls_handshake") > before).then_some(())
    });

    // Node 2's certificate from another CA: refused by node 1.
    let other = cluster.certs.parent().expect("tmp").join("other");
    make_certs(&other, 2);
    let before = cluster.closed(0, "bad_certificate");
    assert!(tls_peer(&node1.raft, &cluster.certs, &other, 2, 2));
    eventually("bad_certificate counted", LONG, || {
        (cluster.closed(0, "bad_certificate") > before).then_some(())
    });

    // Node 2's own certificate used by a process that claims node 3: refused.
    let before = cluster.closed(0, "id_mismatch");
    assert!(tls_peer(&node1.raft, &cluster.certs, &cluster.certs, 2, 3));
    eventually("id_mismatch counted", LONG, || {
        (cluster.closed(0, "id_mismatch") > before).then_some(())
    });
    let log = std::fs::read_to_string(cluster.tmp.path().join("node1.log")).expect("log");
    assert!(
        log.contains("the hello claims node 3, the certificate names node 2"),
        "{log}"
    );

    // Admin: no client certificate, or plain HTTP, is refused; the CLI with
    // --certs-dir works, without it fails.
    let admin = &node1.admin;
    let ca_only = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[
            ureq::tls::Certificate::from_pem(
                &std::fs::read(cluster.certs.join("ca.crt")).expect("ca"),
            )
            .expect("ca pem"),
        ]))
        .build();
    assert!(
        https(Some(ca_only), admin, "/status").is_err(),
        "admin answered a client without a certificate"
    );
    assert!(
        http(admin, "GET", "/status", None).is_none(),
        "plain HTTP answered"
    );
    let (ok, out, err) = run(sealkv()
        .args(["status", "--admin-addr", admin, "--certs-dir"])
        .arg(&cluster.certs));
    assert!(ok && out.contains("voters [1,2,3]"), "{out}{err}");
    let (ok, out, err) =
        run(sealkv().args(["cluster", "remove-node", "--id", "9", "--admin-addr", admin]));
    assert!(!ok, "plain HTTP to an HTTPS admin port: {out}{err}");

    // After all that, every node still serves.
    eventually("SET after the strangers", LONG, || {
        let (ok, out, _) = cluster.redis_cli(2, &["SET", "k", "w"]);
        (ok && out.trim() == "OK").then_some(())
    });
    for i in 0..3 {
        assert!(
            cluster.status(i).is_some(),
            "node {} stopped serving",
            i + 1
        );
    }
}
