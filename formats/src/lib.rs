//! The formats that cross embatch's process boundaries, each defined here once:
//! - [`manifest`]: one JSON line per image, written by the submitter, read by the worker.
//! - [`image_id`]: how an S3 object becomes an `ImageId` (key, URI or file stem).
//! - [`report`]: the worker's per-image failures and final counts.
//! - [`run`]: where a run's files live in S3, the environment the submitter hands each
//!   Batch child, and the worker's exit codes.
//! - [`s3uri`]: `s3://bucket/key` parsed and printed.
//! - [`spec`]: the model spec (a TOML file beside the ONNX model), read by the worker and
//!   the engine to run the model and by the submitter to check the table's model.
//!
//! No AWS client and no CLI: what reads or writes these files (the fuzz targets included)
//! compiles this crate alone. The vector table's item lives with the table library
//! (`embatch_records::vector`), because it is made of DynamoDB attribute values.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod image_id;
pub mod manifest;
pub mod report;
pub mod run;
pub mod s3uri;
pub mod spec;
