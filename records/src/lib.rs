//! The vector table, and the library for reading vectors back:
//! - [`vector`]: the DynamoDB item of one embedding (compatible with the original AWS sample).
//! - [`writer`]: the batched, retrying table writer the worker uses.
//! - [`reader`]: reading vectors back by id or as a stream of the whole table.
//! - [`export`]: the whole table as a `.npy` matrix plus an ids file.
//! - `parquet` (feature `parquet`): the whole table as Parquet files, and reading them back.
//! - [`nearest`]: exact cosine nearest neighbours over the table or an export, in memory.
//! - [`table`]: creating the table (tests and the local run).
//!
//! Clients come from `embatch_aws::config`, retries follow `embatch_aws::retry`. This crate
//! never depends on tract, the image stack or a CLI (checked by `scripts/test`).
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

/// The AWS client configuration (`embatch_aws::client`), re-exported so that reading vectors
/// needs this crate alone.
pub use embatch_aws::client;

pub mod export;
pub mod nearest;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod reader;
pub mod table;
pub mod vector;
pub mod writer;
