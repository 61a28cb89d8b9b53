//! The key commands: `TTL` and `PTTL`, `EXPIRE`, and `DBSIZE`.

use redis_protocol::bytes::Bytes;
use sealkv_kv::Command;

use super::{Cx, ERR_NOT_INTEGER};
use crate::resp::args::parse_i64;
use crate::resp::backend::Backend;
use crate::resp::reply::{Frame, error, int};

impl<B: Backend> Cx<'_, B> {
    /// `TTL` (`unit_ms` 1000, rounded to the nearest second as Redis does) or
    /// `PTTL` (`unit_ms` 1).
    pub(super) async fn ttl(&self, key: &Bytes, unit_ms: i64) -> Frame {
        let value = match self.read(std::slice::from_ref(key)).await {
            Ok(mut values) => values.pop().flatten(),
            Err(frame) => return frame,
        };
        let Some(value) = value else {
            return int(-2);
        };
        if value.expire_at_ms == 0 {
            return int(-1);
        }
        let left = i64::try_from(value.expire_at_ms.saturating_sub(self.now())).unwrap_or(i64::MAX);
        int(left.saturating_add(unit_ms / 2) / unit_ms)
    }

    pub(super) async fn dbsize(&self) -> Frame {
        match self
            .call(self.shared.backend.dbsize(self.session.consistency))
            .await
        {
            Ok(n) => int(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(frame) => frame,
        }
    }

    /// `EXPIRE key seconds`, Redis 6: a time at or before now deletes the key.
    pub(super) async fn expire(&self, key: &Bytes, seconds: &Bytes) -> Frame {
        let now = self.now();
        let Some(seconds) = parse_i64(seconds) else {
            return error(ERR_NOT_INTEGER);
        };
        let when = seconds
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(i64::try_from(now).ok()?));
        let Some(when) = when else {
            return error("ERR invalid expire time in 'expire' command");
        };
        // The state machine deletes a key whose new expiry is at or before the
        // request's time; `now` says "already expired" without a negative number.
        let expire_at_ms = u64::try_from(when).unwrap_or(0).max(now);
        let key = key.to_vec();
        self.write_one(now, Command::Expire { key, expire_at_ms })
            .await
    }
}
