//! What embatch retries, and how: one retry layer per failure class.
//!
//! 1. **The SDK** ([`crate::client`]: standard mode, [`crate::client::SDK_MAX_ATTEMPTS`] attempts per
//!    request, its own backoff and retry quota) retries everything its classifiers call
//!    retryable: throttling codes, HTTP 500/502/503/504, timeouts, connection errors. Nothing
//!    of ours retries those again: a 5xx or timeout that outlasts the SDK ends the call
//!    ([`is_transient_sdk_error`] then says "retry the child later", exit 75).
//! 2. **Ours** ([`RetryPolicy`], this module) retries only what the SDK cannot see or gives up
//!    on too early:
//!    - DynamoDB `UnprocessedItems` / `UnprocessedKeys` (an HTTP 200 answer);
//!    - throttling that outlasts the SDK ([`is_throttling`]): under sustained throttling its
//!      attempts run out and its retry quota drains (then it stops retrying at all), while a
//!      new on-demand table keeps throttling for minutes until it scales;
//!    - S3 bodies cut short or stalled (the SDK does not retry a streaming body).
//!
//! So one call makes at most `SDK_MAX_ATTEMPTS x RetryPolicy::max_attempts` HTTP attempts,
//! and only while throttled; a persistent 5xx costs exactly `SDK_MAX_ATTEMPTS`.
//!
//! The policy:
//! Capped exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
//! And Jitter"): before retry `n` (1-based) wait a uniformly random time in
//! `0..=min(cap, base * 2^(n-1))`. Two bounds end the retrying: at most `max_attempts`
//! attempts in all, and no retry starts once `max_elapsed` has passed since the first attempt.
//!
//! ```
//! use std::time::Duration;
//! use embatch_aws::retry::{retry, RetryPolicy};
//!
//! # tokio_test_runtime(async {
//! let policy = RetryPolicy { base: Duration::from_millis(1), ..RetryPolicy::default() };
//! let mut calls = 0;
//! let value = retry(&policy, |e: &&str| *e == "busy", || {
//!     calls += 1;
//!     let outcome = if calls < 3 { Err("busy") } else { Ok(42) };
//!     async move { outcome }
//! })
//! .await;
//! assert_eq!(value, Ok(42));
//! assert_eq!(calls, 3);
//! # });
//! # fn tokio_test_runtime(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
//! # }
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use rand::Rng;

/// How long and how often to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling of the first retry's wait.
    pub base: Duration,
    /// The largest ceiling of any wait.
    pub cap: Duration,
    /// Attempts in all, the first one included (so `1` means never retry).
    pub max_attempts: u32,
    /// No retry starts once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 50 ms base, 10 s cap, 30 attempts, 10 minutes: long enough to ride out a new on-demand
    /// table's throttling while it scales (deploy/README.md, "DynamoDB write capacity"), short
    /// enough that a table that never recovers fails the child (which AWS Batch then retries)
    /// instead of hanging it. Only throttling and unprocessed items spend it.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(10),
            max_attempts: 30,
            max_elapsed: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// A fresh schedule of waits, starting now.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            attempts: 1,
            started: Instant::now(),
        }
    }

    /// The ceiling of the wait before retry `retry` (1-based): `min(cap, base * 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// The waits of one unit of work, which has made its first attempt when this is created.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    attempts: u32,
    started: Instant,
}

impl Backoff {
    /// Attempts made so far (the first one included).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt, or `None` when the budget is spent. Counts the
    /// attempt: call it once per retry.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts
            || self.started.elapsed() >= self.policy.max_elapsed
        {
            return None;
        }
        let ceiling = self.policy.ceiling(self.attempts);
        self.attempts += 1;
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(rand::rng().random_range(0..=nanos)))
    }

    /// Waits before the next attempt; `false` (without waiting) when the budget is spent.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.next_delay()
    }
}

/// Runs `op` until it succeeds, fails with an error `is_transient` rejects, or the policy's
/// budget is spent; returns the last result.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = policy.backoff();
    loop {
        match op().await {
            Err(e) if is_transient(&e) && backoff.wait().await => {
                tracing::debug!(
                    attempt = backoff.attempts(),
                    "retrying after a transient error"
                );
            }
            outcome => return outcome,
        }
    }
}

/// Whether an aws-sdk error is throttling, by the SDK's own list of throttling codes
/// (`aws_runtime`'s `THROTTLING_ERRORS`: DynamoDB's `ProvisionedThroughputExceededException`
/// and `ThrottlingException`, S3's `SlowDown`, ...) or HTTP 429.
pub fn is_throttling<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            service.raw().status().as_u16() == 429
                || err
                    .code()
                    .is_some_and(|code| THROTTLING_ERRORS.contains(&code))
        }
        _ => false,
    }
}

/// Whether an aws-sdk error (of any service: the type is shared) may pass if tried again
/// later: timeouts, connection failures, truncated responses, throttling, 5xx answers and the
/// SDK's transient codes (`TRANSIENT_ERRORS`). Everything else (validation, access denied,
/// missing table or key) is permanent. Used to classify an error the SDK's retries did not
/// fix, not to retry it again.
pub fn is_transient_sdk_error<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        SdkError::ServiceError(service) => {
            service.raw().status().as_u16() >= 500
                || is_throttling(err)
                || err
                    .code()
                    .is_some_and(|code| TRANSIENT_ERRORS.contains(&code))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            max_attempts,
            max_elapsed: Duration::from_secs(3600),
        }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = policy(100);
        let ms = |n| p.ceiling(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [100, 200, 400, 800, 1000, 1000]
        );
    }

    #[test]
    fn waits_are_jittered_below_the_ceiling_and_bounded_in_number() {
        let p = policy(6);
        let waits: Vec<Duration> = p.backoff().collect();
        assert_eq!(waits.len(), 5, "6 attempts = 5 retries");
        for (i, w) in waits.iter().enumerate() {
            assert!(*w <= p.ceiling(i as u32 + 1), "wait {i} = {w:?}");
        }
        // Full jitter: over many draws the waits are spread, not pinned to the ceiling.
        let draws: Vec<Duration> = (0..200).filter_map(|_| p.backoff().next()).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(50)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(50)));
    }

    #[test]
    fn the_elapsed_budget_ends_retries() {
        let p = RetryPolicy {
            max_elapsed: Duration::ZERO,
            ..policy(100)
        };
        assert_eq!(p.backoff().next(), None);
    }

    #[tokio::test]
    async fn retry_stops_at_a_permanent_error_and_at_the_budget() {
        let fast = RetryPolicy {
            base: Duration::from_micros(10),
            ..policy(4)
        };
        // A permanent error ends at once; a transient one after the budget's 4 attempts.
        for (error, attempts) in [("permanent", 1), ("transient", 4)] {
            let mut calls = 0;
            let r: Result<(), &str> = retry(
                &fast,
                |e| *e == "transient",
                || {
                    calls += 1;
                    async move { Err(error) }
                },
            )
            .await;
            assert_eq!((r, calls), (Err(error), attempts));
        }
    }
}
