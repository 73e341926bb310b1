//! Reliability of the `embatch-worker` binary, measured: S3 and DynamoDB faults injected on the
//! wire by the fault proxy (fixed seeds); hostile input files are in `hostile.rs`. Each
//! test asserts that every manifest line ends as exactly one stored vector (equal to the
//! engine's on the same bytes), that the worker exits 0, and that the proxy really injected
//! faults. The `RELIABILITY ...` lines on stderr are the numbers in RELIABILITY.md
//! (`cargo test --release -p embatch-worker --test worker reliability:: -- --nocapture`).

use embatch_formats::report::ChildSummary;
use embatch_formats::run::exit;
use embatch_localaws::faults::{Fault, FaultCounts, FaultProxy, FaultRule, Match};

use crate::common;
use common::*;

/// One line for RELIABILITY.md.
fn report(class: &str, images: usize, counts: &FaultCounts, summary: &ChildSummary) {
    eprintln!(
        "RELIABILITY {class}: images={images} requests={} operations={:?} injected={} by_kind={:?} \
         withheld={} per_rule={:?} -> written={} skipped={} failed={}",
        counts.requests,
        counts.operations,
        counts.injected(),
        counts.by_kind,
        counts.withheld,
        counts.per_rule,
        summary.written,
        summary.skipped,
        summary.failed
    );
}

