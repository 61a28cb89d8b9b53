//! The string commands: `GET`, `MGET`, `EXISTS`, `SET` (with its options), `MSET`,
//! `DEL` and the `INCR`/`DECR` family.

use redis_protocol::bytes::Bytes;
use sealkv_kv::{Command, PutCondition, Reply};

use super::{Cx, ERR_NOT_INTEGER, ERR_RESERVED, ERR_SYNTAX, Early, any_reserved, arity_error};
use crate::resp::args::parse_i64;
use crate::resp::backend::Backend;
use crate::resp::reply::{self, Frame, array, bulk, error, int, nil, ok};

impl<B: Backend> Cx<'_, B> {
    pub(super) async fn get(&self, key: &Bytes) -> Frame {
        match self.read(std::slice::from_ref(key)).await {
            Ok(mut values) => match values.pop().flatten() {
                Some(v) => bulk(v.value),
                None => nil(),
            },
            Err(frame) => frame,
        }
    }

    pub(super) async fn mget(&self, keys: &[Bytes]) -> Frame {
        match self.read(keys).await {
            Ok(values) => array(
                values
                    .into_iter()
                    .map(|v| v.map_or_else(nil, |v| bulk(v.value)))
                    .collect(),
            ),
            Err(frame) => frame,
        }
    }

    pub(super) async fn exists(&self, keys: &[Bytes]) -> Frame {
        match self.read(keys).await {
            Ok(values) => {
                let live = values.iter().filter(|v| v.is_some()).count();
                int(i64::try_from(live).unwrap_or(i64::MAX))
            }
            Err(frame) => frame,
        }
    }

    pub(super) async fn set(&self, args: &[Bytes]) -> Frame {
        let now = self.now();
        let (key, value, options) = match args {
            [key, value, options @ ..] => (key, value, options),
            _ => return arity_error("set"),
        };
        let (expire_at_ms, condition) = match set_options(options, now) {
            Ok(parsed) => parsed,
            Err(frame) => return frame,
        };
        let command = Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            expire_at_ms,
            condition,
        };
        self.write_one(now, command).await
    }

    pub(super) async fn mset(&self, args: &[Bytes]) -> Frame {
        if !args.len().is_multiple_of(2) {
            return arity_error("mset");
        }
        if any_reserved(args.iter().step_by(2)) {
            return error(ERR_RESERVED);
        }
        let now = self.now();
        let puts = args
            .chunks_exact(2)
            .map(|pair| Command::Put {
                key: pair[0].to_vec(),
                value: pair[1].to_vec(),
                expire_at_ms: 0,
                condition: PutCondition::Always,
            })
            .collect();
        match self.write(now, puts).await {
            Ok(replies) => replies
                .into_iter()
                .find(|r| *r != Reply::Ok)
                .map_or_else(ok, reply::from_kv),
            Err(frame) => frame,
        }
    }

    pub(super) async fn del(&self, keys: &[Bytes]) -> Frame {
        let now = self.now();
        let keys = keys.iter().map(|k| k.to_vec()).collect();
        self.write_one(now, Command::Delete { keys }).await
    }

    pub(super) async fn incr_by(&self, key: &Bytes, delta: Result<i64, Early>) -> Frame {
        let delta = match delta {
            Ok(delta) => delta,
            Err(frame) => return frame,
        };
        let now = self.now();
        let key = key.to_vec();
        self.write_one(now, Command::IncrBy { key, delta }).await
    }
}

/// Parses `SET`'s options after the key and value into an absolute expiry (0 for
/// none) and a condition, with Redis's precedence: a syntax error first, then the
/// expire value.
pub(super) fn set_options(options: &[Bytes], now: u64) -> Result<(u64, PutCondition), Early> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Unit {
        Ex,
        Px,
        ExAt,
        PxAt,
    }
    let mut condition = PutCondition::Always;
    let mut expiry: Option<(Unit, &Bytes)> = None;
    let mut i = 0;
    while let Some(option) = options.get(i) {
        let next = options.get(i + 1);
        let upper = option.to_ascii_uppercase();
        let unit = match upper.as_slice() {
            b"EX" => Some(Unit::Ex),
            b"PX" => Some(Unit::Px),
            b"EXAT" => Some(Unit::ExAt),
            b"PXAT" => Some(Unit::PxAt),
            _ => None,
        };
        match (upper.as_slice(), unit, next) {
            (b"NX", ..) if condition != PutCondition::IfPresent => {
                condition = PutCondition::IfAbsent;
            }
            (b"XX", ..) if condition != PutCondition::IfAbsent => {
                condition = PutCondition::IfPresent;
            }
            (_, Some(unit), Some(value)) if expiry.is_none_or(|(other, _)| other == unit) => {
                expiry = Some((unit, value));
                i += 1;
            }
            (b"KEEPTTL", ..) => return Err(error("ERR SET KEEPTTL is not supported by sealkv")),
            (b"GET", ..) => return Err(error("ERR SET GET is not supported by sealkv")),
            _ => return Err(error(ERR_SYNTAX)),
        }
        i += 1;
    }
    let Some((unit, value)) = expiry else {
        return Ok((0, condition));
    };
    let Some(amount) = parse_i64(value) else {
        return Err(error(ERR_NOT_INTEGER));
    };
    let invalid = || error("ERR invalid expire time in 'set' command");
    if amount <= 0 {
        return Err(invalid());
    }
    let ms = match unit {
        Unit::Ex | Unit::ExAt => amount.checked_mul(1000).ok_or_else(invalid)?,
        Unit::Px | Unit::PxAt => amount,
    };
    let at = match unit {
        Unit::Ex | Unit::Px => i64::try_from(now)
            .ok()
            .and_then(|now| ms.checked_add(now))
            .ok_or_else(invalid)?,
        Unit::ExAt | Unit::PxAt => ms,
    };
    let at = u64::try_from(at).map_err(|_| invalid())?;
    Ok((at, condition))
}
