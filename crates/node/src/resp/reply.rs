//! Reply frames: the protocol-neutral [`Frame`] every command answers with, its
//! RESP2 and RESP3 forms, and the one place error text is made safe to put on the
//! wire.
//!
//! A command says *what* it replies (a map, a null, a verbatim text); the
//! connection's protocol decides *how* it is written, as Redis's `addReply*`
//! helpers do. RESP3 gets the frame as it is. RESP2 gets Redis's RESP2 rendering:
//!
//! | [`Frame`] | RESP3 | RESP2 |
//! |---|---|---|
//! | `Simple` | `+text` | `+text` |
//! | `Error` | `-CODE text` | `-CODE text` |
//! | `Int` | `:n` | `:n` |
//! | `Bulk` | `$len` bytes | `$len` bytes |
//! | `Null` | `_` | `$-1` (the nil bulk string) |
//! | `Array` | `*n` | `*n` |
//! | `Map` | `%n` then n key/value pairs | `*2n`, keys and values alternating |
//! | `Set` | `~n` | `*n` |
//! | `Verbatim` | `=len` `txt:` text | `$len` text |

use redis_protocol::bytes::Bytes;
use redis_protocol::bytes_utils::Str;
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redis_protocol::resp3::types::{BytesFrame as Resp3Frame, FrameMap, VerbatimStringFormat};
use sealkv_kv::{Reply, UserError};

/// The RESP version a connection speaks: 2 until the client asks for 3 with
/// `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Protocol {
    /// The version number `HELLO` reports (`proto`).
    pub fn number(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One reply, before it is written in a protocol. The variants are the reply types
/// sealkv sends; nothing it answers needs RESP3 doubles, booleans, big numbers or
/// pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A simple string (`+OK`). Never contains CR or LF.
    Simple(Bytes),
    /// An error (`-CODE message`), already made single-line by `reply::error`.
    Error(Str),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null reply: a missing value.
    Null,
    /// An array.
    Array(Vec<Frame>),
    /// A map, in the order given.
    Map(Vec<(Frame, Frame)>),
    /// A set (command flags, for instance).
    Set(Vec<Frame>),
    /// Plain text for a human (`INFO`), sent as a verbatim `txt` string in RESP3.
    Verbatim(Bytes),
}

impl Frame {
    /// The frame in RESP2, as Redis renders each RESP3 type for a RESP2 client.
    pub fn into_resp2(self) -> Resp2Frame {
        match self {
            Frame::Simple(text) => Resp2Frame::SimpleString(text),
            Frame::Error(text) => Resp2Frame::Error(text),
            Frame::Int(n) => Resp2Frame::Integer(n),
            Frame::Bulk(bytes) | Frame::Verbatim(bytes) => Resp2Frame::BulkString(bytes),
            Frame::Null => Resp2Frame::Null,
            Frame::Array(items) | Frame::Set(items) => {
                Resp2Frame::Array(items.into_iter().map(Frame::into_resp2).collect())
            }
            Frame::Map(pairs) => Resp2Frame::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2(), v.into_resp2()])
                    .collect(),
            ),
        }
    }

    /// The frame in RESP3.
    pub fn into_resp3(self) -> Resp3Frame {
        match self {
            Frame::Simple(data) => Resp3Frame::SimpleString {
                data,
                attributes: None,
            },
            Frame::Error(data) => Resp3Frame::SimpleError {
                data,
                attributes: None,
            },
            Frame::Int(data) => Resp3Frame::Number {
                data,
                attributes: None,
            },
            Frame::Bulk(data) => Resp3Frame::BlobString {
                data,
                attributes: None,
            },
            Frame::Null => Resp3Frame::Null,
            Frame::Array(items) => Resp3Frame::Array {
                data: items.into_iter().map(Frame::into_resp3).collect(),
                attributes: None,
            },
            Frame::Map(pairs) => {
                // redis-protocol's map is an IndexMap (feature `index-map`), so the
                // pairs go out in the order the command gave them.
                let mut data = FrameMap::with_capacity(pairs.len());
                for (k, v) in pairs {
                    data.insert(k.into_resp3(), v.into_resp3());
                }
                Resp3Frame::Map {
                    data,
                    attributes: None,
                }
            }
            Frame::Set(items) => Resp3Frame::Set {
                data: items.into_iter().map(Frame::into_resp3).collect(),
                attributes: None,
            },
            Frame::Verbatim(data) => Resp3Frame::VerbatimString {
                data,
                format: VerbatimStringFormat::Text,
                attributes: None,
            },
        }
    }
}

