//! Shared by the records integration tests: an emulator with a fresh table, clients, records.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::time::Duration;

use aws_config::retry::RetryConfig;
use embatch_aws::client::retry_config;
use embatch_aws::retry::RetryPolicy;
use embatch_localaws::emulator::{sdk_config_for, unique_name};
use embatch_localaws::Emulator;
use embatch_records::table::create_table;

/// A DynamoDB client for `endpoint` with the SDK retries of production
/// (`embatch_aws::client::retry_config`), their backoff shortened to 1 ms.
pub async fn client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    with_retries(endpoint, retry_config(Some(Duration::from_millis(1)))).await
}

/// A DynamoDB client for `endpoint` whose SDK makes one attempt per request, so that every
/// throttle reaches our own retry layer (for counting its attempts).
pub async fn client_without_sdk_retries(endpoint: &str) -> aws_sdk_dynamodb::Client {
    with_retries(endpoint, RetryConfig::disabled()).await
}

async fn with_retries(endpoint: &str, retry: RetryConfig) -> aws_sdk_dynamodb::Client {
    let sdk = sdk_config_for(endpoint).await;
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(retry)
            .build(),
    )
}

/// An emulator with one fresh vector table.
pub struct Setup {
    pub emulator: Emulator,
    pub table: String,
    /// Straight to the emulator (for checks that must not go through a fault proxy).
    pub direct: aws_sdk_dynamodb::Client,
}

pub async fn setup() -> Setup {
    let emulator = Emulator::start().expect("emulator starts");
    let direct = client(&emulator.endpoint()).await;
    let table = unique_name("vectors");
    create_table(&direct, &table).await.expect("table created");
    Setup {
        emulator,
        table,
        direct,
    }
}

/// Quick retries so budget tests end fast; generous attempts so fault tests converge.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(20),
        max_attempts,
        max_elapsed: Duration::from_secs(120),
    }
}

pub use embatch_localaws::fixture::{
    assert_all_same, assert_same, bits, raw_items, record, records, vector,
};
