//! `AUTH` and `HELLO`: authenticating a connection and choosing its protocol.
//!
//! sealkv has Redis's `default` user only. Its password is `--redis-password-file`;
//! without one the user has none (Redis's `nopass`), every connection starts
//! authenticated, and `AUTH default <anything>` succeeds while `AUTH <password>`
//! is refused as Redis refuses it. Failed attempts are counted in
//! `sealkv_auth_failures_total` and logged with the client's address and whether
//! the username was `default`, never the username itself (clients that swap the
//! arguments would put the password there) and never the password.

use redis_protocol::bytes::Bytes;

use super::server::check_name;
use super::{Cx, ERR_SYNTAX, truncate};
use crate::resp::args::parse_i64;
use crate::resp::backend::{ApiError, Backend, RaftRole};
use crate::resp::info::REDIS_VERSION;
use crate::resp::reply::{Frame, Protocol, array, bulk, error, int, map, ok};

/// Redis's reply to `AUTH <password>` when the default user has no password.
const ERR_NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";
/// Redis's reply to a wrong username or password.
const ERR_WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Redis's reply to `HELLO` without `AUTH` before the client authenticated.
const ERR_HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

/// The one user.
const DEFAULT_USER: &[u8] = b"default";

impl<B: Backend> Cx<'_, B> {
    /// `AUTH password` or `AUTH username password`.
    pub(super) fn auth(&mut self, args: &[Bytes]) -> Frame {
        let (user, password) = match args {
            [password] => {
                if self.shared.config.password.is_none() {
                    return error(ERR_NO_PASSWORD);
                }
                (DEFAULT_USER, password)
            }
            [user, password] => (&user[..], password),
            _ => return error(ERR_SYNTAX),
        };
        match self.authenticate(user, password, "AUTH") {
            Ok(()) => ok(),
            Err(frame) => frame,
        }
    }

    /// Checks a username and password as Redis's `ACLAuthenticateUser` does. Success
    /// authenticates the connection; a failure leaves it as it was (an
    /// authenticated connection stays authenticated), is counted, and is logged
    /// without the password: the first failure of a connection as a warning, later
    /// ones at debug level, so one client cannot flood the log.
    fn authenticate(
        &mut self,
        user: &[u8],
        password: &[u8],
        command: &'static str,
    ) -> Result<(), Frame> {
        let default_user = user == DEFAULT_USER;
        let password_ok = match &self.shared.config.password {
            Some(want) => want.matches(password),
            None => true,
        };
        if default_user && password_ok {
            self.session.authenticated = true;
            return Ok(());
        }
        self.session.auth_failures += 1;
        if let Some(counter) = &self.shared.config.auth_failures {
            counter.inc();
        }
        let (peer, client_id) = (self.session.peer, self.session.id);
        if self.session.auth_failures == 1 {
            tracing::warn!(%peer, client_id, command, default_user, "failed authentication");
        } else {
            tracing::debug!(
                %peer,
                client_id,
                command,
                default_user,
                failures = self.session.auth_failures,
                "failed authentication"
            );
        }
        Err(error(ERR_WRONGPASS))
    }

    /// `HELLO [protover [AUTH username password] [SETNAME name]]`: authenticates
    /// (with `AUTH`), names the connection, switches it to RESP `protover` (2 or 3;
    /// without one it keeps its protocol) and answers the server map, in the new
    /// protocol.
    pub(super) async fn hello(&mut self, args: &[Bytes]) -> Frame {
        let (version, options) = match args.split_first() {
            None => (None, args),
            Some((version, options)) => match parse_i64(version) {
                None => return error("ERR Protocol version is not an integer or out of range"),
                Some(2) => (Some(Protocol::Resp2), options),
                Some(3) => (Some(Protocol::Resp3), options),
                Some(_) => return error("NOPROTO unsupported protocol version"),
            },
        };
        let mut name = None;
        let mut rest = options;
        while let Some((option, tail)) = rest.split_first() {
            match (option.to_ascii_uppercase().as_slice(), tail) {
                (b"AUTH", [user, password, tail @ ..]) => {
                    if let Err(frame) = self.authenticate(user, password, "HELLO") {
                        return frame;
                    }
                    rest = tail;
                }
                (b"SETNAME", [value, tail @ ..]) => {
                    if let Err(frame) = check_name(value, "Client names") {
                        return frame;
                    }
                    name = Some(value.to_vec());
                    rest = tail;
                }
                _ => {
                    return error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(truncate(option, 128))
                    ));
                }
            }
        }
        if !self.session.authenticated {
            return error(ERR_HELLO_NOAUTH);
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
        if let Some(version) = version {
            self.session.protocol = version;
        }
        // Redis 7's map, field for field. `server` and `version` say "Redis 7.0",
        // the release whose replies sealkv follows, because clients read them to
        // decide what a server can do; `INFO` names sealkv and its version.
        map(vec![
            ("server", bulk("redis")),
            ("version", bulk(REDIS_VERSION)),
            ("proto", int(self.session.protocol.number())),
            (
                "id",
                int(i64::try_from(self.session.id).unwrap_or(i64::MAX)),
            ),
            ("mode", bulk("standalone")),
            ("role", bulk(role)),
            ("modules", array(vec![])),
        ])
    }
}
