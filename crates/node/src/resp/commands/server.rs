//! The server and connection commands that need more than one line of the dispatch:
//! `INFO`, `CLIENT` and `COMMAND`.

use redis_protocol::bytes::Bytes;

use super::{COMMANDS, Cx, ERR_SYNTAX, Early, Spec, arity_error, truncate, unknown_subcommand};
use crate::resp::backend::{ApiError, Backend};
use crate::resp::info::{self, Section, ServerFacts};
use crate::resp::reply::{Frame, array, bulk, error, int, nil, ok, simple};

impl<B: Backend> Cx<'_, B> {
    pub(super) async fn info(&self, args: &[Bytes]) -> Frame {
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
            port: self.shared.local.port(),
            uptime_s: self.shared.started.elapsed().as_secs(),
            now_ms: self.now(),
        };
        // A verbatim text in RESP3, as Redis 7 sends it; a bulk string in RESP2.
        Frame::Verbatim(info::render(&sections, &facts, &node).into())
    }

    /// `CLIENT SETNAME | GETNAME | SETINFO | ID | INFO | HELP`.
    pub(super) fn client(&mut self, args: &[Bytes]) -> Frame {
        let Some((sub, rest)) = args.split_first() else {
            return arity_error("client");
        };
        let sub_lower = sub.to_ascii_lowercase();
        let (arity, full) = match sub_lower.as_slice() {
            b"setname" => (1, "client|setname"),
            b"getname" => (0, "client|getname"),
            b"setinfo" => (2, "client|setinfo"),
            b"id" => (0, "client|id"),
            b"info" => (0, "client|info"),
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
            (b"setinfo", [attr, value]) => self.set_info(attr, value),
            (b"id", []) => int(i64::try_from(self.session.id).unwrap_or(i64::MAX)),
            (b"info", []) => Frame::Verbatim(self.client_info().into()),
            _ => help(&[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "SETINFO <option> <value>",
                "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ]),
        }
    }

    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`: validated as Redis does and kept on
    /// the connection (`CLIENT INFO` shows them).
    fn set_info(&mut self, attr: &Bytes, value: &Bytes) -> Frame {
        let attr_lower = attr.to_ascii_lowercase();
        let slot = match attr_lower.as_slice() {
            b"lib-name" => &mut self.session.lib_name,
            b"lib-ver" => &mut self.session.lib_ver,
            _ => {
                return error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(truncate(attr, 128))
                ));
            }
        };
        if let Err(frame) = check_name(value, &String::from_utf8_lossy(truncate(attr, 128))) {
            return frame;
        }
        *slot = (!value.is_empty()).then(|| value.to_vec());
        ok()
    }

    /// `CLIENT INFO`: Redis's one line of `field=value` pairs, with the fields
    /// sealkv keeps (`db` is always 0; `user` is always `default`).
    fn client_info(&self) -> String {
        let text = |v: &Option<Vec<u8>>| {
            String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
        };
        let session = &*self.session;
        format!(
            "id={} addr={} laddr={} name={} age={} db=0 user=default resp={} lib-name={} lib-ver={}\n",
            session.id,
            session.peer,
            self.shared.local,
            text(&session.name),
            session.since.elapsed().as_secs(),
            session.protocol.number(),
            text(&session.lib_name),
            text(&session.lib_ver),
        )
    }
}

/// Redis's rule for client names and library attributes: printable ASCII, no
/// spaces. An empty value is allowed (it clears a name).
pub(super) fn check_name(value: &[u8], what: &str) -> Result<(), Early> {
    if value.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(())
    } else {
        Err(error(format!(
            "ERR {what} cannot contain spaces, newlines or special characters."
        )))
    }
}

fn help(lines: &[&'static str]) -> Frame {
    array(lines.iter().copied().map(simple).collect())
}

/// `COMMAND [COUNT | LIST | INFO name ... | DOCS ... | HELP]`.
pub(super) fn command(args: &[Bytes]) -> Frame {
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
        // sealkv ships no command docs; an empty reply (a map, as in Redis 7) lets
        // redis-cli fall back to its built-in help.
        b"docs" => Frame::Map(vec![]),
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
            "    Answers an empty map: sealkv ships no command docs.",
            "HELP",
            "    Print this help.",
        ]),
        b"help" => arity_error("command|help"),
        _ => unknown_subcommand(sub, "command"),
    }
}
