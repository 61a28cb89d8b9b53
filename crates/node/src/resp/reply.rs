//! Reply frames: small constructors over redis-protocol's RESP2 frame type, and the
//! one place error text is made safe to put on the wire.

use redis_protocol::bytes::Bytes;
use redis_protocol::bytes_utils::Str;
use redis_protocol::resp2::types::BytesFrame;
use sealkv_kv::{Reply, UserError};

/// `+OK`.
pub fn ok() -> BytesFrame {
    simple("OK")
}

/// A simple string reply (`+text`). `text` must not contain CR or LF.
pub fn simple(text: &'static str) -> BytesFrame {
    BytesFrame::SimpleString(Bytes::from_static(text.as_bytes()))
}

/// The nil bulk string (`$-1`).
pub fn nil() -> BytesFrame {
    BytesFrame::Null
}

/// An integer reply.
pub fn int(n: i64) -> BytesFrame {
    BytesFrame::Integer(n)
}

/// A bulk string reply.
pub fn bulk(bytes: impl Into<Bytes>) -> BytesFrame {
    BytesFrame::BulkString(bytes.into())
}

/// An array reply.
pub fn array(items: Vec<BytesFrame>) -> BytesFrame {
    BytesFrame::Array(items)
}

/// An error reply (`-CODE message`). CR and LF, which would end the reply early and
/// let the rest be read as another reply, become spaces, as Redis does.
pub fn error(message: impl Into<String>) -> BytesFrame {
    let mut text: String = message.into();
    if text.contains(['\r', '\n']) {
        text = text.replace(['\r', '\n'], " ");
    }
    BytesFrame::Error(Str::from(text))
}

/// The frame for a state-machine reply.
pub fn from_kv(reply: Reply) -> BytesFrame {
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
    use super::*;

    #[test]
    fn error_text_cannot_break_the_framing() {
        assert_eq!(
            error("ERR bad\r\n+OK\r\n"),
            BytesFrame::Error(Str::from("ERR bad  +OK  "))
        );
    }
}
