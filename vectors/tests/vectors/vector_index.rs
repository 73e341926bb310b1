//! `embatch-vectors index` against the emulator's Amazon S3 Vectors, with the fault proxy
//! throttling PutVectors: every vector written once, in batches within the service's limits,
//! what the service refuses named, and a re-run writing only what is missing or changed.

use std::collections::HashMap;
use std::process::Output;

use aws_sdk_s3vectors::types::VectorData;
use embatch_localaws::faults::{Fault, FaultRule, Match};
use embatch_localaws::fixture::{record, Cloud};
use embatch_records::vector::VectorRecord;

use crate::common::{self, store};

const BUCKET: &str = "embatch-index";

fn cli(s: &Cloud, endpoint: &str, args: &[&str]) -> Output {
    common::cli(s)
        .env("AWS_ENDPOINT_URL", endpoint)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `n` finite, non-zero vectors, and two the service refuses (NaN; all zeros).
fn contents(n: u64) -> Vec<VectorRecord> {
    let mut all: Vec<VectorRecord> = (0..n)
        .map(|i| {
            let mut r = record(&format!("images/{i:05}.jpg"), 512, i);
            r.vector = (0..512)
                .map(|j| ((i * 31 + j * 7) % 97) as f32 - 48.5)
                .collect();
            r
        })
        .collect();
    let mut nan = record("bad/nan.jpg", 512, 1);
    nan.vector[3] = f32::NAN;
    let mut zero = record("bad/zero.jpg", 512, 2);
    zero.vector = vec![0.0; 512];
    all.extend([nan, zero]);
    all
}

/// A cloud whose table holds [`contents`]`(n)`, with a vector bucket and a client for it.
async fn stocked(n: u64) -> (Cloud, aws_sdk_s3vectors::Client, Vec<VectorRecord>) {
    let s = Cloud::start().await;
    let client = aws_sdk_s3vectors::Client::new(&s.config);
    let bucket = client.create_vector_bucket().vector_bucket_name(BUCKET);
    bucket.send().await.unwrap();
    let written = contents(n);
    store(&s, written.clone()).await;
    (s, client, written)
}

/// Every key of `index` with its vector and metadata.
async fn listed(
    client: &aws_sdk_s3vectors::Client,
    index: &str,
) -> HashMap<String, (Vec<f32>, String)> {
    let mut out = HashMap::new();
    let mut token = None;
    loop {
        let page = client
            .list_vectors()
            .vector_bucket_name(BUCKET)
            .index_name(index)
            .return_data(true)
            .return_metadata(true)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        for v in page.vectors() {
            let Some(VectorData::Float32(data)) = v.data() else {
                panic!("{} has no float32 data", v.key())
            };
            let metadata = format!("{:?}", v.metadata());
            out.insert(v.key().to_string(), (data.clone(), metadata));
        }
        token = page.next_token().map(String::from);
        if token.is_none() {
            return out;
        }
    }
}

#[tokio::test]
async fn the_index_gets_every_vector_once_under_throttling_and_a_rerun_writes_only_changes() {
    let (s, client, written) = stocked(1_203).await;
    let endpoint = s.emulator.endpoint();

    let missing = cli(
        &s,
        &endpoint,
        &["index", "--vector-bucket", BUCKET, "--index", "photos"],
    );
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("does not exist: pass --create"),
        "{}",
        stderr(&missing)
    );

    // More throttled answers in a row than the SDK's own 5 attempts absorb.
    let throttled = FaultRule::new(
        Match::s3vectors("PutVectors"),
        Fault::Respond(
            429,
            r#"{"__type": "TooManyRequestsException", "message": "injected"}"#.into(),
        ),
    )
    .limit(8);
    let proxy = s.emulator.fault_proxy(3, [throttled]);
    let args = [
        "index",
        "--vector-bucket",
        BUCKET,
        "--index",
        "photos",
        "--create",
    ];
    let first = cli(&s, &proxy.endpoint(), &args);
    let err = stderr(&first);
    assert_eq!(first.status.code(), Some(1), "two vectors skipped: {err}");
    assert!(
        err.contains("1205 read, 1203 written, 0 already there, 2 skipped"),
        "{err}"
    );
    assert!(
        err.contains("skipped \"bad/nan.jpg\": the vector holds NaN"),
        "{err}"
    );
    assert!(
        err.contains("skipped \"bad/zero.jpg\": the vector is all zeros"),
        "{err}"
    );
    let counts = proxy.counts();
    assert_eq!(counts.injected(), 8, "{counts:?}");
    assert_eq!(counts.largest_batch["S3Vectors PutVectors"], 500);
    assert_eq!(counts.largest_batch["S3Vectors GetVectors"], 100);

    let index = listed(&client, "photos").await;
    assert_eq!(index.len(), 1203);
    for r in written.iter().filter(|r| r.image_id.starts_with("images/")) {
        let (data, metadata) = &index[&r.image_id];
        assert_eq!(data, &r.vector, "{}", r.image_id);
        for value in [r.meta.source_uri.as_ref(), r.meta.source_etag.as_ref()] {
            assert!(metadata.contains(value.unwrap().as_str()), "{metadata}");
        }
    }

    // A re-run writes nothing; one image re-embedded after its object changed is written again.
    let again = cli(&s, &endpoint, &args);
    assert!(
        stderr(&again).contains("0 written, 1203 already there"),
        "{}",
        stderr(&again)
    );
    let mut changed = written[7].clone();
    changed.meta.source_etag = Some("etag-new".into());
    changed.vector[0] += 1.0;
    store(&s, vec![changed.clone()]).await;
    let third = cli(&s, &endpoint, &args);
    assert!(
        stderr(&third).contains("1 written, 1202 already there"),
        "{}",
        stderr(&third)
    );
    assert_eq!(
        listed(&client, "photos").await[&changed.image_id].0,
        changed.vector
    );
}

#[tokio::test]
async fn a_parquet_export_loads_as_the_table_does() {
    let (s, client, written) = stocked(40).await;
    let endpoint = s.emulator.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let folder = out.to_str().unwrap();
    let export = cli(
        &s,
        &endpoint,
        &["export", "--format", "parquet", "--out", folder],
    );
    assert!(export.status.success(), "{}", stderr(&export));

    let args = [
        "index",
        "--vector-bucket",
        BUCKET,
        "--index",
        "from-export",
        "--create",
    ];
    let loaded = cli(
        &s,
        &endpoint,
        &[&args[..], &["--from-export", folder]].concat(),
    );
    assert!(
        stderr(&loaded).contains("42 read, 40 written"),
        "{}",
        stderr(&loaded)
    );
    let index = listed(&client, "from-export").await;
    assert_eq!(index.len(), 40);
    assert_eq!(index["images/00003.jpg"].0, written[3].vector);

    // An index of another dimension is refused, naming both.
    let other = client
        .create_index()
        .vector_bucket_name(BUCKET)
        .index_name("small")
        .data_type(aws_sdk_s3vectors::types::DataType::Float32)
        .dimension(8)
        .distance_metric(aws_sdk_s3vectors::types::DistanceMetric::Cosine)
        .send()
        .await;
    other.unwrap();
    let refused = cli(
        &s,
        &endpoint,
        &["index", "--vector-bucket", BUCKET, "--index", "small"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("holds 8-d vectors, these are 512-d"),
        "{}",
        stderr(&refused)
    );
}
