//! Shared by the records integration tests: an emulator with a fresh table, clients, records.
#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use embatch_localaws::emulator::{sdk_config_for, unique_name};
use embatch_localaws::Emulator;
use embatch_records::aws::retry_config;
use embatch_records::retry::RetryPolicy;
use embatch_records::table::create_table;
use embatch_records::vector::{VectorMetadata, VectorRecord};

/// A DynamoDB client for `endpoint` with the SDK retries of production
/// (`embatch_records::aws::retry_config`), their backoff shortened to 1 ms.
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

/// A deterministic pseudo-random vector whose bit patterns cover NaN payloads, infinities,
/// signed zeros and subnormals (any of which a lossy codec would alter).
pub fn vector(dimension: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dimension)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match i {
                0 => f32::from_bits(0x7fc0_0000 | (seed as u32 & 0x3f_ffff)),
                1 => -0.0,
                2 => f32::from_bits(1 + (seed as u32 & 0xff)),
                3 => f32::NEG_INFINITY,
                _ => f32::from_bits(state as u32),
            }
        })
        .collect()
}

pub fn record(id: &str, dimension: usize, seed: u64) -> VectorRecord {
    VectorRecord {
        image_id: id.to_string(),
        vector: vector(dimension, seed),
        meta: VectorMetadata {
            created: Some("2026-11-22T10:00:00Z".into()),
            source_uri: Some(format!("s3://images/{id}")),
            source_etag: Some(format!("etag-{seed}")),
            source_size: Some(1000 + seed),
            width: Some(640),
            height: Some(480),
            model: Some("resnet18-v2".into()),
            model_sha256: Some("ab".repeat(32)),
            run_id: Some("20261122T100000Z-abcdef".into()),
            job_id: Some("job:1".into()),
            manifest: Some(seed % 7),
        },
    }
}

pub fn records(n: usize, dimension: usize, prefix: &str) -> Vec<VectorRecord> {
    (0..n)
        .map(|i| record(&format!("{prefix}/{i:05}.jpg"), dimension, i as u64))
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bit-exact comparison of whole records (PartialEq on f32 would fail on NaN).
pub fn assert_same(got: &VectorRecord, want: &VectorRecord) {
    assert_eq!(got.image_id, want.image_id);
    assert_eq!(
        bits(&got.vector),
        bits(&want.vector),
        "vector of {}",
        want.image_id
    );
    assert_eq!(got.meta, want.meta, "metadata of {}", want.image_id);
}

/// Every item in the table, read straight from the emulator with the SDK (not our reader).
pub async fn raw_items(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    client
        .scan()
        .table_name(table)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("raw scan")
}
