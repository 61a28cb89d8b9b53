//! The text of `INFO`: Redis's `# Section` / `field:value` format, with the fields
//! Redis clients look for and sealkv's own under a `sealkv_` prefix.

use std::fmt::Write;

use super::backend::{InfoSnapshot, RaftRole};

/// The Redis version sealkv reports (`redis_version`, `HELLO`): the release whose
/// reply shapes and error texts the supported commands follow.
pub const REDIS_VERSION: &str = "7.0.0";

/// One `INFO` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `# Server`.
    Server,
    /// `# Replication`.
    Replication,
}

impl Section {
    const ALL: [Section; 2] = [Section::Server, Section::Replication];

    /// The sections an `INFO` argument names; an unknown name names none (Redis
    /// answers it with an empty string).
    pub fn named(name: &[u8]) -> &'static [Section] {
        match name.to_ascii_lowercase().as_slice() {
            b"server" => &[Section::Server],
            b"replication" => &[Section::Replication],
            b"default" | b"all" | b"everything" => &Section::ALL,
            _ => &[],
        }
    }
}

/// What the server knows about itself, beside the backend's snapshot.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// The listening port.
    pub port: u16,
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// The wall clock, in ms since the Unix epoch.
    pub now_ms: u64,
}

/// Renders the `sections` asked for (each at most once, in Redis's order).
pub fn render(sections: &[Section], facts: &ServerFacts, node: &InfoSnapshot) -> String {
    let mut out = String::new();
    for section in Section::ALL {
        if !sections.contains(&section) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        match section {
            Section::Server => server(&mut out, facts, node),
            Section::Replication => replication(&mut out, node),
        }
    }
    out
}

/// Appends `name:value\r\n`. Writing to a `String` cannot fail.
fn field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "{name}:{value}\r\n");
}

fn server(out: &mut String, facts: &ServerFacts, node: &InfoSnapshot) {
    out.push_str("# Server\r\n");
    field(out, "redis_version", REDIS_VERSION);
    field(out, "sealkv_version", env!("CARGO_PKG_VERSION"));
    field(out, "redis_mode", "standalone");
    field(
        out,
        "os",
        format_args!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    );
    field(out, "arch_bits", usize::BITS);
    field(out, "process_id", std::process::id());
    field(out, "tcp_port", facts.port);
    field(out, "server_time_usec", facts.now_ms.saturating_mul(1000));
    field(out, "uptime_in_seconds", facts.uptime_s);
    field(out, "uptime_in_days", facts.uptime_s / 86_400);
    field(out, "sealkv_node_id", node.node_id);
}

fn replication(out: &mut String, node: &InfoSnapshot) {
    out.push_str("# Replication\r\n");
    let leader = node.role == RaftRole::Leader;
    field(out, "role", if leader { "master" } else { "slave" });
    if !leader {
        if let Some((host, port)) = node.leader_addr.as_deref().and_then(split_addr) {
            field(out, "master_host", host);
            field(out, "master_port", port);
        }
        let up = node.leader_id.is_some() || node.leader_addr.is_some();
        field(out, "master_link_status", if up { "up" } else { "down" });
    }
    field(out, "sealkv_raft_role", node.role.as_str());
    field(out, "sealkv_leader_id", node.leader_id.unwrap_or(0));
    field(
        out,
        "sealkv_leader_addr",
        one_line(node.leader_addr.as_deref().unwrap_or("")),
    );
    field(out, "sealkv_term", node.term);
    field(out, "sealkv_commit_index", node.commit_index);
    field(out, "sealkv_applied_index", node.applied_index);
    field(out, "sealkv_halted", u8::from(node.halted.is_some()));
    if let Some(cause) = &node.halted {
        field(out, "sealkv_halt_cause", one_line(cause));
    }
}

/// Splits `host:port` (or `[v6]:port`) at its last colon.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// `text` with line breaks made spaces, so one field stays one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ServerFacts {
        ServerFacts {
            port: 6379,
            uptime_s: 90_000,
            now_ms: 1_700_000_000_000,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.split("\r\n").collect()
    }

    #[test]
    fn leader_is_master() {
        let node = InfoSnapshot {
            node_id: 3,
            role: RaftRole::Leader,
            leader_id: Some(3),
            term: 5,
            commit_index: 10,
            applied_index: 9,
            ..InfoSnapshot::default()
        };
        let text = render(Section::named(b"replication"), &facts(), &node);
        assert_eq!(
            lines(&text),
            [
                "# Replication",
                "role:master",
                "sealkv_raft_role:leader",
                "sealkv_leader_id:3",
                "sealkv_leader_addr:",
                "sealkv_term:5",
                "sealkv_commit_index:10",
                "sealkv_applied_index:9",
                "sealkv_halted:0",
                "",
            ]
        );
    }

    #[test]
    fn follower_names_its_master_and_halt() {
        let node = InfoSnapshot {
            role: RaftRole::Follower,
            leader_id: Some(1),
            leader_addr: Some("[::1]:7000".into()),
            halted: Some("bad\nentry".into()),
            ..InfoSnapshot::default()
        };
        let text = render(Section::named(b"REPLICATION"), &facts(), &node);
        let l = lines(&text);
        assert!(l.contains(&"role:slave"), "{text}");
        assert!(l.contains(&"master_host:::1"), "{text}");
        assert!(l.contains(&"master_port:7000"), "{text}");
        assert!(l.contains(&"master_link_status:up"), "{text}");
        assert!(l.contains(&"sealkv_halted:1"), "{text}");
        assert!(l.contains(&"sealkv_halt_cause:bad entry"), "{text}");
    }

    #[test]
    fn default_has_both_sections_in_order() {
        let text = render(
            Section::named(b"default"),
            &facts(),
            &InfoSnapshot::default(),
        );
        let server = text.find("# Server").expect("server section");
        let replication = text.find("\r\n\r\n# Replication").expect("replication");
        assert!(server < replication, "{text}");
        assert!(text.contains("uptime_in_days:1\r\n"), "{text}");
        assert!(
            text.contains(&format!("sealkv_version:{}\r\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert_eq!(
            render(
                Section::named(b"keyspace"),
                &facts(),
                &InfoSnapshot::default()
            ),
            ""
        );
    }
}
