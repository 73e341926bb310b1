//! How embatch talks to AWS, in one place:
//! - [`client`]: the one place aws-sdk clients are configured (endpoint overrides for the
//!   emulator, timeouts, the SDK's retries).
//! - [`objects`]: small whole objects in S3 written and read back (manifests, plans, reports).
//! - [`retry`]: the one backoff policy on top of the SDK's (capped exponential, full jitter,
//!   bounded budget), and which errors it retries.
//! - [`sdk_error`]: SDK errors described without the raw response.
//! - `sdk_log` (feature `sdk-log`): the binaries' log filter, and SDK log events that print
//!   the access key id kept off.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod client;
pub mod objects;
pub mod retry;
pub mod sdk_error;
#[cfg(any(feature = "sdk-log", test))]
pub mod sdk_log;