/// Runs array child `n` (a manifest of `images`) through `proxy` and prints its RELIABILITY
/// line; asserts it exited 0 having skipped `skipped` images already stored, written the
/// rest and failed none. Returns what the proxy counted.
async fn run_through(
    fx: &Fixture,
    proxy: &FaultProxy,
    n: usize,
    class: &str,
    images: usize,
    skipped: u64,
) -> FaultCounts {
    let (status, stderr) = run(fx.worker_via(proxy.env(), n));
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let counts = proxy.counts();
    let summary = fx.summary(n).await;
    report(class, images, &counts, &summary);
    let images = images as u64;
    assert_eq!(
        (
            summary.images,
            summary.written,
            summary.skipped,
            summary.failed
        ),
        (images, images - skipped, skipped, 0),
        "{stderr}"
    );
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5xx_slowdown_and_mid_body_resets_on_a_third_of_gets_lose_no_image() {
    let fx = Fixture::new().await;
    let engine = fx.engine();
    let (lines, images) = fx.upload_manifest(0, "s3faults", 40).await;
    // The first four image GETs answered 503 (first attempts: the SDK retries them), one later
    // GET throttled for certain, then ~13% throttled (the SDK's attempts, then ours) and ~13%
    // cut mid-body (ours) at random. 5xx at random too would sometimes meet one image five
    // times running: an outage, exit 75. (The draws depend on the request's URI, whose bucket
    // name is new each run: without the sure one, 1 run in ~500 drew no throttle at all.)
    let images_only = || Match::s3_get_under(&fx.bucket, "s3faults/");
    let proxy = fx.emulator.fault_proxy(
        2026,
        [
            FaultRule::new(images_only(), Fault::Status(503)).limit(4),
            FaultRule::new(images_only(), Fault::Throttle)
                .skip(8)
                .limit(1),
            FaultRule::new(images_only(), Fault::Throttle).probability(0.13),
            FaultRule::new(images_only(), Fault::ResetMidBody).probability(0.13),
        ],
    );

    let counts = run_through(&fx, &proxy, 0, "s3", lines.len(), 0).await;
    for kind in ["status", "throttle", "reset-mid-body"] {
        assert!(
            counts.kind(kind) > 0,
            "no {kind} fault injected: {counts:?}"
        );
    }
    assert!(
        counts.operation("S3 GET") > lines.len() as u64,
        "faulted GETs were retried: {counts:?}"
    );
    assert_eq!(fx.stored().await, lines.len(), "one item per image");
    fx.assert_vectors(&engine, &images).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_throttling_and_unprocessed_items_and_keys_lose_no_vector() {
    let fx = Fixture::new().await;
    let engine = fx.engine();
    let (lines, images) = fx.upload_manifest(1, "ddbfaults", 80).await;
    let write = || Match::dynamodb("BatchWriteItem");
    let read = || Match::dynamodb("BatchGetItem");
    // Each kind at least once (the `limit(1)` rules fire on the first requests), then at random.
    let proxy = fx.emulator.fault_proxy(
        7,
        [
            FaultRule::new(write(), Fault::Throttle).limit(1),
            FaultRule::new(write(), Fault::ThrottlingException).limit(1),
            FaultRule::new(write(), Fault::Status(500)).limit(1),
            FaultRule::new(write(), Fault::Unprocessed).limit(2),
            FaultRule::new(write(), Fault::Throttle).probability(0.1),
            FaultRule::new(write(), Fault::Unprocessed).probability(0.4),
            FaultRule::new(read(), Fault::Unprocessed).probability(0.3),
        ],
    );

    // First run: everything computed and written through the faults.
    let counts = run_through(&fx, &proxy, 1, "dynamodb write", lines.len(), 0).await;
    assert_eq!(fx.stored().await, lines.len(), "one item per image");
    fx.assert_vectors(&engine, &images).await;
    for kind in ["throttle", "throttling-exception", "status", "unprocessed"] {
        assert!(
            counts.kind(kind) > 0,
            "no {kind} fault injected: {counts:?}"
        );
    }
    assert!(counts.withheld > 0, "{counts:?}");
    assert!(counts.largest("BatchWriteItem") <= 25, "{counts:?}");
    drop(proxy);

    // A rerun (a Batch retry) through a proxy that throttles and withholds keys on the resume
    // check: it still finds every vector, so nothing is recomputed or rewritten.
    let proxy = fx.emulator.fault_proxy(
        8,
        [
            FaultRule::new(read(), Fault::Throttle).limit(1),
            FaultRule::new(read(), Fault::Unprocessed).limit(2),
            FaultRule::new(read(), Fault::Unprocessed).probability(0.3),
        ],
    );
    let all = lines.len() as u64;
    let counts = run_through(&fx, &proxy, 1, "dynamodb resume", lines.len(), all).await;
    assert!(
        counts.per_rule[0] > 0,
        "no throttled BatchGetItem: {counts:?}"
    );
    assert!(counts.per_rule[1] > 0, "no UnprocessedKeys: {counts:?}");
    assert!(counts.withheld > 0, "{counts:?}");
    assert!(counts.largest("BatchGetItem") <= 100, "{counts:?}");
    assert_eq!(counts.operation("BatchWriteItem"), 0, "nothing rewritten");
    assert_eq!(fx.stored().await, lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_report_upload_is_retried_and_the_child_exits_0() {
    let fx = Fixture::new().await;
    let (mut lines, _) = upload_many(&fx, "report", 3).await;
    lines.push(fx.put("report/broken.jpg", b"not a JPEG").await);
    fx.put_manifest(0, &lines).await;
    let reports = fx.layout.failures(0);
    let fault = FaultRule::new(
        Match::s3_put_under(&fx.bucket, &reports.key),
        Fault::Status(503),
    )
    .limit(1);
    let proxy = fx.emulator.fault_proxy(5, [fault]);
    let (status, stderr) = run(fx.worker_via(proxy.env(), 0));
    assert_eq!(proxy.counts().per_rule[0], 1, "the first report PUT failed");
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let failures = fx.failures(0).await;
    assert_eq!(failures.len(), 1, "the report arrived whole: {failures:?}");
    assert_eq!(failures[0].key, "report/broken.jpg");
    assert_eq!(fx.summary(0).await.written, 3);
}

/// A new on-demand table throttling while it scales (deploy/README.md, "DynamoDB write
/// capacity"): 60 % of the BatchWriteItem requests throttled for a minute. The child slows
/// down (the writer's pacer, the SDK's and our retries) and fails nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_throttling_on_60_percent_of_writes_stores_every_image() {
    let fx = Fixture::new().await;
    let (lines, _) = fx.upload_manifest(0, "scaling", 1200).await;
    let write = || Match::dynamodb("BatchWriteItem");
    let proxy = fx.emulator.fault_proxy(
        60,
        [
            FaultRule::new(write(), Fault::Throttle)
                .probability(0.4)
                .during(std::time::Duration::from_secs(60)),
            FaultRule::new(write(), Fault::Unprocessed)
                .probability(0.33)
                .during(std::time::Duration::from_secs(60)),
        ],
    );
    let started = std::time::Instant::now();
    let counts = run_through(&fx, &proxy, 0, "dynamodb-scaling", lines.len(), 0).await;
    let took = started.elapsed();
    eprintln!(
        "RELIABILITY dynamodb-scaling: took={:.1}s write_requests={} throttled={} unprocessed={}",
        took.as_secs_f64(),
        counts.operation("BatchWriteItem"),
        counts.per_rule[0],
        counts.per_rule[1]
    );
    // 0.4 + 0.6 * 0.33: about 60 % of the write requests in the minute did not go through
    // whole. 100-170 requests fall in the minute, so the two binomial draws spread the ratio
    // by about 0.06: the bounds are 3 of those either side (0.5..0.7 failed about one run in
    // ten: 0.73 on 2026-12-02). Whether the run outlasts the minute depends on the machine
    // (44 s to 90 s here), so that is not asserted: every write it made in the minute was
    // faulted at the rate asked, and every image ends stored.
    let faulted = (counts.per_rule[0] + counts.per_rule[1]) as f64;
    let ratio = faulted / counts.in_window[0] as f64;
    assert!(
        (0.42..0.78).contains(&ratio),
        "{ratio:.2} of writes faulted: {counts:?}"
    );
    assert_eq!(fx.stored().await, lines.len(), "one item per image");
}
