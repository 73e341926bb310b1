//! The emulated cloud's own tests (the emulator, the fault proxy, the Batch player), in one test
//! binary (one link, not one per file).

mod batch;
mod emulator;
mod faults;
