//! The engine's integration tests, one module per concern, in one test binary (one link, not
//! one per file). `bomb.rs` stays a binary of its own: it counts every allocation of its process.

mod bad_input;
#[path = "../common/mod.rs"]
mod common;
mod fetch;
mod jpeg;
mod parity;
mod spec_and_model;
mod winograd;
