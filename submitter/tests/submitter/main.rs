//! The `embatch` binary against the emulator, in one test binary (one link, not one per file).
//! `status_failed.rs` stays a binary of its own: it sets an emulator variable for its process.

#[path = "../common/mod.rs"]
mod common;
mod inventory;
mod listing;
mod memory;
mod model;
mod status;
mod submit;
