//! The golden-vector loader, shared with the other crates through sealkv-testkit.

pub use sealkv_testkit::*;
