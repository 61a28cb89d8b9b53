//! Proof under fault: real `sealkv` processes built with the test-only `failpoints`
//! feature are crashed (`panic`) or failed (`return`) at fail points between two
//! durable steps, or fed entries that skip admission. Every run ends with the node
//! restarted into a state consistent with the others, or halted at the entry with
//! its applied index unchanged and the same halt after a restart; encrypted runs
//! end by checking that no (key, nonce) pair was sealed twice.

#[path = "../it/support.rs"]
#[allow(dead_code)]
mod support;

mod crashes;
mod harness;
mod malformed;
