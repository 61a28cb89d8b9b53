//! Integration tests of sealkv-node: the `sealkv` binary run as real processes
//! (startup, refusals, clusters on loopback driven with redis-rs), and the RESP data
//! API served over real TCP.

mod cli;
mod cluster;
mod encryption;
mod limits;
mod lost_state;
mod resp;
mod support;
mod trust;