/// `+OK`.
pub fn ok() -> Frame {
    simple("OK")
}

/// A simple string reply (`+text`). `text` must not contain CR or LF.
pub fn simple(text: &'static str) -> Frame {
    Frame::Simple(Bytes::from_static(text.as_bytes()))
}

/// The null reply (`$-1` in RESP2, `_` in RESP3).
pub fn nil() -> Frame {
    Frame::Null
}

/// An integer reply.
pub fn int(n: i64) -> Frame {
    Frame::Int(n)
}

/// A bulk string reply.
pub fn bulk(bytes: impl Into<Bytes>) -> Frame {
    Frame::Bulk(bytes.into())
}

/// An array reply.
pub fn array(items: Vec<Frame>) -> Frame {
    Frame::Array(items)
}

/// A map reply whose keys are bulk strings.
pub fn map(pairs: Vec<(&'static str, Frame)>) -> Frame {
    Frame::Map(pairs.into_iter().map(|(k, v)| (bulk(k), v)).collect())
}

/// An error reply (`-CODE message`). CR and LF, which would end the reply early and
/// let the rest be read as another reply, become spaces, as Redis does.
pub fn error(message: impl Into<String>) -> Frame {
    let mut text: String = message.into();
    if text.contains(['\r', '\n']) {
        text = text.replace(['\r', '\n'], " ");
    }
    Frame::Error(Str::from(text))
}

/// The frame for a state-machine reply.
pub fn from_kv(reply: Reply) -> Frame {
    match reply {
        Reply::Ok => ok(),
        Reply::Nil => nil(),
        Reply::Int(n) => int(n),
        Reply::Error(e) => error(user_error(e)),
    }
}

/// A state machine's user error as Redis words it: `ERR` for the ones Redis has,
/// `TRYAGAIN` for a write to retry.
pub fn user_error(e: UserError) -> String {
    match e {
        UserError::NotWrapped => format!("TRYAGAIN {e}"),
        other => format!("ERR {other}"),
    }
}

#[cfg(test)]
mod tests {
    use redis_protocol::bytes::BytesMut;

    use super::*;

    #[test]
    fn error_text_cannot_break_the_framing() {
        assert_eq!(
            error("ERR bad\r\n+OK\r\n"),
            Frame::Error(Str::from("ERR bad  +OK  "))
        );
    }

    fn resp2(frame: Frame) -> String {
        let mut out = BytesMut::new();
        redis_protocol::resp2::encode::extend_encode(&mut out, &frame.into_resp2(), false)
            .expect("encode");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn resp3(frame: Frame) -> String {
        let mut out = BytesMut::new();
        redis_protocol::resp3::encode::complete::extend_encode(
            &mut out,
            &frame.into_resp3(),
            false,
        )
        .expect("encode");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Every frame type in both protocols, byte for byte.
    #[test]
    fn frames_are_written_as_redis_writes_them() {
        let cases: Vec<(Frame, &str, &str)> = vec![
            (ok(), "+OK\r\n", "+OK\r\n"),
            (error("ERR x"), "-ERR x\r\n", "-ERR x\r\n"),
            (int(-7), ":-7\r\n", ":-7\r\n"),
            (bulk("v"), "$1\r\nv\r\n", "$1\r\nv\r\n"),
            (nil(), "$-1\r\n", "_\r\n"),
            (
                array(vec![bulk("a"), nil()]),
                "*2\r\n$1\r\na\r\n$-1\r\n",
                "*2\r\n$1\r\na\r\n_\r\n",
            ),
            (
                map(vec![("b", int(1)), ("a", bulk("x"))]),
                "*4\r\n$1\r\nb\r\n:1\r\n$1\r\na\r\n$1\r\nx\r\n",
                "%2\r\n$1\r\nb\r\n:1\r\n$1\r\na\r\n$1\r\nx\r\n",
            ),
            (map(vec![]), "*0\r\n", "%0\r\n"),
            (
                Frame::Set(vec![simple("fast")]),
                "*1\r\n+fast\r\n",
                "~1\r\n+fast\r\n",
            ),
            (
                Frame::Verbatim(Bytes::from_static(b"a:1\r\n")),
                "$5\r\na:1\r\n\r\n",
                "=9\r\ntxt:a:1\r\n\r\n",
            ),
        ];
        for (frame, want2, want3) in cases {
            assert_eq!(resp2(frame.clone()), want2, "{frame:?} in RESP2");
            assert_eq!(resp3(frame.clone()), want3, "{frame:?} in RESP3");
        }
    }
}
