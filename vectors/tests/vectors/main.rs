//! `embatch-vectors` and the reader library against the emulator, in one test binary (one
//! link, not one per file).

#[path = "../common/mod.rs"]
mod common;
mod parquet;
mod python_and_cli;
mod query_image;
mod vector_index;
