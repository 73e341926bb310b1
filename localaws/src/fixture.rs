//! What the emulator tests share: an emulator with a fresh bucket and vector table and
//! clients for them ([`Cloud`]), reading an object back, and vector records whose bit
//! patterns a lossy codec would alter ([`records`], [`assert_same`]).

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use embatch_aws::client;
use embatch_aws::objects::get_if_exists;
use embatch_formats::s3uri::S3Uri;
use embatch_records::table::create_table;
use embatch_records::vector::{VectorMetadata, VectorRecord};

use crate::emulator::unique_name;
use crate::faults::{FaultPlan, FaultProxy, FaultRule};
use crate::Emulator;

/// An emulator with one fresh bucket and one fresh vector table (created as the stack does:
/// `embatch_records::table::create_table`), and clients configured as production configures
/// them (`embatch_aws::client`).
pub struct Cloud {
    /// Stopped when the `Cloud` is dropped (and with the thread that started it).
    pub emulator: Emulator,
    /// The SDK configuration for the emulator.
    pub config: SdkConfig,
    /// Path-style S3, as the binaries use it.
    pub s3: aws_sdk_s3::Client,
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// A bucket named `images-<random>`.
    pub bucket: String,
    /// A vector table named `vectors-<random>`.
    pub table: String,
}

impl Cloud {
    /// Starts the emulator and creates the bucket and the table; panics (a test fixture) if
    /// the emulator cannot start.
    pub async fn start() -> Cloud {
        let emulator = Emulator::start().expect("the emulator starts");
        let config = emulator.sdk_config().await;
        let (s3, dynamodb) = (client::s3(&config), client::dynamodb(&config));
        let bucket = unique_name("images");
        let table = unique_name("vectors");
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket created");
        create_table(&dynamodb, &table)
            .await
            .expect("table created");
        Cloud {
            emulator,
            config,
            s3,
            dynamodb,
            bucket,
            table,
        }
    }

    /// Uploads `bytes` to this cloud's bucket; returns the ETag without quotes.
    pub async fn put(&self, key: &str, bytes: &[u8]) -> String {
        put_bytes(&self.s3, &S3Uri::new(&self.bucket, key), bytes).await
    }

    /// The object's bytes, or `None` if there is no such key; panics on any other error.
    pub async fn get(&self, uri: &S3Uri) -> Option<Vec<u8>> {
        get_bytes(&self.s3, uri).await
    }
}

impl Emulator {
    /// A fault proxy in front of this emulator: `rules` in order of precedence, every random
    /// choice seeded by `seed`. Panics (a test fixture) if it cannot start.
    pub fn fault_proxy(&self, seed: u64, rules: impl IntoIterator<Item = FaultRule>) -> FaultProxy {
        let rules = rules.into_iter().collect();
        FaultProxy::start(&self.endpoint(), FaultPlan { seed, rules }).expect("the proxy starts")
    }
}

/// Uploads `bytes` to `uri`; returns the ETag without quotes. Panics on an error.
pub async fn put_bytes(s3: &aws_sdk_s3::Client, uri: &S3Uri, bytes: &[u8]) -> String {
    let out = s3
        .put_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .body(bytes.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("upload to {uri}: {e:?}"));
    out.e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// Every key under `prefix` in `bucket`, by the SDK's own paginator (not the submitter's
/// listing); panics on an error.
pub async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("listing s3://{bucket}/{prefix}: {e:?}"));
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .map(str::to_string),
        );
    }
    keys
}

/// The object's bytes, or `None` if there is no such key; panics on any other error.
pub async fn get_bytes(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Option<Vec<u8>> {
    get_if_exists(s3, uri)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
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

/// A record with every metadata field set and [`vector`]'s bit patterns.
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

/// `n` records with ids `<prefix>/00000.jpg`, ….
pub fn records(n: usize, dimension: usize, prefix: &str) -> Vec<VectorRecord> {
    (0..n)
        .map(|i| record(&format!("{prefix}/{i:05}.jpg"), dimension, i as u64))
        .collect()
}

/// The values' bit patterns (`PartialEq` on f32 fails on NaN).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bit-exact comparison of whole records.
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

/// As many records as wanted, each [`assert_same`] as its counterpart, in order.
pub fn assert_all_same(got: &[VectorRecord], want: &[VectorRecord]) {
    assert_eq!(got.len(), want.len(), "records");
    for (got, want) in got.iter().zip(want) {
        assert_same(got, want);
    }
}

/// Every item in the table, read straight from the emulator with the SDK (not our reader),
/// consistently.
pub async fn raw_items(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<HashMap<String, AttributeValue>> {
    dynamodb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("raw scan")
}
