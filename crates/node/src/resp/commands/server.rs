//! The server and connection commands that need more than one line of the dispatch:
//! `INFO`, `HELLO`, `CLIENT` and `COMMAND`.

use redis_protocol::bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::{COMMANDS, Cx, ERR_SYNTAX, Early, Spec, arity_error, truncate, unknown_subcommand};
use crate::resp::args::parse_i64;
use crate::resp::backend::{ApiError, Backend, RaftRole};
use crate::resp::info::{self, REDIS_VERSION, Section, ServerFacts};
use crate::resp::reply::{array, bulk, error, int, nil, ok, simple};

impl<B: Backend> Cx<'_, B> {
    pub(super) async fn info(&self, args: &[Bytes]) -> BytesFrame {
        let mut sections = Vec::new();
        if args.is_empty() {
            sections.extend_from_slice(Section::named(b"default"));
        }
        for arg in args {
            sections.extend_from_slice(Section::named(arg));
        }
        let node = match tokio::time::timeout(
            self.shared.config.request_timeout,
            self.shared.backend.info(),
        )
        .await
        {
            Ok(node) => node,
            Err(_) => return error(ApiError::Timeout.redis_error()),
        };
        let facts = ServerFacts {
            port: self.shared.port,
            uptime_s: self.shared.started.elapsed().as_secs(),
            now_ms: self.now(),
        };
        bulk(info::render(&sections, &facts, &node))
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 only.
    pub(super) async fn hello(&mut self, args: &[Bytes]) -> BytesFrame {
        let mut name = None;
        if let Some((version, options)) = args.split_first() {
            match parse_i64(version) {
                None => return error("ERR Protocol version is not an integer or out of range"),
                Some(2) => {}
                Some(_) => return error("NOPROTO sorry, this protocol version is not supported"),
            }
            let mut rest = options;
            while let Some((option, tail)) = rest.split_first() {
                match (option.to_ascii_uppercase().as_slice(), tail) {
                    (b"SETNAME", [value, tail @ ..]) => {
                        if let Err(frame) = check_name(value, "Client names") {
                            return frame;
                        }
                        name = Some(value.to_vec());
                        rest = tail;
                    }
                    (b"AUTH", [_, _, ..]) => {
                        return error("ERR AUTH is not supported by sealkv");
                    }
                    _ => {
                        return error(format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(truncate(option, 128))
                        ));
                    }
                }
            }
        }
        if let Some(name) = name {
            self.session.name = (!name.is_empty()).then_some(name);
        }
        let role = match tokio::time::timeout(
            self.shared.config.request_timeout,
            self.shared.backend.info(),
        )
        .await
        {
            Ok(node) if node.role == RaftRole::Leader => "master",
            Ok(_) => "replica",
            Err(_) => return error(ApiError::Timeout.redis_error()),
        };
        array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk(REDIS_VERSION),
            bulk("proto"),
            int(2),
            bulk("id"),
            int(i64::try_from(self.session.id).unwrap_or(i64::MAX)),
            bulk("mode"),
            bulk("standalone"),
            bulk("role"),
            bulk(role),
            bulk("modules"),
            array(vec![]),
        ])
    }

    /// `CLIENT SETNAME | GETNAME | SETINFO | ID | HELP`.
    pub(super) fn client(&mut self, args: &[Bytes]) -> BytesFrame {
        let Some((sub, rest)) = args.split_first() else {
            return arity_error("client");
        };
        let sub_lower = sub.to_ascii_lowercase();
        let (arity, full) = match sub_lower.as_slice() {
            b"setname" => (1, "client|setname"),
            b"getname" => (0, "client|getname"),
            b"setinfo" => (2, "client|setinfo"),
            b"id" => (0, "client|id"),
            b"help" => (0, "client|help"),
            _ => return unknown_subcommand(sub, "client"),
        };
        if rest.len() != arity {
            return arity_error(full);
        }
        match (sub_lower.as_slice(), rest) {
            (b"setname", [name]) => {
                if let Err(frame) = check_name(name, "Client names") {
                    return frame;
                }
                self.session.name = (!name.is_empty()).then(|| name.to_vec());
                ok()
            }
            (b"getname", []) => self.session.name.clone().map_or_else(nil, bulk),
            (b"setinfo", [attr, value]) => {
                let known = [&b"lib-name"[..], b"lib-ver"];
                if !known.contains(&attr.to_ascii_lowercase().as_slice()) {
                    return error(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(truncate(attr, 128))
                    ));
                }
                // Validated as Redis does; the values are not kept.
                match check_name(value, &String::from_utf8_lossy(truncate(attr, 128))) {
                    Ok(()) => ok(),
                    Err(frame) => frame,
                }
            }
            (b"id", []) => int(i64::try_from(self.session.id).unwrap_or(i64::MAX)),
            _ => help(&[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "SETINFO <option> <value>",
                "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ]),
        }
    }
}

/// Redis's rule for client names and library attributes: printable ASCII, no
/// spaces. An empty value is allowed (it clears a name).
fn check_name(value: &[u8], what: &str) -> Result<(), Early> {
    if value.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(())
    } else {
        Err(error(format!(
            "ERR {what} cannot contain spaces, newlines or special characters."
        )))
    }
}

fn help(lines: &[&'static str]) -> BytesFrame {
    array(lines.iter().copied().map(simple).collect())
}

/// `COMMAND [COUNT | LIST | INFO name ... | DOCS ... | HELP]`.
pub(super) fn command(args: &[Bytes]) -> BytesFrame {
    let Some((sub, rest)) = args.split_first() else {
        return array(COMMANDS.iter().map(Spec::frame).collect());
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"count" if rest.is_empty() => int(i64::try_from(COMMANDS.len()).unwrap_or(i64::MAX)),
        b"count" => arity_error("command|count"),
        b"list" if rest.is_empty() => array(COMMANDS.iter().map(|s| bulk(s.name)).collect()),
        b"list" => error(ERR_SYNTAX),
        b"info" if rest.is_empty() => array(COMMANDS.iter().map(Spec::frame).collect()),
        b"info" => array(
            rest.iter()
                .map(|name| {
                    let lower = name.to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|s| s.name.as_bytes() == lower)
                        .map_or_else(nil, Spec::frame)
                })
                .collect(),
        ),
        // sealkv ships no command docs; an empty reply lets redis-cli fall back to
        // its built-in help.
        b"docs" => array(vec![]),
        b"help" if rest.is_empty() => help(&[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands in this server.",
            "LIST",
            "    Return a list of all commands in this server.",
            "INFO [<command-name> ...]",
            "    Return details about the given commands, or all of them.",
            "DOCS [<command-name> ...]",
            "    Answers an empty array: sealkv ships no command docs.",
            "HELP",
            "    Print this help.",
        ]),
        b"help" => arity_error("command|help"),
        _ => unknown_subcommand(sub, "command"),
    }
}
