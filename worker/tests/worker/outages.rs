//! Outages the worker cannot ride out: the emulator killed mid-run, the table failing past
//! the retry budget, an image that never downloads. Each time the child must exit 75 (so AWS
//! Batch retries it) in bounded time, record no valid image as failed, and a re-run must
//! complete with every image stored exactly once. Also: responses that stall past the attempt
//! timeout are abandoned and retried. The `RELIABILITY ...` lines on stderr are the numbers in
//! RELIABILITY.md (`cargo test --release -p embatch-worker --locked --test worker outages:: -- --nocapture`).

use std::process::ExitStatus;
use std::time::Duration;

use embatch_aws::client::SDK_MAX_ATTEMPTS;
use embatch_formats::run::exit;
use embatch_localaws::faults::{Fault, FaultProxy, FaultRule, Match};
use embatch_localaws::fixture::raw_items;

use crate::common;
use common::*;

/// How the worker's last log line names a dead endpoint.
const CONNECTION_REFUSED: &str = "Connection refused";

/// Longest a child may take to give up on a dead dependency (the retry budgets are ~2 min).
const GIVE_UP_WITHIN: Duration = Duration::from_secs(300);

/// Asserts the child gave up with 75, saying why (`cause` in its last log line), unharmed.
fn assert_gave_up(status: ExitStatus, stderr: &str, cause: &str) {
    assert_eq!(status.code(), Some(exit::TRANSIENT), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("\"level\":\"ERROR\"") && last.contains(cause),
        "the last log line says why ({cause}): {last}"
    );
}

/// Asserts no image was recorded as failed: the failure report is absent or empty.
async fn assert_no_failures_recorded(fx: &Fixture) {
    if let Some(text) = fx.get(&fx.layout.failures(0)).await {
        assert!(
            text.is_empty(),
            "valid images recorded as failed: {}",
            String::from_utf8_lossy(&text)
        );
    }
}

