//! A local stand-in for the cloud, for tests and the local run.
//!
//! - [`batch`]: plays AWS Batch (runs the worker per array child with Batch's environment), and
//!   creates the compute environment, job queue and job definition in the emulator.
//! - [`emulator`]: the AWS emulator (moto server) on a free 127.0.0.1 port, and aws-sdk config for it.
//! - [`fixture`]: what the emulator tests share: an emulator with a bucket and a table
//!   ([`fixture::Cloud`]), objects read back, vector records with awkward bit patterns.
//! - [`faults`]: a fault-injecting HTTP proxy in front of the emulator (throttling, unprocessed
//!   batch items, 5xx, dropped connections, delays), with counters of what it injected.
//! - [`http_server`]: the HTTP/1 server the fault proxy and the listing server run on.
//! - [`iam`]: IAM enforced on the proxy's requests, as AWS would (the emulator enforces none).
//! - [`inventory_report`]: S3 Inventory reports of an emulator bucket, laid out as AWS
//!   writes them (the emulator makes none).
//! - [`listing_server`]: S3's ListObjectsV2 alone over a generated bucket of any size, with
//!   S3's latency per page (the submitter's listing at millions of objects).
//! - [`python`], [`sample`], [`test_model`]: re-exported from `embatch-testkit` (no AWS).
//!
//! Nothing here is used by the deployed worker or submitter.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod batch;
pub mod bins;
pub mod emulator;
pub mod faults;
pub mod fixture;
pub mod http_server;
pub mod iam;
pub mod inventory_report;
pub mod listing_server;

pub use embatch_testkit::{python, run_ok, sample, test_model};
pub use emulator::Emulator;
