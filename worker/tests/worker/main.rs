//! The `embatch-worker` binary's tests, one module per concern, in one test binary (one link, not
//! one per file). Each test runs the worker as a child process, so they share nothing but the CPU.

mod array_child;
#[path = "../common/mod.rs"]
mod common;
mod hostile;
mod outages;
mod reliability;
mod resources;
