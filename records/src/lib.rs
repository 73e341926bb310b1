//! The formats embatch writes and reads, and the library for reading vectors back.
//!
//! Every schema that crosses a process boundary is defined here once:
//! - [`manifest`]: one JSON line per image, written by the submitter, read by the worker.
//! - [`image_id`]: how an S3 object becomes an `ImageId` (key, URI or file stem).
//! - [`vector`]: the DynamoDB item of one embedding (compatible with the original AWS sample).
//! - [`report`]: the worker's per-image failures and final counts.
//! - [`run`]: where a run's files live in S3, the environment the submitter hands each
//!   Batch child, and the worker's exit codes.
//! - [`aws`]: the one place aws-sdk clients are configured.
//!
//! And the code that stores and reads vectors:
//! - [`writer`]: the batched, retrying table writer the worker uses.
//! - [`reader`]: reading vectors back by id or as a stream of the whole table.
//! - [`export`]: the whole table as a `.npy` matrix plus an ids file.
//! - [`table`]: creating the table (tests and the local run).
//! - [`retry`]: the one backoff policy (capped exponential, full jitter, bounded budget).
//!
//! This crate never depends on tract or the image stack.

pub mod aws;
pub mod export;
pub mod image_id;
pub mod manifest;
pub mod reader;
pub mod report;
pub mod retry;
pub mod run;
pub mod s3uri;
pub mod sdk_error;
pub mod sdk_log;
pub mod table;
pub mod vector;
pub mod writer;
