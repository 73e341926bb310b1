//! The fault proxy itself: each fault reaches a real aws-sdk client as AWS would send it, is
//! counted, and the same seed makes the same decisions.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use embatch_localaws::emulator::{sdk_config_for, unique_name};
use embatch_localaws::faults::{Fault, FaultRule, Match};
use embatch_localaws::Emulator;

/// A client with `attempts` attempts of at most 500 ms each (short, so the delay fault is seen
/// as a timeout).
async fn s3(endpoint: &str, attempts: u32) -> aws_sdk_s3::Client {
    s3_with_timeout(endpoint, attempts, Duration::from_millis(500)).await
}

async fn s3_with_timeout(
    endpoint: &str,
    attempts: u32,
    attempt_timeout: Duration,
) -> aws_sdk_s3::Client {
    let sdk = sdk_config_for(endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(attempts)
                    .with_initial_backoff(Duration::from_millis(1)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .build(),
            )
            .build(),
    )
}

/// A bucket holding one 64 KiB object `k`, created straight on the emulator.
async fn bucket_with_object(emulator: &Emulator) -> (String, Vec<u8>) {
    // Setup goes straight to the emulator, which can be slow on a loaded machine: no tight timeout.
    let direct = s3_with_timeout(&emulator.endpoint(), 3, Duration::from_secs(30)).await;
    let bucket = unique_name("faults");
    direct.create_bucket().bucket(&bucket).send().await.unwrap();
    let body: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
    direct
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    (bucket, body)
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<u8>, String> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key("k")
        .send()
        .await
        .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    out.body
        .collect()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("body: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
}

#[tokio::test]
async fn s3_faults_reach_the_client_and_are_counted() {
    let emulator = Emulator::start().unwrap();
    let (bucket, body) = bucket_with_object(&emulator).await;
    let rules = vec![
        FaultRule::new(Match::s3_get(), Fault::ResetMidBody).limit(1),
        FaultRule::new(Match::s3_get(), Fault::Throttle).limit(1),
        FaultRule::new(Match::s3_get(), Fault::Status(500)).limit(1),
        FaultRule::new(Match::s3_get(), Fault::Reset).limit(1),
        FaultRule::new(Match::s3_get(), Fault::Delay(Duration::from_millis(1500))).limit(1),
    ];
    let proxy = emulator.fault_proxy(1, rules);
    let client = s3(&proxy.endpoint(), 1).await;

    // Rules fire in order, one each: the client sees each failure in turn.
    let truncated = get(&client, &bucket).await.unwrap_err();
    assert!(
        truncated.starts_with("body:"),
        "the headers arrived, the body broke: {truncated}"
    );
    let slow_down = get(&client, &bucket).await.unwrap_err();
    assert!(slow_down.contains("SlowDown"), "{slow_down}");
    let internal = get(&client, &bucket).await.unwrap_err();
    assert!(internal.contains("InternalError"), "{internal}");
    let reset = get(&client, &bucket).await.unwrap_err();
    assert!(!reset.starts_with("body:"), "no answer at all: {reset}");
    let timeout = get(&client, &bucket).await.unwrap_err();
    assert!(timeout.to_lowercase().contains("timeout"), "{timeout}");
    assert_eq!(
        get(&client, &bucket).await.unwrap(),
        body,
        "rules spent: passes through"
    );

    let counts = proxy.counts();
    assert_eq!(counts.per_rule, vec![1, 1, 1, 1, 1]);
    assert_eq!(counts.injected(), 5);
    assert_eq!(counts.operation("S3 GET"), 6);
    for kind in ["reset-mid-body", "throttle", "status", "reset", "delay"] {
        assert_eq!(counts.by_kind[kind], 1, "{kind}");
    }

    // The SDK's own retries get through the same faults.
    let proxy2 = emulator.fault_proxy(
        2,
        [FaultRule::new(Match::s3_get(), Fault::Throttle).limit(2)],
    );
    let patient2 = s3(&proxy2.endpoint(), 4).await;
    assert_eq!(get(&patient2, &bucket).await.unwrap(), body);
    assert_eq!(proxy2.counts().operation("S3 GET"), 3);
}

#[tokio::test]
async fn other_requests_pass_through_untouched() {
    let emulator = Emulator::start().unwrap();
    let (bucket, body) = bucket_with_object(&emulator).await;
    let fault = FaultRule::new(Match::s3_get_under(&bucket, "other/"), Fault::Reset);
    let proxy = emulator.fault_proxy(9, [fault]);
    let client = s3(&proxy.endpoint(), 1).await;
    assert_eq!(get(&client, &bucket).await.unwrap(), body);
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 1);
    assert_eq!(proxy.counts().injected(), 0);
    assert_eq!(proxy.counts().requests, 2);
}

/// Sends the same sequence of S3 GETs through a fresh proxy; returns which failed.
async fn outcomes(emulator: &Emulator, bucket: &str, seed: u64) -> Vec<bool> {
    let flaky = FaultRule::new(Match::s3_get(), Fault::Status(503)).probability(0.5);
    let proxy = emulator.fault_proxy(seed, [flaky]);
    let client = s3(&proxy.endpoint(), 1).await;
    let mut failed = Vec::new();
    for _ in 0..40 {
        failed.push(get(&client, bucket).await.is_err());
    }
    assert_eq!(
        proxy.counts().injected(),
        failed.iter().filter(|f| **f).count() as u64
    );
    failed
}

#[tokio::test]
async fn the_same_seed_makes_the_same_decisions() {
    let emulator = Emulator::start().unwrap();
    let (bucket, _) = bucket_with_object(&emulator).await;
    let a = outcomes(&emulator, &bucket, 42).await;
    let b = outcomes(&emulator, &bucket, 42).await;
    let c = outcomes(&emulator, &bucket, 43).await;
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed, other decisions");
    let failures = a.iter().filter(|f| **f).count();
    assert!(
        (8..=32).contains(&failures),
        "about half of 40 fail: {failures}"
    );
}

#[tokio::test]
async fn a_child_process_can_use_the_proxy_through_its_environment() {
    let emulator = Emulator::start().unwrap();
    let (bucket, _) = bucket_with_object(&emulator).await;
    let fault = FaultRule::new(Match::s3_get(), Fault::Throttle).limit(1);
    let proxy = emulator.fault_proxy(4, [fault]);
    let python = embatch_localaws::python::interpreter().unwrap();
    // A blocking child: the proxy runs on its own thread, so it keeps answering.
    let script = format!(
        "import boto3, botocore.config as c\n\
         s3 = boto3.client('s3', config=c.Config(retries={{'max_attempts': 3, 'mode': 'standard'}}, s3={{'addressing_style': 'path'}}))\n\
         print(len(s3.get_object(Bucket='{bucket}', Key='k')['Body'].read()))\n"
    );
    let out = embatch_localaws::run_ok(
        std::process::Command::new(python)
            .args(["-c", &script])
            .envs(proxy.env()),
        "boto3 through the proxy",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65536");
    assert_eq!(proxy.counts().injected(), 1);
    assert_eq!(
        proxy.counts().operation("S3 GET"),
        2,
        "throttled once, retried once"
    );
}
