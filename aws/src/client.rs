//! The one place aws-sdk clients are configured: region, retries, timeouts, and the optional
//! endpoint override used against a local emulator.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The SDK's own variable for an endpoint override, read by every binary's `--endpoint-url`.
pub const ENDPOINT_URL_ENV: &str = "AWS_ENDPOINT_URL";
/// The SDK's own region variable.
pub const REGION_ENV: &str = "AWS_REGION";

/// How to reach AWS.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    /// Send every request here instead of AWS (e.g. `http://127.0.0.1:5000` for the
    /// emulator). Defaults to `AWS_ENDPOINT_URL` when unset, as the SDK does.
    pub endpoint_url: Option<String>,
    /// Region; defaults to the SDK's provider chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Longest one attempt of a request may take before it is abandoned and retried (the
    /// SDK's operation attempt timeout); [`DEFAULT_ATTEMPT_TIMEOUT`] when unset.
    pub attempt_timeout: Option<Duration>,
    /// The SDK's initial retry backoff; its default (1 s) when unset. Tests shorten it.
    pub initial_backoff: Option<Duration>,
}

impl AwsOptions {
    /// `endpoint_url` and `region` (the binaries' `--endpoint-url` and `--region`), the rest
    /// the defaults.
    pub fn at(endpoint_url: Option<String>, region: Option<String>) -> AwsOptions {
        AwsOptions {
            endpoint_url,
            region,
            ..AwsOptions::default()
        }
    }
}

/// The attempt timeout when [`AwsOptions::attempt_timeout`] is unset.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts the SDK makes per request (the first one included) for what its classifiers call
/// retryable; see [`crate::retry`] for what is retried on top, and why only that.
pub const SDK_MAX_ATTEMPTS: u32 = 5;

/// Loads the shared SDK configuration.
///
/// Retries: the SDK's standard mode, [`SDK_MAX_ATTEMPTS`] attempts with its exponential backoff
/// and jitter and its retry quota (layer 1 of [`crate::retry`]). Timeouts: 5 s to connect,
/// [`AwsOptions::attempt_timeout`] per attempt (default 60 s), so a stalled connection is
/// retried instead of hanging a child.
pub async fn load(options: &AwsOptions) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry_config(options.initial_backoff))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(
                    options.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT),
                )
                .build(),
        );
    if let Some(url) = &options.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    loader.load().await
}

/// The SDK's retry configuration: standard mode, [`SDK_MAX_ATTEMPTS`] attempts, and the
/// SDK's initial backoff unless `initial_backoff` says otherwise.
pub fn retry_config(initial_backoff: Option<Duration>) -> RetryConfig {
    let retry = RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS);
    match initial_backoff {
        Some(backoff) => retry.with_initial_backoff(backoff),
        None => retry,
    }
}

/// An S3 client. Path-style addressing is forced when an endpoint override is in use (an
/// emulator on 127.0.0.1 has no per-bucket host names).
pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = config.endpoint_url().is_some();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build(),
    )
}

/// A DynamoDB client.
pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}
