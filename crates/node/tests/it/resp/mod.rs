//! The RESP data API, driven over real TCP against a backend that wraps the real
//! state machine.

mod commands;
mod protocol;
mod seam;
mod support;
