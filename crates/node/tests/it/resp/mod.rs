//! The RESP data API, driven over real TCP against a backend that wraps the real
//! state machine.

mod auth;
mod commands;
mod protocol;
mod resp3;
mod seam;
mod support;