/// A re-run with no faults: exit 0, `skipped` already stored, the rest written, every image
/// stored once with the engine's vector.
async fn assert_rerun_completes(fx: &Fixture, images: &[(String, Vec<u8>)], skipped: u64) {
    let (status, stderr) = run(fx.worker(0));
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let summary = fx.summary(0).await;
    let n = images.len() as u64;
    assert_eq!(
        (
            summary.images,
            summary.written,
            summary.skipped,
            summary.failed
        ),
        (n, n - skipped, skipped, 0),
        "{stderr}"
    );
    assert_eq!(fx.stored().await, images.len(), "one item per image");
    fx.assert_vectors(&fx.engine(), images).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_killed_mid_run_exits_75_and_a_rerun_after_its_restart_completes() {
    let mut fx = Fixture::new().await;
    let (lines, images) = fx.upload_manifest(0, "outage", 120).await;

    let mut running = start(fx.worker(0));
    fx.wait_until_stored(1, &mut running.child).await;
    // What survives the crash: the table as it is now (AWS keeps its state; moto does not,
    // so it is put back after the restart, with the images and the manifest).
    let survived = raw_items(&fx.dynamodb, &fx.table).await;
    fx.emulator.crash();
    let (status, stderr, gave_up_after) = running.finish(GIVE_UP_WITHIN).await;
    assert_gave_up(status, &stderr, CONNECTION_REFUSED);

    fx.emulator
        .restart()
        .expect("the emulator restarts on its port");
    fx.s3
        .create_bucket()
        .bucket(&fx.bucket)
        .send()
        .await
        .unwrap();
    embatch_records::table::create_table(&fx.dynamodb, &fx.table)
        .await
        .unwrap();
    for ((_, bytes), line) in images.iter().zip(&lines) {
        let again = fx.put(&line.key, bytes).await;
        assert_eq!(again.etag, line.etag, "same bytes, same ETag");
    }
    fx.put_manifest(0, &lines).await;
    for item in &survived {
        fx.dynamodb
            .put_item()
            .table_name(&fx.table)
            .set_item(Some(item.clone()))
            .send()
            .await
            .unwrap();
    }
    eprintln!(
        "RELIABILITY emulator-killed: images={} stored_before_kill={} exit={:?} gave_up_after_ms={}",
        images.len(),
        survived.len(),
        status.code(),
        gave_up_after.as_millis()
    );
    assert!(survived.len() < images.len(), "killed mid-run");
    assert_rerun_completes(&fx, &images, survived.len() as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_failing_past_the_retry_budget_exits_75_and_a_rerun_completes() {
    let fx = Fixture::new().await;
    let (_, images) = fx.upload_manifest(0, "tabledown", 30).await;
    let fault = FaultRule::new(Match::dynamodb("BatchWriteItem"), Fault::Status(500));
    let proxy = fx.emulator.fault_proxy(75, [fault]);

    let (status, stderr, took) = start(fx.worker_via(proxy.env(), 0))
        .finish(GIVE_UP_WITHIN)
        .await;
    let counts = proxy.counts();
    eprintln!(
        "RELIABILITY table-down: images={} BatchWriteItem={} injected={} exit={:?} gave_up_after_ms={}",
        images.len(),
        counts.operation("BatchWriteItem"),
        counts.injected(),
        status.code(),
        took.as_millis()
    );
    assert_gave_up(status, &stderr, "not written to DynamoDB");
    assert_no_failures_recorded(&fx).await;
    assert!(
        counts.operation("BatchWriteItem") > 1,
        "retried: {counts:?}"
    );
    assert_eq!(fx.stored().await, 0, "nothing got through");
    assert_rerun_completes(&fx, &images, 0).await;
}

/// Child 0 over `n` images under `prefix/`, every GET of image `failing` answered with `fault`,
/// the worker given `args`; asserts the child gave up (75) naming that image. Returns the
/// images, the proxy and how long the child took.
async fn give_up_on_one_image(
    fx: &Fixture,
    (prefix, n, failing): (&str, u32, u32),
    fault: Fault,
    args: &[&str],
) -> (Vec<(String, Vec<u8>)>, FaultProxy, Duration) {
    let (_, images) = fx.upload_manifest(0, prefix, n).await;
    let key = format!("{prefix}/{failing:05}");
    let rule = FaultRule::new(Match::s3_get_under(&fx.bucket, &key), fault);
    let proxy = fx.emulator.fault_proxy(u64::from(failing), [rule]);
    let mut command = fx.worker_via(proxy.env(), 0);
    command.args(args);
    let (status, stderr, took) = start(command).finish(GIVE_UP_WITHIN).await;
    assert_gave_up(status, &stderr, &key);
    (images, proxy, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_failing_past_the_retries_exits_75_and_a_rerun_completes() {
    let fx = Fixture::new().await;
    let image = ("s3down", 12, 3);
    let (images, proxy, took) = give_up_on_one_image(&fx, image, Fault::Status(503), &[]).await;
    let counts = proxy.counts();
    let stored = fx.stored().await;
    eprintln!(
        "RELIABILITY s3-image-down: images={} injected={} exit=75 gave_up_after_ms={} stored={}",
        images.len(),
        counts.injected(),
        took.as_millis(),
        stored
    );
    assert_no_failures_recorded(&fx).await;
    // One retry layer per failure class: the SDK's attempts, and none of ours on top.
    assert_eq!(
        counts.per_rule[0],
        u64::from(SDK_MAX_ATTEMPTS),
        "GETs of the failing image: {counts:?}"
    );
    // The other images were not held hostage: whatever was embedded before the child gave up
    // is stored, and the re-run skips it.
    assert!(stored < images.len());
    assert_rerun_completes(&fx, &images, stored as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_every_time_costs_exactly_the_fetch_attempts() {
    let fx = Fixture::new().await;
    let args = ["--fetch-attempts", "4"];
    let (images, proxy, _) =
        give_up_on_one_image(&fx, ("cut", 6, 2), Fault::ResetMidBody, &args).await;
    // The SDK does not retry a streaming body: every attempt is ours, one GET each.
    assert_eq!(proxy.counts().per_rule[0], 4, "{:?}", proxy.counts());
    assert_rerun_completes(&fx, &images, fx.stored().await as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stalling_past_the_attempt_timeout_are_retried() {
    let fx = Fixture::new().await;
    let (_, images) = fx.upload_manifest(0, "stall", 24).await;
    let images_only = || Match::s3_get_under(&fx.bucket, "stall/");
    let silence = Duration::from_secs(60);
    let proxy = fx.emulator.fault_proxy(
        77,
        [
            // The first three image GETs answer late, the next three stall mid-body.
            FaultRule::new(images_only(), Fault::Delay(silence)).limit(3),
            FaultRule::new(images_only(), Fault::StallMidBody(silence)).limit(3),
        ],
    );

    let mut command = fx.worker_via(proxy.env(), 0);
    command.args(["--attempt-timeout-secs", "2"]);
    let (status, stderr, took) = start(command).finish(GIVE_UP_WITHIN).await;
    let counts = proxy.counts();
    eprintln!(
        "RELIABILITY s3-stalls: images={} GETs={} injected={} by_kind={:?} exit={:?} took_ms={}",
        images.len(),
        counts.operation("S3 GET"),
        counts.injected(),
        counts.by_kind,
        status.code(),
        took.as_millis()
    );
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    for kind in ["delay", "stall-mid-body"] {
        assert_eq!(counts.kind(kind), 3, "{kind} injected: {counts:?}");
    }
    // Abandoned after the 2 s timeout, not after the 60 s silence.
    assert!(took < silence, "took {took:?}");
    fx.assert_all_written(0, images.len(), &stderr).await;
    fx.assert_vectors(&fx.engine(), &images).await;
}
