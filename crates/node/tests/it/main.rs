//! Integration tests of sealkv-node: the `sealkv` binary run as real processes
//! (startup, refusals, clusters on loopback driven with redis-rs, redis-py and
//! redis-rs against nodes with and without a password, TLS clusters with
//! certificates), and the RESP data API served over real TCP.

mod cli;
mod clients;
mod cluster;
mod encryption;
mod lifecycle;
mod limits;
mod lost_state;
mod resp;
mod retire;
mod snapshots;
mod support;
mod tls;
mod trust;
