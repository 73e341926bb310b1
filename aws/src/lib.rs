//! How embatch talks to AWS, in one place:
//! - [`client`]: the one place aws-sdk clients are configured (endpoint overrides for the
//!   emulator, timeouts, the SDK's retries).
//! - [`retry`]: the one backoff policy on top of the SDK's (capped exponential, full jitter,
//!   bounded budget), and which errors it retries.
//! - [`sdk_error`]: SDK errors described without the raw response.
//! - `sdk_log` (feature `sdk-log`): SDK log events that print the access key id kept off.

pub mod client;
pub mod retry;
pub mod sdk_error;
#[cfg(any(feature = "sdk-log", test))]
pub mod sdk_log;
