//! Integration tests of sealkv-fsmwire: the elastickv golden vectors and properties.

mod properties;
mod vectors;
